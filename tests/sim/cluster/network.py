"""The simulated network: every datagram between the nodes, and an attacker who sees them all.

Two kinds of datagrams travel: adverts (a group's segment: every other node
with a group of that id, or the group's unicast peers) and state-mesh frames
(to one peer, or to every peer: one unicast copy each, or the multicast
group).  Each copy is lost, delayed (base + uniform jitter, so copies
reorder) and duplicated independently, from one seeded random.Random;
with `fifo` a link keeps its order (one switched segment delays but does not
reorder).  Partitions are checked when a copy arrives: a cable pulled while a
frame is in flight loses it.  No bandwidth limit (a 1 Gbit/s sync link
carries 50k entries in well under a second).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ADVERT, FRAME = "advert", "frame"


@dataclass(eq=False)
class Datagram:
    """One datagram as sent (the attacker's capture).

    `delivered`: the nodes a copy reached (with capture on), so a replay can
    be told from a late delivery of a datagram the network lost.
    """
    time: float
    src: int
    kind: str                   # ADVERT or FRAME
    data: bytes
    group_id: int | None = None     # adverts
    peer: int | None = None         # frames: the destination peer, None for all
    bowout: bool = False
    delivered: set = field(default_factory=set)


class Network:
    """Links between the nodes of one Cluster (see the module docstring)."""

    def __init__(self, cluster, *, seed: int, loss: float, delay: float, jitter: float, dup: float,
                 fifo: bool, capture: bool):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.loss, self.delay, self.jitter, self.dup, self.fifo = loss, delay, jitter, dup, fifo
        self.capture = capture
        self.captured: list[Datagram] = []
        self.taps: list = []                       # callables(Datagram)
        self.side: dict[int, int] = {}             # node -> partition side; empty: healed
        self.last_arrival: dict[tuple[int, int], float] = {}
        self.sent = 0
        self.delivered = 0

    @property
    def max_delay(self) -> float:
        return self.delay + self.jitter

    # ------------------------------------------------------------ partitions

    def partition(self, *sides) -> None:
        """Nodes on different sides cannot reach each other (until heal); nodes
        named on no side form one more side together."""
        self.side = {n: i for i, s in enumerate(sides) for n in s}

    def heal(self) -> None:
        self.side = {}

    def reachable(self, a: int, b: int) -> bool:
        return self.side.get(a, -1) == self.side.get(b, -1)

    # ------------------------------------------------------------ sending

    def send(self, src: int, targets, dg: Datagram) -> None:
        """Copies of `dg` towards each of `targets` (node ids), as the links treat them."""
        self.sent += 1
        if self.capture:
            self.captured.append(dg)
        for tap in self.taps:
            tap(dg)
        rng = self.rng
        at = self.cluster.at
        now = self.cluster.now
        for dst in targets:
            copies = 2 if self.dup and rng.random() < self.dup else 1
            for _ in range(copies):
                if self.loss and rng.random() < self.loss:
                    continue
                when = now + self.delay + (rng.uniform(0, self.jitter) if self.jitter else 0.0)
                if self.fifo:
                    link = (src, dst)
                    when = self.last_arrival[link] = max(when, self.last_arrival.get(link, 0.0))
                at(when, self._arrive, dst, dg)

    def _arrive(self, dst: int, dg: Datagram) -> None:
        node = self.cluster.nodes[dst]
        if node.alive and self.reachable(dg.src, dst):
            self.delivered += 1
            if self.capture:
                dg.delivered.add(dst)
            if dg.kind is ADVERT:
                node.receive_advert(dg.data, dg.src)
            else:
                node.receive_frame(dg.data, dg.src)
