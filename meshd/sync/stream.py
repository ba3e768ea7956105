"""Sequence streams: what a sender keeps per sent frame, what a receiver is missing.

A node sends DATA frames on several streams: one multicast stream of its
live changes (to all peers) and one direct stream per peer (resends, bulk
resync, bucket repairs).  Each stream numbers its frames 1, 2, 3... within the
sender's epoch.

The sender keeps, per sequence number, only the *keys* the frame carried (and
its controls), never the records: a resend sends the current state of those
keys.  The receiver keeps the set of sequence numbers it is missing.

Must not: know records, frames or peers (keys and controls are opaque here), or
drop anything silently: an eviction is returned, and the caller degrades the
peers that had not acknowledged it to a bulk resync.
"""

from __future__ import annotations

from bisect import bisect_right


class OutboundStream:
    """The sender's side of one stream: seq -> (keys, controls, supersedes) until acknowledged.

    Bounded by `limit` items held (keys + controls + supersedes).  `hold`
    reports the newest sequence number it had to evict to stay under it; the
    caller must then degrade the peers that had not acknowledged it to a bulk
    resync (never drop silently).  A resent frame's entry is *taken* out
    (`take`): the frame that resent it now holds its keys and the duty to
    supersede it, so repeated loss does not pile up copies.
    """

    __slots__ = ("seq", "low", "held", "held_items", "limit")

    def __init__(self, limit: int):
        self.seq = 0           # last sequence number sent
        self.low = 1           # every seq below this has been released or evicted
        self.held: dict[int, tuple[tuple[bytes, ...], tuple, tuple]] = {}
        self.held_items = 0
        self.limit = limit

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def hold(self, seq: int, keys: tuple[bytes, ...], controls: tuple, supersedes: tuple) -> int:
        """Keep what frame `seq` carried; return the newest seq evicted (0 if none)."""
        self.held[seq] = (keys, controls, supersedes)
        self.held_items += len(keys) + len(controls) + len(supersedes)
        evicted = 0
        while self.held_items > self.limit and self.low < seq:
            if self.take(self.low) is not None:
                evicted = self.low
            self.low += 1
        return evicted

    def release_upto(self, cum: int) -> None:
        """Everything <= cum is acknowledged by every receiver that counts."""
        cum = min(cum, self.seq)
        while self.low <= cum:
            self.take(self.low)
            self.low += 1

    def take(self, seq: int):
        entry = self.held.pop(seq, None)
        if entry is not None:
            self.held_items -= len(entry[0]) + len(entry[1]) + len(entry[2])
        return entry


class InboundStream:
    """The receiver's side of one stream of one origin.

    While *anchored*, every seq in (resolved, high] that is not in `missing`
    has been received or superseded (its keys were resent in a later frame).
    A multicast stream starts unanchored: a node that joins late cannot
    recover an origin's whole history and does not need to, since a bulk
    resync gives it the current state; the bulk's BULK_BEGIN names the
    multicast seq it covers, and tracking starts there.  Until then `got`
    remembers what did arrive.
    """

    __slots__ = ("anchored", "high", "missing", "got", "max_gap", "received", "went_missing")

    def __init__(self, anchored: bool, max_gap: int):
        self.anchored = anchored
        self.high = 0
        self.missing: dict[int, float] = {}     # seq -> when it was first known missing
        self.got: set[int] | None = None if anchored else set()
        self.max_gap = max_gap
        self.received = 0
        self.went_missing = 0

    @property
    def resolved(self) -> int:
        """Every seq <= this has been received or superseded (0 when unanchored)."""
        if not self.anchored:
            return 0
        return (min(self.missing) - 1) if self.missing else self.high

    def _extend(self, upto: int, now: float) -> bool:
        """Seqs (high, upto] exist; those not received yet are missing."""
        if upto <= self.high:
            return True
        if self.anchored:
            if upto - self.high > self.max_gap:
                return False
            missing = self.missing
            for s in range(self.high + 1, upto + 1):
                missing[s] = now
            self.went_missing += upto - self.high
        self.high = upto
        return True

    def receive(self, seq: int, now: float) -> bool:
        """Frame `seq` arrived.  False: the gap is too large to track (resync)."""
        self.received += 1
        if not self.anchored:
            got = self.got
            if len(got) >= self.max_gap:
                got.clear()      # the anchor will call these missing: resent, harmless
            got.add(seq)
            if seq > self.high:
                self.high = seq
            return True
        if seq > self.high:
            if not self._extend(seq, now):
                return False
            self.went_missing -= 1
        self.missing.pop(seq, None)
        return True

    def learn_high(self, high: int, now: float) -> bool:
        """A heartbeat says the sender has sent up to `high`: a lost tail shows up here."""
        return self._extend(high, now)

    def supersede(self, lo: int, hi: int, now: float) -> bool:
        """The keys of seqs lo..hi were resent (or are covered by a bulk): resolved."""
        if not self.anchored:
            return True
        if hi > self.high:
            if not self._extend(hi, now):
                return False
        missing = self.missing
        if not missing:
            return True
        if len(missing) <= hi - lo + 1:
            for s in [s for s in missing if lo <= s <= hi]:
                del missing[s]
        else:
            for s in range(lo, hi + 1):
                missing.pop(s, None)
        return True

    def anchor(self, base: int, now: float) -> bool:
        """Seqs <= base are covered by a bulk resync; track everything after it.

        False: more than max_gap seqs arrived after the base before it did
        (the caller asks for another bulk).
        """
        if self.anchored:
            return self.supersede(1, base, now) if base else True
        got = self.got or set()
        high = max(self.high, base)
        self.anchored = True
        self.got = None
        self.high = high
        if high - base > self.max_gap:
            return False
        for s in range(base + 1, high + 1):
            if s not in got:
                self.missing[s] = now
                self.went_missing += 1
        return True

    def unanchor(self) -> None:
        """Give up tracking (gap too large): a bulk resync will anchor again."""
        self.anchored = False
        self.missing = {}
        self.got = set()

    def status(self, now: float, reorder_s: float, max_bytes: int,
               after: int = 0) -> tuple[int, int, int, bytes, int]:
        """(cumulative ack, high, bitmap start, bitmap, next cursor) for a STATUS.

        Bit i of the bitmap (most significant bit of byte 0 first) asks for
        seq start + i.  A seq missing for less than `reorder_s` is not asked
        for yet (it may only be late).  At most `max_bytes` of bitmap fit;
        the bitmap begins at the first missing seq after `after` (wrapping),
        and the next STATUS continues from the returned cursor.  Rotating
        matters: an old missing seq may already have been resent in a newer
        frame that was lost too, and only asking for that frame makes progress.
        """
        cum, high = self.resolved, self.high
        ripe = sorted(s for s, t in self.missing.items() if now - t >= reorder_s)
        if not ripe:
            return cum, high, 0, b"", 0
        i = bisect_right(ripe, after)
        if i == len(ripe):
            i = 0
        start = ripe[i]
        span = 8 * max_bytes
        asked = []
        for s in ripe[i:]:
            if s - start >= span:
                return cum, high, start, seqs_to_bitmap(start, asked), asked[-1]
            asked.append(s)
        return cum, high, start, seqs_to_bitmap(start, asked), 0


def seqs_to_bitmap(start: int, seqs) -> bytes:
    seqs = list(seqs)
    if not seqs:
        return b""
    n = (max(seqs) - start) // 8 + 1
    # Bit i is seq start + i, MSB of byte 0 first: reverse the bit order.
    out = bytearray(n)
    for s in seqs:
        i = s - start
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def bitmap_to_seqs(start: int, bitmap: bytes) -> list[int]:
    seqs = []
    for j, byte in enumerate(bitmap):
        if byte:
            base = start + 8 * j
            for k in range(8):
                if byte & (0x80 >> k):
                    seqs.append(base + k)
    return seqs
