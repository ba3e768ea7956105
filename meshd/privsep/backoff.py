"""When a supervised child that died is started again (sans-I/O, time passed in).

The first restart waits `first` seconds, each next one twice as long up to
`limit`; a child that ran `stable` seconds or more before it died counts as
having worked, and its next restart waits `first` again.  So a child that
dies at once is retried 0.5, 1, 2, 4 ... 30 s apart, and one that dies once
a day is back within half a second.

Must not: sleep or start anything (meshd/privsep/supervisor.py does).
"""

from __future__ import annotations

FIRST_S = 0.5
LIMIT_S = 30.0
STABLE_S = 30.0


class Backoff:
    def __init__(self, first: float = FIRST_S, limit: float = LIMIT_S, stable: float = STABLE_S):
        if not 0 < first <= limit:
            raise ValueError("need 0 < first <= limit")
        self.first = first
        self.limit = limit
        self.stable = stable
        self._next = first
        self._started_at: float | None = None
        self.restarts = 0

    def started(self, now: float) -> None:
        """The child has been started (or came up) at `now`."""
        self._started_at = now

    def died(self, now: float) -> float:
        """The child died at `now`: seconds to wait before starting it again."""
        ran = None if self._started_at is None else now - self._started_at
        self._started_at = None
        if ran is not None and ran >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(self.limit, self._next * 2)
        self.restarts += 1
        return delay
