"""Seeded scenarios the property tests run by the hundred: a failover cluster and
a script of faults.

`failover_cluster` is 2 or 3 nodes with two groups, active/active (node 1
prefers g1, the last node g2), every node a peer of every other in the state
mesh.  `Chaos` drives it: the groups' clients open, change and close flows at
whichever node they reach, while nodes are killed, stopped, restarted (the
daemon at once; the box, with an empty kernel, no sooner than REBOOT_S after
it went down), demoted and promoted by the operator, partitioned and
healed, and asked for a resync, at random times from the run's seed.
"""

from __future__ import annotations

import random

from .configs import group, node, sync
from .simulation import Cluster

ADVBASE_MS = 100
# What a takeover commit and the continuous applier manage in the lab (25k
# entries/s, docs/benchmarks.md): a bulk of a thousand flows takes 40 ms.
KERNEL_RATE = 25_000.0
# A box takes this long at least to reboot: a node comes back with an empty
# kernel only after it was down that long (a daemon restarts at once).
REBOOT_S = 2.0
FAULTS = ("kill", "stop", "restart", "demote", "promote", "partition", "heal", "resync")


def failover_texts(ids, *, commit: str = "continuous", groups: int = 2, advert_copies: int = 1,
                   health: dict | None = None, **sync_kw) -> dict[int, str]:
    """The files of a failover cluster; one advert copy (the runs are lossless
    or nearly: a lost advert is one more takeover to check)."""
    ids = sorted(ids)
    sync_kw.setdefault("peer_timeout_ms", 1000)
    sync_kw.setdefault("heartbeat_ms", 200)
    sync_kw.setdefault("digest_interval_ms", 1000)
    out = {}
    for i, n in enumerate(ids):
        skews = (40 * i, 40 * (len(ids) - 1 - i))
        gs = [group(k + 1, advskew=skews[k], advert_copies=advert_copies) for k in range(groups)]
        out[n] = node(n, gs, sync=sync(n, ids, commit=commit, **sync_kw), health=health)
    return out


def failover_cluster(seed: int, *, nodes: int | None = None, commit: str = "continuous", loss=None,
                     **kw) -> Cluster:
    """A started failover cluster of 2 or 3 nodes (from the seed unless given)."""
    rng = random.Random(seed)
    n = nodes or rng.choice((2, 3, 3))
    net = {"loss": rng.choice((0.0, 0.0, 0.02)) if loss is None else loss, "jitter": 0.002}
    sim_kw = {k: kw.pop(k) for k in ("audit", "capture", "commit_rate", "apply_rate") if k in kw}
    sim_kw.setdefault("commit_rate", KERNEL_RATE)
    sim_kw.setdefault("apply_rate", KERNEL_RATE)
    sim_kw.setdefault("capture", False)
    c = Cluster(failover_texts(range(1, n + 1), commit=commit, **kw), seed=seed, **net, **sim_kw)
    c.start_all()
    return c


class Chaos:
    """A random script of faults on a running cluster, from `rng`.

    Args:
        c: the cluster (its groups' clients get traffic every `tick` s).
        rng: the script's randomness (not the network's: a run with the same
            seed and another script sends the same datagrams until they differ).
        faults: the kinds of fault to draw from (FAULTS).
        flows_per_tick: flow changes per group per tick.
    """

    def __init__(self, c: Cluster, rng: random.Random, faults=FAULTS, tick: float = 0.05,
                 flows_per_tick: int = 3):
        self.c = c
        self.rng = rng
        self.faults = tuple(faults)
        self.flows_per_tick = flows_per_tick
        self.events: list[tuple[float, str, object]] = []
        self.groups = c.group_names()
        self.traffic = True
        c.every(tick, self._traffic)

    def _traffic(self) -> None:
        if self.traffic:
            for g in self.groups:
                self.c.traffic(g, self.flows_per_tick, self.rng)

    def run(self, steps: int, gap=(0.3, 0.8)) -> None:
        """`steps` faults, each followed by a random stretch of simulated time."""
        for _ in range(steps):
            self.step()
            self.c.run_for(self.rng.uniform(*gap))

    def step(self) -> None:
        c, rng = self.c, self.rng
        alive = c.alive()
        dead = [n for n in c.ids if n not in alive]
        kind = rng.choice(self.faults)
        if kind in ("kill", "stop") and len(alive) > 1:
            masters = sorted({m for g in self.groups for m in c.masters(g)})
            victim = rng.choice(masters or alive)
            (c.kill if kind == "kill" else c.stop)(victim)
            self.events.append((c.now, kind, victim))
        elif kind == "restart" and dead:
            n = rng.choice(dead)
            reboot = rng.random() < 0.5 and c.now - c.nodes[n].down_at >= REBOOT_S
            c.restart(n, reboot=reboot)
            self.events.append((c.now, "reboot" if reboot else "restart", n))
        elif kind == "demote" and alive:
            n = rng.choice(alive)
            c.call(n, "operator_demote", "all", 50)
            self.events.append((c.now, kind, n))
        elif kind == "promote" and alive:
            n = rng.choice(alive)
            c.call(n, "operator_promote", "all")
            self.events.append((c.now, kind, n))
        elif kind == "partition" and len(c.ids) > 1:
            cut = rng.randrange(1, len(c.ids))
            order = rng.sample(c.ids, len(c.ids))
            sides = (set(order[:cut]), set(order[cut:]))
            c.partition(*sides)
            self.events.append((c.now, kind, sides))
        elif kind == "heal":
            c.heal()
            self.events.append((c.now, kind, None))
        elif kind == "resync" and alive:
            n = rng.choice(alive)
            c.call(n, "resync_request")
            self.events.append((c.now, kind, n))

    def script(self) -> str:
        return "\n".join(f"  {t:8.4f}s {kind} {what}" for t, kind, what in self.events)
