"""An in-memory mesh of sync cores: simulated clock, lossy network, restarts.

Like tests/sim/cluster.py for the election: the core is sans-I/O, so a whole
cluster runs in one process on a simulated clock, deterministically for a
seed (one random.Random decides loss, delay, duplication and the workload;
events due at the same instant run in the order they were queued).

What is modelled, and why:
* Timers: each node's `handle_timer` runs at its `next_deadline()`,
  re-queried after every input, as the shell does; stale timer events are
  ignored through a per-node token.
* Network: SendFrame(None) reaches every peer of the sender, each copy
  lost, delayed (base + uniform jitter, so copies reorder) and duplicated
  independently; SendFrame(peer) reaches one node.  Partitions cut links and
  are checked on arrival.  No bandwidth limit (a 1 Gbit/s sync link carries
  50k entries in well under a second).
* Kernel: each node has a `kernel` dict (key -> attrs), the ground truth of
  its own flows.  `local()` changes it and feeds the core the same events,
  as the ctnetlink listener would.
* Lifecycle: kill = the daemon dies (its frames in flight are still
  delivered, its timers stop); restart = a new core with epoch + 1 that
  dumps the kernel table (local_resync), as the daemon does at start;
  `reboot=True` empties the kernel table first (the box rebooted).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable

from meshd.crypto import SYNC_INFO, KeyRing
from meshd.sync import (DESTROY, NEW, UPDATE, ExternalChanged, FrameRejected, PeerChanged,
                        SendFrame, SyncCore, SyncState)

SECRET = b"meshd simulated sync secret!!!!!"
KEYS = KeyRing.from_secrets({1: SECRET}, 1, SYNC_INFO)
OTHER_KEYS = KeyRing.from_secrets({1: b"y" * 32}, 1, SYNC_INFO)


@dataclass
class SimNode:
    id: int
    epoch: int
    core: SyncCore | None = None
    kernel: dict = field(default_factory=dict)
    alive: bool = False
    timer_token: int = 0
    timer_at: float | None = None
    states: list = field(default_factory=list)        # (time, SyncState)
    peer_events: list = field(default_factory=list)   # (time, PeerChanged)
    rejects: list = field(default_factory=list)       # (time, FrameRejected)


class SimNet:
    def __init__(self, node_ids, *, seed: int = 0, loss: float = 0.0, delay: float = 0.0005,
                 jitter: float = 0.0, dup: float = 0.0, attr_len: tuple[int, int] = (80, 250),
                 **core_kw):
        self.rng = random.Random(seed)
        self.loss, self.delay, self.jitter, self.dup = loss, delay, jitter, dup
        self.attr_len = attr_len
        self.core_kw = core_kw
        self.ids = sorted(node_ids)
        self.nodes = {n: SimNode(n, epoch=1000 + n) for n in self.ids}
        self.now = 0.0
        self._queue: list = []
        self._seq = 0
        self.side: dict[int, int] = {}
        self.sent = 0
        self.delivered = 0
        self.taps: list[Callable[[int, int | None, bytes], None]] = []   # (src, peer, data)
        self.external_changes: list[tuple[int, ExternalChanged]] = []
        self._key_counter = 0

    # ------------------------------------------------------------ event loop

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(t, self.now), self._seq, fn))

    def run_until(self, t: float, stop: Callable[[], bool] | None = None,
                  check_every: float = 0.05) -> float | None:
        """Run events up to t.  With `stop`, return the first check time it holds."""
        next_check = self.now
        while True:
            if stop is not None and self.now >= next_check:
                if stop():
                    return self.now
                next_check = self.now + check_every
            if not self._queue or self._queue[0][0] > t:
                break
            limit = min(t, next_check) if stop is not None else t
            if self._queue[0][0] > limit:
                self.now = limit
                continue
            when, _, fn = heapq.heappop(self._queue)
            self.now = when
            fn()
        if stop is not None:
            while self.now < t:                    # nothing queued: only time passes
                self.now = min(t, next_check)
                if stop():
                    return self.now
                next_check = self.now + check_every
        self.now = t
        return None

    def run_for(self, seconds: float, stop=None, check_every: float = 0.05) -> float | None:
        return self.run_until(self.now + seconds, stop, check_every)

    # ------------------------------------------------------------ lifecycle

    def start(self, n: int, peers=None, keys: KeyRing = KEYS) -> None:
        """Start node n's core; its peers are every other node unless `peers` says."""
        node = self.nodes[n]
        peers = [p for p in self.ids if p != n] if peers is None else peers
        node.core = SyncCore(n, peers, keys, node.epoch, **self.core_kw)
        node.alive = True
        self._apply(node, node.core.start(self.now))
        if node.kernel:
            # The daemon dumps the kernel table at start.
            self._apply(node, node.core.local_resync(dict(node.kernel), self.now))

    def start_all(self) -> None:
        for n in self.ids:
            self.start(n)

    def kill(self, n: int) -> None:
        node = self.nodes[n]
        node.alive = False
        node.timer_token += 1
        node.timer_at = None

    def restart(self, n: int, reboot: bool = False) -> None:
        node = self.nodes[n]
        if node.alive:
            self.kill(n)
        if reboot:
            node.kernel.clear()
        node.epoch += 1
        self.start(n)

    def call(self, n: int, method: str, *args):
        """Any core input with `now` appended, e.g. call(1, "request_resync")."""
        node = self.nodes[n]
        actions = getattr(node.core, method)(*args, self.now)
        self._apply(node, actions)
        return actions

    # ------------------------------------------------------------ workload

    def new_key(self, n: int) -> bytes:
        # A key space per node: the flows through that node.  13..40 bytes.
        self._key_counter += 1
        body = self._key_counter.to_bytes(6, "big") + bytes([n])
        return body + bytes(self.rng.randrange(6, 34))

    def attrs(self) -> bytes:
        lo, hi = self.attr_len
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def local(self, n: int, events) -> None:
        """Kernel events at node n: update its kernel table and tell its core."""
        node = self.nodes[n]
        events = list(events)
        for kind, key, attrs in events:
            if kind == DESTROY:
                node.kernel.pop(key, None)
            else:
                node.kernel[key] = attrs
        if node.alive:
            self._apply(node, node.core.local_events(events, self.now))

    def random_events(self, n: int, count: int, p_new: float = 0.5, p_update: float = 0.3):
        """`count` random events on node n's own flows (NEW, UPDATE, DESTROY)."""
        kernel = self.nodes[n].kernel
        keys = list(kernel)
        events = []
        for _ in range(count):
            r = self.rng.random()
            if r < p_new or not keys:
                k = self.new_key(n)
                keys.append(k)
                events.append((NEW, k, self.attrs()))
            elif r < p_new + p_update:
                events.append((UPDATE, self.rng.choice(keys), self.attrs()))
            else:
                events.append((DESTROY, self.rng.choice(keys), None))
        return events

    def load(self, duration: float, rate: float, nodes=None, batch_every: float = 0.01,
             **kw) -> None:
        """Schedule random events at `rate` per second per node for `duration`."""
        nodes = self.ids if nodes is None else nodes
        per_batch = max(1, round(rate * batch_every))
        t = self.now
        while t < self.now + duration:
            for n in nodes:
                self.at(t, lambda n=n: self.local(n, self.random_events(n, per_batch, **kw)))
            t += batch_every

    # ------------------------------------------------------------ network

    def partition(self, *sides) -> None:
        self.side = {n: i for i, s in enumerate(sides) for n in s}

    def heal(self) -> None:
        self.side = {}

    def reachable(self, a: int, b: int) -> bool:
        return self.side.get(a, -1) == self.side.get(b, -1)

    def _transmit(self, src: int, peer: int | None, data: bytes) -> None:
        self.sent += 1
        for tap in self.taps:
            tap(src, peer, data)
        # "Multicast" reaches the sender's configured peers, as with unicast peers
        # (the mesh's default): a node it does not know yet gets nothing.
        targets = [peer] if peer is not None else list(self.nodes[src].core.peers)
        rng = self.rng
        for dst in targets:
            copies = 2 if self.dup and rng.random() < self.dup else 1
            for _ in range(copies):
                if self.loss and rng.random() < self.loss:
                    continue
                when = self.now + self.delay + (rng.uniform(0, self.jitter) if self.jitter else 0.0)
                self.at(when, lambda dst=dst: self._arrive(src, dst, data))

    def _arrive(self, src: int, dst: int, data: bytes) -> None:
        node = self.nodes[dst]
        if node.alive and self.reachable(src, dst):
            self.delivered += 1
            self._apply(node, node.core.receive(data, src, self.now))

    def inject(self, n: int, data: bytes, hint: int | None = None) -> list:
        """An attacker hands bytes to node n now; returns the core's actions."""
        node = self.nodes[n]
        actions = node.core.receive(data, hint, self.now)
        self._apply(node, actions)
        return actions

    # ------------------------------------------------------------ actions and timers

    def _apply(self, node: SimNode, actions) -> None:
        for a in actions:
            t = type(a)
            if t is SendFrame:
                self._transmit(node.id, a.peer, a.data)
            elif t is SyncState:
                node.states.append((self.now, a))
            elif t is PeerChanged:
                node.peer_events.append((self.now, a))
            elif t is FrameRejected:
                node.rejects.append((self.now, a))
            elif t is ExternalChanged:
                self.external_changes.append((node.id, a))
        self._rearm(node)

    def _rearm(self, node: SimNode) -> None:
        deadline = node.core.next_deadline() if node.alive else None
        if deadline == node.timer_at:
            return
        node.timer_token += 1
        node.timer_at = deadline
        if deadline is not None:
            token = node.timer_token
            self.at(deadline, lambda: self._fire(node, token))

    def _fire(self, node: SimNode, token: int) -> None:
        if not node.alive or token != node.timer_token:
            return
        node.timer_at = None
        self._apply(node, node.core.handle_timer(self.now))
        nxt = node.core.next_deadline()
        assert nxt is None or nxt > self.now, f"node {node.id}: deadline {nxt} not advanced at {self.now}"

    # ------------------------------------------------------------ queries

    def alive(self) -> list[int]:
        return [n for n in self.ids if self.nodes[n].alive]

    def differences(self) -> list[str]:
        """What keeps the mesh from being converged (empty when it is)."""
        out = []
        for x in self.alive():
            cx = self.nodes[x].core
            internal = cx.internal
            # Entries too large for any frame are refused by design (counted in stats).
            fits = {k: a for k, a in self.nodes[x].kernel.items()
                    if len(k) + len(a) <= internal.max_record}
            if dict(cx.dump_internal()) != fits:
                out.append(f"node {x}: internal cache differs from its kernel table")
            for y in self.alive():
                if y == x:
                    continue
                ext = self.nodes[y].core.peers[x].ext
                if ext.digests != internal.digests or len(ext) != len(internal):
                    mine, theirs = dict(cx.dump_internal()), dict(self.nodes[y].core.dump_external(x))
                    missing = len(mine.keys() - theirs.keys())
                    extra = len(theirs.keys() - mine.keys())
                    stale = sum(1 for k in mine.keys() & theirs.keys() if mine[k] != theirs[k])
                    out.append(f"node {y}'s copy of {x}: {missing} missing, {extra} extra, "
                               f"{stale} stale of {len(mine)}")
        return out

    def converged(self) -> bool:
        for x in self.alive():
            internal = self.nodes[x].core.internal
            for y in self.alive():
                if y != x:
                    ext = self.nodes[y].core.peers[x].ext
                    if ext.digests != internal.digests or len(ext) != len(internal):
                        return False
        # Digests equal: confirm entry by entry (a digest could in theory collide).
        return not self.differences()

    def quiet(self) -> bool:
        """Converged, and nothing left to repair: no missing frames, no pending work."""
        if not self.converged():
            return False
        for n in self.alive():
            for p in self.nodes[n].core.peers.values():
                if self.nodes[p.id].alive and (p.rx_direct.missing or p.rx_mcast.missing
                                               or p.pending_sweeps or p.repairs):
                    return False
        return True

    def in_sync(self, n: int) -> bool:
        return self.nodes[n].core.in_sync
