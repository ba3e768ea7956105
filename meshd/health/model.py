"""The health of one host in one table: rise/fall counting, the interval to use
next, availability and the window of recent results.

A host starts `unknown` and its first result decides up or down at once: at
start nothing is known, and waiting `rise` checks would keep a healthy table
out of service (and a redirect on its backup table) for no gain.  From then
on a host changes only after `rise` consecutive successes (down → up) or
`fall` consecutive failures (up → down); a result that agrees with the
current status resets the count.

Intervals follow HAProxy's inter / fastinter / downinter:

* `fast` while the count is moving (a host up with failures, a host down with
  successes), while the status is unknown, and after a burst of resets (until
  a check started after it answers);
* `down` while the host is down and nothing is moving;
* `inter` otherwise.

Must not: schedule a check or read a clock (the core passes `now` and asks
`pace()`), or know tables and redirects: this is one host's counting.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from ..histogram import Histogram
from .checkspec import CheckOutcome

WINDOW = 20          # recent results kept per host for `show hosts`


class Status(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Pace(enum.Enum):
    """Which of the table's intervals the host's next check waits."""
    INTER = "inter"
    FAST = "fast"
    DOWN = "down"


@dataclass(frozen=True)
class Result:
    at: float
    ok: bool
    latency_s: float | None
    error: str | None


@dataclass
class HostHealth:
    rise: int
    fall: int
    status: Status = Status.UNKNOWN
    streak: int = 0                  # consecutive results disagreeing with `status`
    suspect_since: float | None = None   # an RST burst was seen at this time
    checks: int = 0
    successes: int = 0
    since: float | None = None       # when `status` was entered
    last_error: str | None = None
    last_warning: str | None = None
    window: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    # Of the checks that succeeded: a failure's latency is mostly its timeout.
    latency: Histogram = field(default_factory=Histogram)

    def record(self, outcome: CheckOutcome, started: float, now: float) -> Status | None:
        """Count one result of a check started at `started`; return the new status if it changed."""
        self.checks += 1
        self.window.append(Result(now, outcome.ok, outcome.latency_s, outcome.error))
        if outcome.ok:
            self.successes += 1
            if outcome.latency_s is not None:
                self.latency.observe(outcome.latency_s)
        else:
            self.last_error = outcome.error or "check failed"
        if self.suspect_since is not None and started >= self.suspect_since:
            # A check that began after the burst has answered: the burst is dealt with.
            self.suspect_since = None
        if self.status is Status.UNKNOWN:
            return self._enter(Status.UP if outcome.ok else Status.DOWN, now)
        if outcome.ok == (self.status is Status.UP):
            self.streak = 0
            return None
        self.streak += 1
        if self.streak >= (self.rise if outcome.ok else self.fall):
            return self._enter(Status.UP if outcome.ok else Status.DOWN, now)
        return None

    def reset(self, now: float) -> None:
        """Back to unknown (a host or table enabled again): its old status is stale."""
        self.status = Status.UNKNOWN
        self.streak = 0
        self.suspect_since = None
        self.since = now

    def retune(self, rise: int, fall: int) -> None:
        """New rise/fall from a reload; a count already past the new limit waits one more result."""
        self.rise, self.fall = rise, fall

    def pace(self) -> Pace:
        if self.streak or self.suspect_since is not None or self.status is Status.UNKNOWN:
            return Pace.FAST
        if self.status is Status.DOWN:
            return Pace.DOWN
        return Pace.INTER

    def availability(self) -> float | None:
        """Successful checks in percent of all checks (relayd's Avlblty); None before the first."""
        return 100.0 * self.successes / self.checks if self.checks else None

    def progress(self) -> str | None:
        """`2/3 failures` while a change is counting, for `show hosts`."""
        if not self.streak:
            return None
        if self.status is Status.UP:
            return f"{self.streak}/{self.fall} failures"
        return f"{self.streak}/{self.rise} successes"

    def _enter(self, status: Status, now: float) -> Status:
        self.status = status
        self.streak = 0
        self.since = now
        return status
