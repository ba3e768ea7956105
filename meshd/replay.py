"""Replay protection: per-sender boot epoch, 64-bit counter, sliding window.

A sender persists its boot epoch and raises it on every start, so its counter
can restart at 1 without reusing (epoch, counter) pairs.  A receiver accepts a
message only if its (epoch, counter) is newer than anything seen or inside the
window and not seen yet.  The guard reads no clock; only the epoch's floor
comes from the wall clock, for an epoch file that was lost (meshd/state.py).

The receiver's high-water marks are persisted too (`snapshot`/`restore`): after
a receiver restart, anything at or below the persisted mark is still refused.

Must not: persist anything itself (meshd/state.py writes the epoch and the
marks), or accept a message before its MAC is checked: callers call check()
first and accept() only once the message is authentic.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 1024


@dataclass
class _Stream:
    epoch: int
    high: int          # highest counter accepted in this epoch
    seen: int          # bit i set: counter high - i was accepted
    floor: int = 0     # counters <= floor are refused (restored after restart)


class ReplayGuard:
    """Replay windows keyed by any hashable sender id (e.g. (node, group))."""

    def __init__(self, window: int = WINDOW):
        self.window = window
        self.streams: dict[object, _Stream] = {}

    def check(self, sender: object, epoch: int, counter: int) -> str | None:
        """Return None if fresh, else the reject reason.  Does not record."""
        s = self.streams.get(sender)
        if s is None or epoch > s.epoch:
            return None
        if epoch < s.epoch:
            return "old epoch"
        if counter <= s.floor:
            return "replayed"
        if counter > s.high:
            return None
        offset = s.high - counter
        if offset >= self.window:
            return "outside window"
        if (s.seen >> offset) & 1:
            return "replayed"
        return None

    def seen_in_window(self, sender: object, epoch: int, counter: int) -> bool:
        """Whether (epoch, counter) was accepted and is still inside the window:
        a copy of a recent message (sent over two paths, say), not an old capture."""
        s = self.streams.get(sender)
        if s is None or epoch != s.epoch or counter <= s.floor or counter > s.high:
            return False
        offset = s.high - counter
        return offset < self.window and bool((s.seen >> offset) & 1)

    def is_newest(self, sender: object, epoch: int, counter: int) -> bool:
        """Whether (epoch, counter) is newer than anything accepted from sender.

        A fresh but older message (reordered, or replayed after the target lost
        the original) passes check() yet carries outdated content: callers that
        act on the latest state should not act on it.
        """
        s = self.streams.get(sender)
        return s is None or epoch > s.epoch or (epoch == s.epoch and counter > s.high)

    def accept(self, sender: object, epoch: int, counter: int) -> None:
        """Record a message that passed check() and its MAC."""
        s = self.streams.get(sender)
        if s is None or epoch > s.epoch:
            self.streams[sender] = _Stream(epoch, counter, 1)
            return
        if counter > s.high:
            shift = counter - s.high
            s.seen = ((s.seen << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            s.high = counter
        else:
            s.seen |= 1 << (s.high - counter)

    def start_at(self, sender: object, epoch: int, counter: int, refused: int = 0) -> None:
        """A session of `sender` proved fresh by the message (epoch, counter):
        record it and refuse everything the sender sealed before it, whatever
        the epoch held so far (a proof of liveness, not an ordering of epochs,
        decides which session is current), and everything up to `refused`
        (messages of the session refused before its proof stay refused)."""
        floor = max(counter - 1, refused)
        self.streams[sender] = _Stream(epoch, max(counter, floor), 1, floor=floor)

    def snapshot(self) -> dict[object, tuple[int, int]]:
        return {k: (s.epoch, s.high) for k, s in self.streams.items()}

    def restore(self, marks: dict[object, tuple[int, int]]) -> None:
        """Refuse anything at or below the persisted marks."""
        for k, (epoch, high) in marks.items():
            self.streams[k] = _Stream(epoch, high, 0, floor=high)
