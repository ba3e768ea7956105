"""Flows too young to replicate: `[sync] min_age_ms` (Check Point's 3 s, Fortinet's
session-pickup-delay).

A flow this node has not replicated yet is held here from its first event
until it has lived `min_age_s`; then it goes to the state mesh as a NEW with
its latest attributes.  Its changes meanwhile only replace what is held, and
its DESTROY before then removes it: a flow shorter than the threshold costs
no frame at all.  A flow already replicated (in the internal cache) is not
held: its changes pass at once.

The cost, which docs/configuration.md states: a flow younger than the
threshold when this node fails is not carried over by the node that takes
over.

Sans-I/O, with time passed in: `admit` takes the filtered events of one
burst and returns those that pass now; `due` returns the flows that came of
age; `next_deadline` says when the next one does.  Insertion order is age
order (a flow keeps the time it was first seen), so the oldest is first.

Must not: decide which events are replicated at all (the filter, before it)
or look inside attrs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from ..sync.actions import DESTROY, NEW

Event = tuple[int, bytes, "bytes | None"]


class YoungFlows:
    """Flows held until they are `min_age_s` old (min_age_s > 0)."""

    def __init__(self, min_age_s: float):
        if min_age_s <= 0:
            raise ValueError("min_age_s must be positive (0 means: no queue at all)")
        self.min_age_s = float(min_age_s)
        self._held: dict[bytes, list] = {}      # key -> [first seen, attrs], oldest first
        self.counters: Counter = Counter()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: bytes) -> bool:
        return key in self._held

    def attrs(self, key: bytes) -> bytes | None:
        """What is held for `key` (the base an UPDATE merges into), or None."""
        held = self._held.get(key)
        return None if held is None else held[1]

    def admit(self, events: Iterable[Event], replicated: Callable[[bytes], object],
              now: float) -> list[Event]:
        """The events of one burst that go to the state mesh now.

        `replicated(key)` is not None for a flow the state mesh holds
        already (the internal cache's get): its events pass.
        """
        held = self._held
        out: list[Event] = []
        for kind, key, attrs in events:
            slot = held.get(key)
            if kind == DESTROY:
                if slot is not None:
                    del held[key]
                    self.counters["ended young"] += 1     # never replicated, no frame
                else:
                    out.append((kind, key, attrs))
            elif slot is not None:
                slot[1] = attrs                           # the newest state waits
                self.counters["changes held"] += 1
            elif replicated(key) is not None:
                out.append((kind, key, attrs))
            else:
                held[key] = [now, attrs]
                self.counters["held"] += 1
        return out

    def due(self, now: float) -> list[Event]:
        """The flows that are min_age_s old by `now`, as NEW events, oldest first."""
        held = self._held
        limit = now - self.min_age_s
        out: list[Event] = []
        for key, (seen, attrs) in held.items():
            if seen > limit:
                break
            out.append((NEW, key, attrs))
        for _, key, _ in out:
            del held[key]
        self.counters["released"] += len(out)
        return out

    def next_deadline(self) -> float | None:
        for seen, _ in self._held.values():
            return seen + self.min_age_s
        return None

    def release_all(self) -> list[Event]:
        """Everything held, at once (min_age_ms turned off by a reload)."""
        out = [(NEW, key, attrs) for key, (_, attrs) in self._held.items()]
        self._held.clear()
        self.counters["released"] += len(out)
        return out

    def forget_absent(self, present, before: float) -> int:
        """Flows first seen before `before` (when a dump started reading) that the
        dump does not hold (`present`: its keys): they ended without a DESTROY
        we saw (an overrun ate it); dropped, like a flow that ended young."""
        gone = [k for k, (seen, _) in self._held.items() if seen < before and k not in present]
        for key in gone:
            del self._held[key]
        self.counters["ended young"] += len(gone)
        return len(gone)

    def set_min_age(self, min_age_s: float) -> None:
        """A reload's new threshold (positive): each held flow's age counts from
        when it was first seen, as before."""
        if min_age_s <= 0:
            raise ValueError("min_age_s must be positive")
        self.min_age_s = float(min_age_s)

    def stats(self) -> dict:
        return {"min_age_ms": round(self.min_age_s * 1000), "held_now": len(self._held),
                **dict(self.counters)}
