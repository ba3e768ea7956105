"""Histogram: counts of observed durations in fixed buckets, without I/O.

The cores and shells count what they time (a check's latency, a takeover,
a commit) into one of these; the metrics exporter (meshd/metrics/) reads a
copy and turns it into a Prometheus histogram.  It lives on the bottom floor
so that a sans-I/O core can hold one without knowing of Prometheus, and it
costs one bisect and three additions per observation.

Must not: read a clock (callers pass the value), or import anything.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

# Seconds.  Checks and commits: a millisecond to the check timeouts;
# takeovers: from the sub-millisecond add on an idle node to seconds under load.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class HistogramCounts:
    """A copy of a Histogram at one moment: safe to read from another thread."""

    bounds: tuple[float, ...]       # upper bounds, ascending; +Inf is implied
    counts: tuple[int, ...]         # per bucket (not cumulative), len(bounds) + 1
    total: float                    # sum of the observed values

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) per bucket, +Inf last: Prometheus's buckets."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out


class Histogram:
    """Observations counted into buckets with the given upper bounds (ascending).

    Raises ValueError for bounds that are empty or not strictly ascending.
    """

    __slots__ = ("bounds", "_counts", "_total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"histogram bounds must be ascending and not empty, found {bounds!r}")
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (le).
        self._counts[bisect_left(self.bounds, value)] += 1
        self._total += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def copy(self) -> HistogramCounts:
        return HistogramCounts(self.bounds, tuple(self._counts), self._total)
