"""Anti-entropy: bucket digests and the repairs they ask for (proto/sync.md, section 8).

Owns:

* sending our internal cache's 256 bucket digests every
  `digest_interval_s`, in as many DIGEST frames as `max_datagram` needs;
* comparing an origin's DIGEST with our copy of its buckets, only when the
  comparison means something (everything it had sent us before the digest
  resolved, no sweep pending, no bulk from it in progress, the bucket not
  changed since, not asked for lately, the origin not adopted), and asking
  for the buckets that differ (REPAIR_REQUEST);
* queueing the buckets a peer asks us to repair (instance 0), which
  bulk.pump then sends paced, each closed by its SWEEP.

It must not keep digests (the caches keep them current, cache.py and
digest.py) nor send buckets itself (bulk.pump does, as for a bulk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bulk import pump
from .digest import (
    DIGEST_BYTES,
    NBUCKETS,
    bitmap_to_buckets,
    buckets_to_bitmap,
    pack_digests,
    unpack_digests,
)
from .frames import FrameType
from .inbound import learn_highs
from .outbound import directs, send

if TYPE_CHECKING:
    from .core import SyncCore
    from .peer import Peer


def send_digests(core: SyncCore) -> None:
    if not core.peers:
        return
    highs = directs(core)
    per_frame = max(1, (core.max_body - 64 - 15 * len(highs)) // DIGEST_BYTES)
    digests = core.internal.digests
    for first in range(0, NBUCKETS, per_frame):
        blob = pack_digests(digests[first:first + per_frame])
        send(core, None, FrameType.DIGEST, (core.mcast.seq, highs, first, blob))


def on_digest(core: SyncCore, p: Peer, counter: int, body: tuple, now: float) -> None:
    """DIGEST from p; `counter` (the frame's) tells which changes it had seen."""
    mcast_high, highs, first, blob = body
    direct_high = learn_highs(core, p, mcast_high, highs, now)
    if p.adopted:
        return
    rm, rd = p.rx_mcast, p.rx_direct
    # Comparable only if we hold everything it had sent us when it took the
    # digest, and no repair of ours is under way.
    if (not rm.anchored or rm.resolved < mcast_high or not rd.anchored
            or rd.resolved < direct_high or p.pending_sweeps or p.bulk_remaining):
        p.stats["digests deferred"] += 1
        return
    ext = p.ext
    last, mine = ext.last_stamp, ext.digests
    differ = []
    for i, theirs in enumerate(unpack_digests(blob)):
        b = first + i
        if last[b] >= counter:
            continue                 # changed since the digest was taken
        asked = p.repair_wait.get(b)
        if asked is not None and now - asked < core.repair_timeout_s:
            continue
        if mine[b] != theirs:
            differ.append(b)
    p.stats["digests compared"] += 1
    if differ:
        for b in differ:
            p.repair_wait[b] = now
        p.stats["buckets differing"] += len(differ)
        core.counters["anti-entropy repairs requested"] += len(differ)
        send(core, p.id, FrameType.REPAIR_REQUEST, (p.epoch, buckets_to_bitmap(differ)))


def on_repair_request(core: SyncCore, p: Peer, counter: int, body: tuple, now: float) -> None:
    origin_epoch, bitmap = body
    if origin_epoch != core.epoch:
        p.stats["repair request for another epoch"] += 1
        return
    buckets = bitmap_to_buckets(bitmap)
    for b in buckets:
        if b not in p.repairs:
            p.repairs[b] = 0
    p.stats["buckets repair requested"] += len(buckets)
    pump(core, p, now)
