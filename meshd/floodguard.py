"""When a socket should admit only the senders already known.

Sans-I/O, time passed in; the election shell and the state mesh's shell
each keep one for their sockets and attach and remove the socket filter
(meshd/kernel/sockfilter.py) as it decides.

Why: a flood of forged adverts (each from its own source address) fills the
socket's receive queue faster than one Python loop rejects them, and the
kernel then drops arrivals at random, the master's adverts among them: three
lost in a row and the backup takes over (tests/lab/test_flood_lab.py).  No
check in user space can help once the kernel has dropped the advert, so
under a flood the guard has the kernel keep only datagrams from the sources
of adverts that passed every check, the configured unicast peers, and one in
2**SAMPLE_SHIFT of the rest: a node that joins during a flood, or a peer that
changed its address, is still heard, after a few tens of adverts.  The state
mesh admits its configured peers' addresses (a frame from another address of
a peer is sampled like the rest).

What it does not stop: a flood that spoofs a known peer's address gets in as
before (docs/security.md, "Threat model").
"""

from __future__ import annotations

from dataclasses import dataclass, field

ENGAGE_PER_S = 1000.0       # rejects per second that engage the guard
RELEASE_PER_S = 100.0       # an estimated rate under this ...
HOLD_S = 10.0               # ... for this long releases it
SAMPLE_SHIFT = 6            # one in 64 datagrams from unknown sources still read
WINDOW_S = 1.0              # rates are measured over windows this long
MAX_SOURCES = 32            # the most recent known sources admitted


@dataclass
class FloodGuard:
    """The guard's state: engaged or not, the sources it admits.

    `rejected` is told of every reject (its source); `tick` of time passing
    (at least every WINDOW_S).  Both return True when the filter must be
    rebuilt: engaged, released, or a new source admitted.  While engaged, a
    reject from a source the filter does not admit stands for
    2**SAMPLE_SHIFT of them (the others the kernel dropped)."""

    engage_per_s: float = ENGAGE_PER_S
    release_per_s: float = RELEASE_PER_S
    hold_s: float = HOLD_S
    sample_shift: int = SAMPLE_SHIFT
    engaged_since: float | None = None
    admitted: tuple[str, ...] = ()
    engagements: int = 0
    last_rate: float = 0.0          # estimated rejects/s of the last window
    _window_start: float | None = None
    _window_count: float = 0.0
    _quiet_since: float | None = None
    _known: dict[str, float] = field(default_factory=dict)   # source -> last accepted

    @property
    def engaged(self) -> bool:
        return self.engaged_since is not None

    def rejected(self, source: str | None, now: float, count: int = 1) -> bool:
        """`count` rejects from `source` (None: from sources not named, the tail
        of a flood the wire engine counted under its reason alone)."""
        weight = 1 if not self.engaged or source in self.admitted else 1 << self.sample_shift
        self._window_count += weight * count
        return self.tick(now)

    def known(self, sources, now: float) -> bool:
        """Sources of authentic adverts and configured peers, as seen `now`."""
        for s in sources:
            self._known[s] = now
        if len(self._known) > MAX_SOURCES:
            newest = sorted(self._known.items(), key=lambda kv: kv[1])[-MAX_SOURCES:]
            self._known = dict(newest)
        if self.engaged and set(self._known) != set(self.admitted):
            self.admitted = tuple(sorted(self._known))
            return True
        return False

    def set_known(self, sources) -> bool:
        """Exactly these sources, for good (a fixed list: the state mesh's
        configured peers); True when the filter must be rebuilt."""
        self._known = dict.fromkeys(sources, float("inf"))
        if self.engaged and set(self._known) != set(self.admitted):
            self.admitted = tuple(sorted(self._known))
            return True
        return False

    def tick(self, now: float) -> bool:
        if self._window_start is None:
            self._window_start = now
            return False
        elapsed = now - self._window_start
        # Not engaged, a window's worth already: engage now, not at the window's end.
        early = not self.engaged and self._window_count >= self.engage_per_s * WINDOW_S
        if elapsed < WINDOW_S and not early:
            return False
        rate = self._window_count / max(elapsed, WINDOW_S)
        self.last_rate = rate
        self._window_start, self._window_count = now, 0.0
        if not self.engaged:
            if rate >= self.engage_per_s:
                self.engaged_since = now
                self.engagements += 1
                self._quiet_since = None
                self.admitted = tuple(sorted(self._known))
                return True
            return False
        if rate >= self.release_per_s:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now
        if now - self._quiet_since >= self.hold_s:
            self.engaged_since = None
            self._quiet_since = None
            self.admitted = ()
            return True
        return False

    def status(self, now: float) -> dict:
        return {"engaged": self.engaged,
                "engaged_s": round(now - self.engaged_since, 1) if self.engaged else None,
                "admitted": list(self.admitted), "engagements": self.engagements,
                "rejects_per_s": round(self.last_rate)}
