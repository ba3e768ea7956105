"""When checks run: jittered due times, a FIFO of due checks, and the runs in flight.

Jitter: every interval is stretched or shrunk by a random fraction within
±jitter_percent, so checks that started together drift apart instead of
firing in lockstep (relayd fires every check of a table at once).  At start
each check waits a random part of its jitter band only, so the first
results come quickly.

Global limit: at most `limit` runs are in flight.  A check whose time has
come while the limit is reached waits; checks start in the order they fell
due (ties in the order they were scheduled) as runs finish.

Must not: know hosts, tables or results (its keys are opaque: the core's
CheckTargets), or read a clock or a random source of its own: `now` and the
rng are passed in.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Hashable
from dataclasses import dataclass


def jittered(interval: float, jitter_percent: int, rng: random.Random) -> float:
    """`interval` moved by a uniform random fraction within ±jitter_percent."""
    if not jitter_percent:
        return interval
    spread = jitter_percent / 100
    return interval * (1 + rng.uniform(-spread, spread))


def first_delay(interval: float, jitter_percent: int, rng: random.Random) -> float:
    """Delay of a check's first run: somewhere in [0, interval x jitter_percent]."""
    return interval * jitter_percent / 100 * rng.random()


class DueQueue:
    """Checks waiting for their time, earliest first.

    A heap with lazy removal: rescheduling pushes a new entry and the old one
    is skipped when it surfaces, so every operation is O(log n).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._entry: dict[Hashable, tuple[float, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entry)

    def set(self, key: Hashable, due: float) -> None:
        entry = (due, next(self._seq))
        self._entry[key] = entry
        heapq.heappush(self._heap, (*entry, key))

    def set_earlier(self, key: Hashable, due: float) -> None:
        """Schedule at `due` unless already due sooner."""
        current = self.due(key)
        if current is None or due < current:
            self.set(key, due)

    def cancel(self, key: Hashable) -> None:
        self._entry.pop(key, None)

    def due(self, key: Hashable) -> float | None:
        entry = self._entry.get(key)
        return entry[0] if entry else None

    def next_due(self) -> float | None:
        top = self._top()
        return top[0] if top else None

    def pop_due(self, now: float) -> Hashable | None:
        """The earliest key due at `now`, removed from the queue; None if nothing is due."""
        top = self._top()
        if top is None or top[0] > now:
            return None
        heapq.heappop(self._heap)
        del self._entry[top[2]]
        return top[2]

    def _top(self) -> tuple[float, int, Hashable] | None:
        while self._heap:
            due, seq, key = self._heap[0]
            if self._entry.get(key) == (due, seq):
                return self._heap[0]
            heapq.heappop(self._heap)
        return None


@dataclass(frozen=True)
class Run:
    check_id: int
    target: Hashable
    started: float
    overdue_at: float        # the core gives up waiting for the runner at this time


class InFlight:
    """Runs started and not yet reported, bounded by `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._runs: dict[int, Run] = {}
        self._by_target: dict[Hashable, int] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._runs)

    def full(self) -> bool:
        return len(self._runs) >= self.limit

    def start(self, target: Hashable, now: float, overdue_after: float) -> Run:
        run = Run(next(self._ids), target, now, now + overdue_after)
        self._runs[run.check_id] = run
        self._by_target[target] = run.check_id
        return run

    def finish(self, check_id: int) -> Run | None:
        run = self._runs.pop(check_id, None)
        if run is not None and self._by_target.get(run.target) == check_id:
            del self._by_target[run.target]
        return run

    def runs(self) -> list[Run]:
        return list(self._runs.values())

    def running(self, target: Hashable) -> Run | None:
        check_id = self._by_target.get(target)
        return None if check_id is None else self._runs[check_id]

    def next_overdue(self) -> float | None:
        return min((r.overdue_at for r in self._runs.values()), default=None)

    def overdue(self, now: float) -> list[Run]:
        """Runs the runner has not reported in time, removed (oldest first)."""
        late = sorted((r for r in self._runs.values() if r.overdue_at <= now),
                      key=lambda r: r.check_id)
        for run in late:
            self.finish(run.check_id)
        return late
