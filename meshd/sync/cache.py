"""The internal cache (this node's kernel flows) and external caches (one per origin).

Memory is the constraint: 100k+ entries per cache, so no object per entry.
A cache is 256 plain dicts (one per anti-entropy bucket) mapping the key
bytes to one bytes value:

* internal: the attrs blob, exactly as the kernel gave it;
* external: attrs || stamp, the stamp being the 8-byte big-endian counter of
  the frame that carried this state.  Big-endian, so comparing the 8-byte
  suffixes as bytes compares the stamps as numbers.

Splitting by bucket costs nothing per lookup (the bucket is needed for the
digest anyway) and makes a bucket repair touch only its own entries.

Why stamps: frames overtake each other (reordering, resends, bulk and live
changes interleaved), so a receiver must not let an older state of a flow
overwrite a newer one.  Every record carries the state of its flow as of the
frame that carries it, so the frame counter orders records of one origin
epoch.  A delete leaves a tombstone (key -> stamp) so that a late, older
upsert cannot resurrect the flow; tombstones are dropped once the replay
window has moved past them (a frame that old is refused before it is opened).
"""

from __future__ import annotations

import os
import zlib

from .actions import DESTROY, NEW, UPDATE, EventKind
from .digest import BUCKET_MASK, DIGEST_MASK, NBUCKETS, bucket_of, entry_hash

STAMP_LEN = 8
ZERO_STAMP = bytes(STAMP_LEN)


def _accelerator():
    """meshd._fastcache (the two loops below in C, built at install time) unless
    MESHD_PURE_PYTHON is set (as meshd/fastct.py reads it) or it was not built;
    None: the Python loops."""
    if os.environ.get("MESHD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from .. import _fastcache
    except ImportError:
        return None
    return _fastcache


_fast = _accelerator()


class InternalCache:
    """This node's flows: key -> attrs, in 256 buckets, with incremental digests."""

    fast = _fast        # the C loop, or None; a test sets it per instance to run both

    def __init__(self, max_record: int):
        self.buckets: list[dict[bytes, bytes]] = [{} for _ in range(NBUCKETS)]
        self.digests: list[int] = [0] * NBUCKETS
        self.max_record = max_record      # len(key) + len(attrs) that still fits one frame
        self.oversized = 0                # events refused because no frame can carry them

    def __len__(self) -> int:
        return sum(len(d) for d in self.buckets)

    def get(self, key: bytes) -> bytes | None:
        return self.buckets[zlib.crc32(key) & BUCKET_MASK].get(key)

    def apply_events(self, events) -> list[tuple[bytes, bytes | None]]:
        """Apply (kind, key, attrs) events; return the net changes as (key, attrs or None).

        Events for one key within a batch are coalesced: only the state at the
        end of the batch is compared with the state before it.  NEW then
        DESTROY of a flow this cache did not hold yields nothing (peers never
        heard of it); DESTROY then NEW of the same flow yields one upsert.  An
        UPDATE that leaves the attrs unchanged yields nothing.  The returned
        pairs are also the wire records (proto/sync.md, 4.1).

        Invalid events raise ValueError before anything is applied.
        """
        final: dict[bytes, bytes | None] = {}
        for kind, key, attrs in events:
            if kind == DESTROY:
                final[key] = None
            elif kind == NEW or kind == UPDATE:
                if not attrs or not key:
                    raise ValueError(f"{EventKind(kind).name} event without key or attrs")
                final[key] = attrs
            else:
                raise ValueError(f"unknown event kind {kind!r}")
        if self.fast is not None:
            changed, oversized = self.fast.internal_apply(final, self.buckets, self.digests, self.max_record)
            self.oversized += oversized
            return changed
        buckets = self.buckets
        digests = self.digests
        crc, adler = zlib.crc32, zlib.adler32
        limit = self.max_record
        changed = []
        append = changed.append
        for key, new in final.items():
            ck = crc(key)
            b = ck & BUCKET_MASK
            d = buckets[b]
            old = d.get(key)
            if new is None:
                if old is None:
                    continue
                del d[key]
            elif new == old:
                continue
            elif len(key) + len(new) > limit:
                # Cannot be carried by any frame: keep it out of the cache (and
                # so out of the digests), and say so in stats.
                self.oversized += 1
                if old is None:
                    continue
                del d[key]
                new = None
            else:
                d[key] = new
            # entry_hash(), inlined: this loop runs for every local change.
            ak, lk = adler(key), len(key)
            dig = digests[b]
            if old is not None:
                dig -= ((crc(old, ck) << 32) | adler(old, ak)) ^ lk
            if new is not None:
                dig += ((crc(new, ck) << 32) | adler(new, ak)) ^ lk
            digests[b] = dig & DIGEST_MASK
            append((key, new))
        return changed

    def diff(self, table: dict[bytes, bytes]) -> list[tuple[int, bytes, bytes | None]]:
        """Events that turn this cache into `table` (after a kernel overrun)."""
        parts: list[dict[bytes, bytes]] = [{} for _ in range(NBUCKETS)]
        for key, attrs in table.items():
            parts[zlib.crc32(key) & BUCKET_MASK][key] = attrs
        return [e for b in range(NBUCKETS) for e in self.diff_bucket(b, parts[b])]

    def diff_bucket(self, bucket: int, part: dict[bytes, bytes]) -> list[tuple[int, bytes, bytes | None]]:
        """diff() for one bucket: `part` holds the table's entries of that bucket only."""
        d = self.buckets[bucket]
        events: list[tuple[int, bytes, bytes | None]] = []
        for key, attrs in d.items():
            want = part.get(key)
            if want is None:
                events.append((DESTROY, key, None))
            elif want != attrs:
                events.append((UPDATE, key, want))
        for key, attrs in part.items():
            if key not in d:
                events.append((NEW, key, attrs))
        return events

    def clear(self) -> int:
        n = len(self)
        self.buckets = [{} for _ in range(NBUCKETS)]
        self.digests = [0] * NBUCKETS
        return n

    def items(self):
        for d in self.buckets:
            yield from d.items()

    def nbytes(self) -> int:
        return _estimate_nbytes(self.buckets, len(self))


def _estimate_nbytes(buckets, count: int, sample: int = 2048) -> int:
    """Key and value bytes, estimated from a sample spread over the buckets.

    Exact sums walk every entry (0.4 us each: a stall of the daemon with a
    million flows); `meshctl stats` needs the order of magnitude, not the byte.
    """
    seen = total = 0
    per_bucket = max(1, sample // max(1, len(buckets)))
    for d in buckets:
        for i, (k, v) in enumerate(d.items()):
            if i >= per_bucket:
                break
            seen += 1
            total += len(k) + len(v)
    return 0 if not seen else round(total / seen * count)


class ExternalCache:
    """One origin's flows as this node knows them: key -> attrs || stamp."""

    fast = _fast        # the C loop, or None; a test sets it per instance to run both

    def __init__(self, tombstone_limit: int = 262144):
        self.buckets: list[dict[bytes, bytes]] = [{} for _ in range(NBUCKETS)]
        self.digests: list[int] = [0] * NBUCKETS
        self.last_stamp: list[int] = [0] * NBUCKETS   # newest stamp applied to each bucket
        self.floor: list[int] = [0] * NBUCKETS        # records older than this are stale (after a sweep)
        self.tombstones: dict[bytes, int] = {}
        self.tombstone_limit = tombstone_limit
        self.tombstones_dropped = 0
        self.stale = 0

    def __len__(self) -> int:
        return sum(len(d) for d in self.buckets)

    def apply(self, records, stamp: int, report: bool = False):
        """Apply one frame's records; return (applied, upserts, deletes).

        upserts/deletes are only collected with `report` (for ExternalChanged).
        """
        if self.fast is not None:
            applied, stale, upserts, deletes = self.fast.external_apply(
                records, stamp, self.buckets, self.digests, self.last_stamp, self.floor, self.tombstones, report)
            self.stale += stale
            if len(self.tombstones) > self.tombstone_limit:
                self._drop_tombstones(len(self.tombstones) - self.tombstone_limit)
            return applied, upserts or [], deletes or []
        sb = stamp.to_bytes(STAMP_LEN, "big")
        buckets, digests, last, floor = self.buckets, self.digests, self.last_stamp, self.floor
        tombs = self.tombstones
        crc = zlib.crc32
        adler = zlib.adler32
        applied = 0
        upserts: list = []
        deletes: list = []
        for key, attrs in records:
            ck = crc(key)
            b = ck & BUCKET_MASK
            if stamp < floor[b]:
                self.stale += 1
                continue
            d = buckets[b]
            old = d.get(key)
            if old is not None:
                if old[-STAMP_LEN:] >= sb:
                    self.stale += 1
                    continue
            elif tombs:
                t = tombs.get(key)
                if t is not None and t >= stamp:
                    self.stale += 1
                    continue
            # entry_hash(), inlined: this loop runs for every record received.
            ak, lk = adler(key), len(key)
            dig = digests[b]
            if old is not None:
                old_attrs = old[:-STAMP_LEN]
                dig -= ((crc(old_attrs, ck) << 32) | adler(old_attrs, ak)) ^ lk
            if attrs is not None:
                d[key] = attrs + sb
                dig += ((crc(attrs, ck) << 32) | adler(attrs, ak)) ^ lk
                if old is None and tombs:
                    tombs.pop(key, None)
                if report:
                    upserts.append((key, attrs))
            else:
                if old is not None:
                    del d[key]
                    if report:
                        deletes.append((key, old_attrs))
                tombs.pop(key, None)        # re-insert at the end: GC walks in insertion order
                tombs[key] = stamp
            digests[b] = dig & DIGEST_MASK
            if stamp > last[b]:
                last[b] = stamp
            applied += 1
        if len(tombs) > self.tombstone_limit:
            self._drop_tombstones(len(tombs) - self.tombstone_limit)
        return applied, upserts, deletes

    def sweep(self, bucket: int, start: int) -> list[tuple[bytes, bytes]]:
        """A bucket repair that began at `start` is complete: drop what it did not refresh.

        Every flow the origin held in this bucket when it took the snapshot
        was sent in a frame with counter >= start, so an entry with an older
        stamp is one the origin no longer has.  Older records arriving later
        are refused through the bucket's floor.
        """
        sb = start.to_bytes(STAMP_LEN, "big")
        d = self.buckets[bucket]
        gone = [(k, v) for k, v in d.items() if v[-STAMP_LEN:] < sb]
        dig = self.digests[bucket]
        deleted = []
        for k, v in gone:
            del d[k]
            attrs = v[:-STAMP_LEN]
            dig -= entry_hash(k, attrs)
            deleted.append((k, attrs))
        self.digests[bucket] = dig & DIGEST_MASK
        if start > self.floor[bucket]:
            self.floor[bucket] = start
        if start > self.last_stamp[bucket]:
            self.last_stamp[bucket] = start
        return deleted

    def forget_tombstones_upto(self, stamp: int) -> None:
        """Frames with counters <= stamp are refused by the replay window: their
        tombstones can no longer matter.

        One pass, then the deletes: `next(iter(tombs))` after each delete
        would walk again over every slot deleted before it (a dict keeps
        them until it is resized), quadratic under a churn of short flows
        (measured: 10% of a core at 10k flows/s, for 2,000 tombstones per
        heartbeat)."""
        tombs = self.tombstones
        old = []
        for key, when in tombs.items():
            if when > stamp:
                break
            old.append(key)
        for key in old:
            del tombs[key]

    def _drop_tombstones(self, n: int) -> None:
        # Over the limit: the oldest go first.  Worst case a late upsert
        # resurrects a flow, which the next anti-entropy round removes.
        tombs = self.tombstones
        for key in list(tombs)[:n]:
            del tombs[key]
        self.tombstones_dropped += n

    def new_origin_epoch(self) -> None:
        """The origin restarted: its counters start again at 1.

        Entries are kept (the origin's bulk resync will replace them, see
        proto/sync.md, section 7.3) but their stamps become 0, older than
        anything of the new epoch.  Tombstones and floors belong to the old
        epoch's counters and go.
        """
        for d in self.buckets:
            for k, v in d.items():
                d[k] = v[:-STAMP_LEN] + ZERO_STAMP
        self.last_stamp = [0] * NBUCKETS
        self.floor = [0] * NBUCKETS
        self.tombstones = {}

    def remove(self, key: bytes) -> bytes | None:
        """Drop one entry without a record (adoption: the flow now runs here)."""
        b = bucket_of(key)
        v = self.buckets[b].pop(key, None)
        if v is None:
            return None
        attrs = v[:-STAMP_LEN]
        self.digests[b] = (self.digests[b] - entry_hash(key, attrs)) & DIGEST_MASK
        return attrs

    def clear(self) -> list[tuple[bytes, bytes]]:
        gone = list(self.items())
        self.buckets = [{} for _ in range(NBUCKETS)]
        self.digests = [0] * NBUCKETS
        return gone

    def items(self):
        """(key, attrs) pairs, stamps stripped."""
        for d in self.buckets:
            for k, v in d.items():
                yield k, v[:-STAMP_LEN]

    def attrs(self):
        for d in self.buckets:
            for v in d.values():
                yield v[:-STAMP_LEN]

    def nbytes(self) -> int:
        return _estimate_nbytes(self.buckets, len(self))
