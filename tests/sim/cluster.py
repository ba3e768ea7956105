"""An in-memory cluster of election cores: simulated clock, lossy network, attacker.

The election core is sans-I/O, so a whole cluster can run in one process on a
simulated clock.  Everything is deterministic for a seed: one random.Random
decides loss, delay and duplication, and events due at the same instant run
in the order they were queued (the heap key is (time, seq)).

What is modelled, and why:
* Timers: each node's `handle_timer` runs exactly at its `next_deadline()`,
  re-queried after every input, as the real shell does.  A stale timer event
  (the deadline moved) is ignored through a per-node token.
* Network: an advert goes to every other node that has a group with the same
  id (multicast on one segment).  Each copy is lost, delayed (base + uniform
  jitter, so copies reorder) and duplicated independently.  With fifo=True a
  link keeps its order (one switched segment delays but does not reorder).
  Partitions cut links; they are checked when a datagram arrives (a cable
  pulled while a frame is in flight loses it).
* Lifecycle: kill = SIGKILL / power loss: no bow-out, and we count its
  addresses as gone (the host no longer answers for them); stop = graceful
  shutdown (bow-out adverts go out first); restart = a new core with a new
  epoch and the replay marks it had persisted.
* Attacker: every datagram sent is captured in `captured` and shown to the
  `taps` (callbacks, e.g. to schedule replays); `inject` hands any bytes to a
  node at the current time and returns what the core did.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable

from meshd.config import GroupConfig
from meshd.crypto import ELECTION_INFO, KeyRing
from meshd.election.actions import (AddAddresses, AdvertRejected, RemoveAddresses,
                                    SendAdvert, State, StateChanged)
from meshd.election.core import ElectionCore
from meshd.election.wire import decode_advert, encode_advert
from meshd.replay import ReplayGuard

SECRET = b"meshd simulated cluster secret!!"          # 32 bytes
KEYS = KeyRing.from_secrets({1: SECRET}, 1, ELECTION_INFO)
OTHER_KEYS = KeyRing.from_secrets({1: b"x" * 32}, 1, ELECTION_INFO)  # an outsider's key, same id


def group(gid: int, advskew: int = 0, advbase_ms: int = 100, **kw) -> GroupConfig:
    """A group config; nodes share everything but advskew (and preempt if wanted)."""
    kw.setdefault("interface", "eth0")
    return GroupConfig(gid, f"g{gid}", addresses=(f"192.0.2.{gid}/24",), advbase_ms=advbase_ms,
                       advskew=advskew, **kw)


@dataclass(frozen=True)
class Datagram:
    time: float        # when it was sent
    src: int
    group_id: int
    data: bytes
    bowout: bool


@dataclass(frozen=True)
class Transition:
    time: float
    node: int
    group: str
    old: State
    new: State
    reason: str


@dataclass
class Node:
    id: int
    groups: list[GroupConfig]
    epoch: int = 1
    core: ElectionCore | None = None
    alive: bool = False
    timer_token: int = 0                  # bumped to invalidate queued timer events
    timer_at: float | None = None
    replay_marks: dict = field(default_factory=dict)   # what a restart restores


class Cluster:
    def __init__(self, groups_by_node: dict[int, list[GroupConfig]], *, seed: int = 0,
                 loss: float = 0.0, delay: float = 0.001, jitter: float = 0.0, dup: float = 0.0,
                 fifo: bool = False):
        self.rng = random.Random(seed)
        self.loss, self.delay, self.jitter, self.dup, self.fifo = loss, delay, jitter, dup, fifo
        self.last_arrival: dict[tuple[int, int], float] = {}   # (src, dst) -> time, for fifo
        self.nodes = {n: Node(n, list(gs)) for n, gs in groups_by_node.items()}
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.side: dict[int, int] = {}        # node -> partition side; empty = healed
        self.captured: list[Datagram] = []
        self.taps: list[Callable[[Datagram], None]] = []
        self.transitions: list[Transition] = []
        self.rejections: list[tuple[float, int, str]] = []     # (time, node, reason)
        self.holders: dict[str, set[int]] = {g.name: set() for gs in groups_by_node.values() for g in gs}

    # ------------------------------------------------------------ event loop

    def at(self, t: float, fn: Callable[[], None]) -> None:
        assert t >= self.now, f"cannot schedule in the past ({t} < {self.now})"
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, fn))

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> float | None:
        """Run events up to time t.  With `stop`, return the first time it holds."""
        while self._queue and self._queue[0][0] <= t:
            when, _, fn = heapq.heappop(self._queue)
            self.now = when
            fn()
            if stop is not None and stop():
                return self.now
        self.now = t
        return None

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> float | None:
        return self.run_until(self.now + seconds, stop)

    # ------------------------------------------------------------ lifecycle

    def start(self, node_id: int, epoch: int | None = None, restore_replay: bool = True) -> None:
        node = self.nodes[node_id]
        if epoch is not None:
            node.epoch = epoch
        guard = ReplayGuard()
        if restore_replay:
            guard.restore(node.replay_marks)
        node.core = ElectionCore(node_id, node.groups, KEYS, node.epoch, replay=guard)
        node.alive = True
        self._apply(node, node.core.start(self.now))

    def kill(self, node_id: int) -> None:
        """The host dies: no bow-out; its addresses disappear with it."""
        self._down(node_id)
        for holders in self.holders.values():
            holders.discard(node_id)

    def stop(self, node_id: int) -> None:
        """Graceful stop: bow-out adverts are sent (and delivered) before the core goes."""
        node = self.nodes[node_id]
        self._apply(node, node.core.shutdown(self.now))
        self._down(node_id)

    def restart(self, node_id: int, epoch: int | None = None, restore_replay: bool = True) -> None:
        """Start again; the epoch is the persisted one + 1 unless given (to test reuse)."""
        node = self.nodes[node_id]
        if node.alive:
            self.kill(node_id)
        self.start(node_id, node.epoch + 1 if epoch is None else epoch, restore_replay)

    def _down(self, node_id: int) -> Node:
        node = self.nodes[node_id]
        # The daemon persists its replay marks; assume the last ones reached disk.
        node.replay_marks = node.core.replay.snapshot()
        node.alive = False
        node.timer_token += 1
        node.timer_at = None
        return node

    def call(self, node_id: int, method: str, *args) -> list:
        """Any other core input, e.g. call(1, "operator_demote", "all", 50); `now` is appended."""
        node = self.nodes[node_id]
        actions = getattr(node.core, method)(*args, self.now)
        self._apply(node, actions)
        return actions

    # ------------------------------------------------------------ network

    def partition(self, *sides: set[int]) -> None:
        """Nodes in different sides cannot reach each other (until heal)."""
        self.side = {n: i for i, s in enumerate(sides) for n in s}

    def heal(self) -> None:
        self.side = {}

    def reachable(self, a: int, b: int) -> bool:
        return self.side.get(a, -1) == self.side.get(b, -1)

    def _send(self, node: Node, a: SendAdvert) -> None:
        dg = Datagram(self.now, node.id, node.core.groups[a.group].config.id, a.data, a.bowout)
        self.captured.append(dg)
        for tap in self.taps:
            tap(dg)
        for other in self.nodes.values():
            if other is node or all(g.id != dg.group_id for g in other.groups):
                continue
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                if self.rng.random() < self.loss:
                    continue
                when = self.now + self.delay + self.rng.uniform(0, self.jitter)
                if self.fifo:
                    when = self.last_arrival[node.id, other.id] = max(
                        when, self.last_arrival.get((node.id, other.id), 0.0))
                self.at(when, lambda o=other: self._arrive(o, dg))

    def _arrive(self, node: Node, dg: Datagram) -> None:
        if node.alive and self.reachable(dg.src, node.id):
            self._receive(node, dg.data, f"10.0.0.{dg.src}")

    def _receive(self, node: Node, data: bytes, source: str) -> list:
        actions = node.core.receive(data, source, self.now, ttl=255)
        self._apply(node, actions)
        return actions

    def inject(self, node_id: int, data: bytes, source: str = "10.0.0.66") -> list:
        """The attacker hands `data` to a node now; returns the core's actions."""
        node = self.nodes[node_id]
        return self._receive(node, data, source) if node.alive else []

    # ------------------------------------------------------------ actions and timers

    def _apply(self, node: Node, actions: list) -> None:
        for a in actions:
            if isinstance(a, SendAdvert):
                self._send(node, a)
            elif isinstance(a, StateChanged):
                self.transitions.append(Transition(self.now, node.id, a.group, a.old, a.new, a.reason))
            elif isinstance(a, AddAddresses):
                self.holders[a.group].add(node.id)
            elif isinstance(a, RemoveAddresses):
                self.holders[a.group].discard(node.id)
            elif isinstance(a, AdvertRejected):
                self.rejections.append((self.now, node.id, a.reason))
        self._rearm(node)

    def _rearm(self, node: Node) -> None:
        deadline = node.core.next_deadline() if node.alive else None
        if deadline == node.timer_at:
            return
        node.timer_token += 1
        node.timer_at = deadline
        if deadline is not None:
            token = node.timer_token
            self.at(max(deadline, self.now), lambda: self._fire(node, token))

    def _fire(self, node: Node, token: int) -> None:
        if not node.alive or token != node.timer_token:
            return
        node.timer_at = None
        self._apply(node, node.core.handle_timer(self.now))
        # A deadline that does not move after handle_timer would spin forever.
        nxt = node.core.next_deadline()
        assert nxt is None or nxt > self.now, f"node {node.id}: deadline {nxt} not advanced at {self.now}"

    # ------------------------------------------------------------ queries

    def state(self, node_id: int, group_name: str) -> State:
        node = self.nodes[node_id]
        return node.core.groups[group_name].state if node.alive else State.INIT

    def masters(self, group_name: str) -> list[int]:
        return [n for n in self.nodes if self.state(n, group_name) is State.MASTER]

    def priority(self, node_id: int, group_name: str) -> tuple[int, int, int]:
        core = self.nodes[node_id].core
        g = core.groups[group_name]
        return (core.group_demotion(g), g.config.advskew, node_id)

    def best(self, group_name: str) -> int:
        """The alive node that should be master: lowest (demotion, advskew, node id)."""
        alive = [n for n, node in self.nodes.items() if node.alive
                 and group_name in node.core.groups
                 and node.core.groups[group_name].state in (State.BACKUP, State.MASTER)]
        return min(alive, key=lambda n: self.priority(n, group_name))

    def group_names(self) -> list[str]:
        return sorted(self.holders)

    def timing(self, node_id: int, group_name: str) -> tuple[float, float]:
        """(interval, skew) of a node's group, in seconds."""
        g = self.nodes[node_id].core.groups[group_name]
        return g.interval, g.skew

    def changes(self, since: float = 0.0) -> list[Transition]:
        return [t for t in self.transitions if t.time > since]

    def timeline(self, since: float = 0.0, limit: int = 60) -> str:
        lines = [f"  {t.time:10.4f}s node {t.node} {t.group}: {t.old.value} -> {t.new.value} ({t.reason})"
                 for t in self.changes(since)]
        if len(lines) > limit:
            lines = lines[:limit // 2] + [f"  ... {len(lines) - limit} more ..."] + lines[-limit // 2:]
        states = ", ".join(f"{g}: masters {self.masters(g)} holders {sorted(self.holders[g])}"
                           for g in self.group_names())
        return f"at {self.now:.4f}s {states}\nstate changes:\n" + ("\n".join(lines) or "  (none)")


# ---------------------------------------------------------------- forgeries

def flip_bit(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def reencode(data: bytes, keys: KeyRing = OTHER_KEYS, **changes) -> bytes:
    """A valid advert re-signed with another key (and optionally other fields)."""
    advert = decode_advert(data, KEYS)
    fields = {**advert.__dict__, **changes}
    return encode_advert(type(advert)(**fields), keys.send_key)


def expected_flip_reason(bit: int) -> str:
    """What decode_advert must say about a one-bit flip of a valid advert."""
    byte = bit // 8
    if byte == 0:
        return "bad version"
    if byte == 13:                      # key id: only key 1 exists
        return "unknown key"
    return "bad mac"

