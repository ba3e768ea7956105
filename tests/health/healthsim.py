"""A simulated clock and check runner around a HealthCore.

Hosts answer according to `sim.up[address]` (True by default) after
`latency` seconds; addresses in `sim.hung` never answer.  Every action is
recorded with the time it was returned.
"""

from __future__ import annotations

import random

from meshd.config.health import HealthConfig, HealthHost, HealthRedirect, HealthTable
from meshd.health.actions import Demote, Log, SetBackends, StartCheck
from meshd.health.checkspec import CheckOutcome, CheckSpec
from meshd.health.core import HealthCore

HTTP = CheckSpec("http", timeout_s=0.5)
TCP = CheckSpec("tcp", timeout_s=0.5)


def table(name, hosts, port=80, check=HTTP, **kw) -> HealthTable:
    base = {"interval_ms": 2000, "fast_interval_ms": 500, "down_interval_ms": 5000, "rise": 2,
            "fall": 3, "jitter_percent": 0}
    base.update(kw)
    return HealthTable(name, tuple(hosts), port, check, **base)


def config(hosts, tables, redirects=(), **kw) -> HealthConfig:
    return HealthConfig(tuple(HealthHost(n, a) if isinstance(a, str) else HealthHost(n, *a)
                              for n, a in hosts.items()),
                        tuple(tables), tuple(redirects), **kw)


def redirect(name="www", tbl="web", **kw) -> HealthRedirect:
    return HealthRedirect(name, kw.pop("address", "192.0.2.80"), kw.pop("port", 80), tbl, **kw)


WEB = {"web1": "10.1.0.11", "web2": "10.1.0.12", "web3": "10.1.0.13", "sorry": "10.1.0.99"}


class Sim:
    def __init__(self, cfg: HealthConfig, seed: int = 1, latency: float = 0.01, start: bool = True):
        self.core = HealthCore(cfg, random.Random(seed))
        self.now = 0.0
        self.latency = latency
        self.up: dict[str, bool] = {}
        self.errors: dict[str, str] = {}
        self.hung: set[str] = set()
        self.pending: list[tuple[float, int, object]] = []
        self.actions: list[tuple[float, object]] = []
        if start:
            self.start()

    def start(self) -> None:
        self.feed(self.core.start(self.now))

    # -- driving

    def feed(self, actions) -> list:
        for a in actions:
            self.actions.append((self.now, a))
            if isinstance(a, StartCheck) and a.target.address not in self.hung:
                self.pending.append((self.now + self.latency, a.check_id, a.target))
        return actions

    def outcome(self, target) -> CheckOutcome:
        if self.up.get(target.address, True):
            return CheckOutcome(True, self.latency)
        return CheckOutcome(False, self.latency, self.errors.get(target.address, "connect refused"))

    def run_until(self, t_end: float) -> None:
        for _ in range(100000):
            deadline = self.core.next_deadline()
            times = [p[0] for p in self.pending] + ([deadline] if deadline is not None else [])
            nxt = min(times, default=None)
            if nxt is None or nxt > t_end:
                break
            self.now = max(self.now, nxt)
            for p in sorted(p for p in self.pending if p[0] <= self.now):
                self.pending.remove(p)
                self.feed(self.core.check_done(p[1], self.outcome(p[2]), self.now))
            deadline = self.core.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.feed(self.core.poll(self.now))
        else:
            raise AssertionError("simulation does not advance")
        self.now = t_end

    def call(self, method: str, *args) -> list:
        return self.feed(getattr(self.core, method)(*args, self.now))

    # -- reading

    def of(self, kind, since: float = -1.0) -> list:
        return [a for t, a in self.actions if isinstance(a, kind) and t >= since]

    def starts(self, address: str, since: float = -1.0) -> list[float]:
        return [t for t, a in self.actions
                if isinstance(a, StartCheck) and a.target.address == address and t >= since]

    def backends(self, name: str = "www") -> SetBackends | None:
        sets = [a for a in self.of(SetBackends) if a.redirect == name]
        return sets[-1] if sets else None

    def backend_addresses(self, name: str = "www") -> list[str]:
        return [b[0] for b in self.backends(name).backends]

    def messages(self, since: float = -1.0) -> list[str]:
        return [a.message for a in self.of(Log, since)]

    def demotes(self) -> list[tuple[str, bool]]:
        return [(a.counter, a.on) for a in self.of(Demote)]

    def member(self, table: str, host: str):
        return self.core.members[(table, host)]
