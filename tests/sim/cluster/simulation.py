"""The cluster: one event queue, the simulated clock, the nodes, the network, the flows.

Events due at the same instant run in the order they were queued (the heap
key is (time, seq)), so a run is a function of its seed and its script.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from meshd.election.actions import State, StateChanged
from meshd.kernel import ctnetlink as ct

from .configs import address
from .kernel import FlowFactory
from .network import ADVERT, FRAME, Network
from .shell import SimNode, ct_update


@dataclass(frozen=True)
class Transition:
    time: float
    node: int
    group: str
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class AddressAudit:
    """A group's addresses added on a node (Cluster(audit=True)), just before
    the group's clients reach it: what its kernel table held, which node
    carried each of the group's flows, and the node's external caches then
    and at its last transition to MASTER of the group."""
    time: float
    node: int
    group: str
    table: frozenset
    carriers: dict            # flow key -> the node its packets went through (empty: the
                              # clients do not reach this node, a partition is between)
    external: dict            # origin -> frozenset of keys, at this moment
    external_at_master: dict  # the same, when the node became MASTER
    taken_from: int | None    # the master it heard last before it became MASTER (None: none)

    def unknown_or_missing(self) -> tuple[int, set]:
        """(how many flows this node takes over, those of them its table lacks).

        The flows it takes over: those of the group's clients whose packets
        went through the master it takes over from (any other node when it
        heard none), and that it knew: in its external cache of that node,
        both when it became MASTER and now (so not gone meanwhile).
        """
        known = {k for k, c in self.carriers.items() if c != self.node
                 and (self.taken_from is None or c == self.taken_from)
                 and k in self.external_at_master.get(c, ()) and k in self.external.get(c, ())}
        return len(known), known - self.table


@dataclass(frozen=True)
class BrokenFlow:
    """A flow whose packets reached a new master without an entry for it (reset)."""
    time: float
    key: bytes
    group: str
    carrier: int
    master: int


class Cluster:
    """N whole nodes on a simulated network (see the package docstring).

    Args:
        configs: node id -> its configuration file (configs.node(...)).
        seed: drives the network; nodes derive their health jitter from it.
        secrets: node id -> its key files' contents (default: configs.SECRETS).
        loss, delay, jitter, dup, fifo: the network (network.py).
        capture: keep every datagram sent (`captured`), and where it arrived.
        audit: record the kernel table and caches at each address change
            and MASTER transition (`audits`), for the takeover properties.
        commit_rate, apply_rate, dump_rate: entries per second of a takeover
            commit, of the continuous applier, of a table dump.
        check_latency: seconds until a health check answers.
    """

    def __init__(self, configs: dict[int, str], *, seed: int = 0, secrets: dict | None = None,
                 loss: float = 0.0, delay: float = 0.001, jitter: float = 0.0, dup: float = 0.0,
                 fifo: bool = False, capture: bool = True, audit: bool = False,
                 commit_rate: float = 100_000.0, apply_rate: float = 100_000.0,
                 dump_rate: float = 1_000_000.0, check_latency: float = 0.01):
        self.seed = seed
        self.now = 0.0
        self._queue: list = []
        self._seq = itertools.count()
        self.audit = audit
        self.commit_rate, self.apply_rate, self.dump_rate = commit_rate, apply_rate, dump_rate
        self.check_latency = check_latency
        self.network = Network(self, seed=seed, loss=loss, delay=delay, jitter=jitter, dup=dup,
                               fifo=fifo, capture=capture)
        self.flows = FlowFactory()
        self.ids = sorted(configs)
        self.node_by_address = {address(n): n for n in self.ids}
        secrets = secrets or {}
        self.nodes: dict[int, SimNode] = {n: SimNode(self, n, configs[n], secrets.get(n)) for n in self.ids}
        self.transitions: list[Transition] = []
        self.rejections: list[tuple[float, int, str]] = []      # adverts: (time, node, reason)
        self.audits: list[AddressAudit] = []
        self._at_master: dict[tuple[int, str], dict] = {}
        self.group_flows: dict[str, dict[bytes, int]] = {}      # group -> flow key -> carrier node
        self.gateway: dict[str, int] = {}                       # group -> node its clients reach
        self._added_at: dict[tuple[int, str], float] = {}
        self._clients_near: dict[str, int] = {}                 # group -> the last node they reached
        self.broken: list[BrokenFlow] = []

    # ================================================================== the event loop

    def at(self, t: float, fn: Callable, *args) -> None:
        """Run fn(*args) at simulated time t (not before now)."""
        # Not max(): this runs for every event, and the conditional is the faster.
        heapq.heappush(self._queue, (t if t > self.now else self.now, next(self._seq), fn, args))  # noqa: FURB136

    def every(self, period: float, fn: Callable[[], None], until: float | None = None) -> None:
        """fn() every `period` seconds from now on (until `until`)."""
        def tick():
            fn()
            if until is None or self.now + period <= until:
                self.at(self.now + period, tick)
        self.at(self.now + period, tick)

    def run_until(self, t: float, stop: Callable[[], bool] | None = None,
                  check_every: float | None = None) -> float | None:
        """Run the events due up to time t.

        With `stop`, return the first time it holds: after every event, or
        with `check_every` at that period of simulated time (cheaper for a
        costly check); None if it never held.
        """
        queue, pop = self._queue, heapq.heappop
        if stop is not None and check_every is not None:
            next_check = self.now
            while True:
                if self.now >= next_check:
                    if stop():
                        return self.now
                    next_check = self.now + check_every
                if next_check > t:
                    break
                while queue and queue[0][0] <= next_check:
                    self.now, _, fn, args = pop(queue)
                    fn(*args)
                self.now = next_check
            while queue and queue[0][0] <= t:
                self.now, _, fn, args = pop(queue)
                fn(*args)
            self.now = t
            return self.now if stop() else None
        while queue and queue[0][0] <= t:
            self.now, _, fn, args = pop(queue)
            fn(*args)
            if stop is not None and stop():
                return self.now
        self.now = t
        return None

    def run_for(self, seconds: float, stop=None, check_every: float | None = None) -> float | None:
        return self.run_until(self.now + seconds, stop, check_every)

    # ================================================================== lifecycle

    def start(self, n: int, epoch: int | None = None, restore_replay: bool = True) -> None:
        self.nodes[n].start(epoch, restore_replay)

    def start_all(self) -> None:
        for n in self.ids:
            if not self.nodes[n].alive:
                self.start(n)

    def kill(self, n: int) -> None:
        """SIGKILL / power loss: no bow-out; its addresses are gone, its kernel stays."""
        self.nodes[n].kill()

    def stop(self, n: int) -> None:
        """Graceful stop: bow-out adverts first."""
        self.nodes[n].stop()

    def restart(self, n: int, reboot: bool = False, epoch: int | None = None,
                restore_replay: bool = True) -> None:
        """Start again (killed first if alive) with the persisted epoch + 1 (unless
        `epoch` says otherwise); reboot=True empties its kernel first."""
        node = self.nodes[n]
        if node.alive:
            node.kill()
        if reboot:
            node.kernel.reboot()
            for flows in self.group_flows.values():
                for key in [k for k, c in flows.items() if c == n]:
                    del flows[key]
        node.start(epoch, restore_replay)

    def reload(self, n: int, text: str, secrets: dict | None = None) -> list:
        return self.nodes[n].reload(text, secrets)

    def set_link(self, n: int, interface: str, up: bool) -> list:
        """A watched interface of node n goes up or down (the link monitor's report)."""
        node = self.nodes[n]
        node.links[interface] = up
        return node.call("link", interface, up) if node.alive else []

    def overrun(self, n: int) -> list:
        """Node n's kernel dropped events (ENOBUFS): the table is dumped and diffed."""
        node = self.nodes[n]
        actions = node.node.kernel_overrun()
        node.dispatch(actions)
        return actions

    def flush_internal(self, n: int) -> int:
        """`meshctl flush internal`: the cache is forgotten and rebuilt from a dump."""
        node = self.nodes[n]
        removed = node.node.flush_internal()
        node.request_dump("operator flush")
        return removed

    def call(self, n: int, method: str, *args, **kw) -> list:
        """Any NodeCore input, e.g. call(1, "operator_demote", "all", 50); `now` is appended."""
        return self.nodes[n].call(method, *args, **kw)

    # ================================================================== network

    def partition(self, *sides) -> None:
        self.network.partition(*sides)

    def heal(self) -> None:
        self.network.heal()

    def reachable(self, a: int, b: int) -> bool:
        return self.network.reachable(a, b)

    @property
    def captured(self):
        return self.network.captured

    @property
    def taps(self):
        return self.network.taps

    @property
    def max_delay(self) -> float:
        return self.network.max_delay

    def inject(self, n: int, data: bytes, source: str = "10.0.0.66") -> list:
        """The attacker hands an advert to node n now; the node's actions."""
        node = self.nodes[n]
        if not node.alive:
            return []
        src = self.node_by_address.get(source)
        if src is not None:
            return node.receive_advert(data, src)
        gid = int.from_bytes(data[2:4], "big") if len(data) >= 4 else 0
        actions = node.node.advert(data, source, self.now, ttl=255, interface=node.interface_of.get(gid))
        node.dispatch(actions)
        return actions

    def inject_frame(self, n: int, data: bytes, hint: int | None = None) -> list:
        """The attacker hands a state-mesh frame to node n now, its source
        address mapping to peer `hint`; the node's actions."""
        node = self.nodes[n]
        return node.receive_frame(data, None, hint) if node.alive else []

    def replay(self, n: int, dg) -> list:
        """Hand a captured datagram to node n again, from its original source."""
        node = self.nodes[n]
        if not node.alive:
            return []
        if dg.kind is ADVERT:
            return node.receive_advert(dg.data, dg.src)
        assert dg.kind is FRAME
        return node.receive_frame(dg.data, dg.src)

    # ================================================================== flows

    def local(self, n: int, events) -> None:
        """Conntrack events at node n (CtEvents): its table changes, its node is told."""
        node = self.nodes[n]
        kernel = node.kernel
        burst = list(events)
        for e in burst:
            if e.kind == ct.DESTROY:
                kernel.table.pop(e.key, None)
                kernel.local.pop(e.key, None)
            else:
                kernel.table[e.key] = e.attrs
                kernel.local[e.key] = e.attrs
        node.kernel_events(burst)

    def create(self, n: int, count: int, group: str | None = None) -> list[bytes]:
        """`count` new flows through node n (of `group`'s clients, if given); their keys."""
        new = [self.flows.new(n) for _ in range(count)]
        if group is not None:
            carriers = self.group_flows.setdefault(group, {})
            for key, _ in new:
                carriers[key] = n
        event = self.flows.event
        self.local(n, [event(ct.NEW, a) for _, a in new])
        return [k for k, _ in new]

    def update(self, n: int, keys) -> None:
        self.local(n, [ct_update(self.flows, k) for k in keys])

    def destroy(self, n: int, keys) -> None:
        event = self.flows.event
        table = self.nodes[n].kernel.table
        for flows in self.group_flows.values():
            for k in keys:
                flows.pop(k, None)
        self.local(n, [event(ct.DESTROY, table[k]) for k in keys if k in table])

    def random_events(self, n: int, count: int, rng, p_new: float = 0.5, p_update: float = 0.3,
                      group: str | None = None) -> None:
        """`count` random changes of node n's own flows (NEW, UPDATE, DESTROY)."""
        local = self.nodes[n].kernel.local
        keys = list(local)
        new = updated = 0
        gone: list[bytes] = []
        touched: list[bytes] = []
        for _ in range(count):
            r = rng.random()
            if r < p_new or not keys:
                new += 1
            elif r < p_new + p_update:
                touched.append(rng.choice(keys))
                updated += 1
            else:
                k = rng.choice(keys)
                if k not in gone:
                    gone.append(k)
        if new:
            self.create(n, new, group)
        touched = [k for k in touched if k not in gone]
        if touched:
            self.update(n, touched)
        if gone:
            self.destroy(n, gone)

    def load(self, duration: float, rate: float, rng, nodes=None, batch_every: float = 0.01, **kw) -> None:
        """Random events at `rate` per second per node for `duration` (scheduled now)."""
        nodes = self.ids if nodes is None else nodes
        per_batch = max(1, round(rate * batch_every))
        t = self.now
        end = self.now + duration
        while t < end:
            for n in nodes:
                self.at(t, self._load_batch, n, per_batch, rng, kw)
            t += batch_every

    def _load_batch(self, n: int, count: int, rng, kw) -> None:
        self.random_events(n, count, rng, **kw)

    def traffic(self, group: str, count: int, rng, p_new: float = 0.5, p_update: float = 0.3) -> None:
        """Changes of `group`'s clients' flows, at the node they reach (none: nothing)."""
        n = self.gateway.get(group)
        if n is None or not self.nodes[n].alive:
            return
        local = self.nodes[n].kernel.local
        mine = [k for k, c in self.group_flows.get(group, {}).items() if c == n and k in local]
        new = 0
        touched, gone = [], []
        for _ in range(count):
            r = rng.random()
            if r < p_new or not mine:
                new += 1
            elif r < p_new + p_update:
                touched.append(rng.choice(mine))
            else:
                k = rng.choice(mine)
                if k not in gone:
                    gone.append(k)
        if new:
            self.create(n, new, group)
        touched = [k for k in dict.fromkeys(touched) if k not in gone]
        if touched:
            self.update(n, touched)
        if gone:
            self.destroy(n, gone)

    # ------------------------------------------------------------ hooks from the shells

    def on_transition(self, node: SimNode, a: StateChanged) -> None:
        self.transitions.append(Transition(self.now, node.id, a.group, a.old, a.new, a.reason))
        if self.audit and a.new is State.MASTER:
            self._at_master[node.id, a.group] = (self._external_keys(node), node.masters_heard.get(a.group))

    def on_addresses_added(self, node: SimNode, group: str) -> bool:
        """A node announced the group's addresses: its clients reach it now, unless
        a partition keeps them on the side of the node they reached before.
        Whether they do."""
        self._added_at[node.id, group] = self.now
        near = self._clients_near.get(group)
        reached = near is None or self.reachable(near, node.id)
        if reached:
            self.gateway[group] = self._clients_near[group] = node.id
        if self.audit:
            carriers = dict(self.group_flows.get(group, {})) if reached else {}
            external, taken_from = self._at_master.get((node.id, group), ({}, None))
            self.audits.append(AddressAudit(self.now, node.id, group, node.kernel.changes[-1].table,
                                            carriers, self._external_keys(node), external, taken_from))
        return reached

    def on_addresses_removed(self, node: SimNode, group: str) -> None:
        """The node the group's clients reached let the addresses go: if another
        node on their side still holds them (its announcements go on), they
        reach the one that took them last."""
        if self.gateway.get(group) != node.id:
            return
        del self.gateway[group]
        others = [n for n in self.ids if n != node.id and self.nodes[n].alive and self.reachable(node.id, n)
                  and self.nodes[n].kernel.holds(group)]
        if others:
            n = max(others, key=lambda n: self._added_at.get((n, group), -1.0))
            self.gateway[group] = self._clients_near[group] = n
            self.move_traffic(self.nodes[n], group)

    def move_traffic(self, node: SimNode, group: str) -> None:
        """The group's clients now reach `node`: their flows continue there if its
        kernel has an entry for them, else they are reset (`broken`).

        No event says so: the packets of an established flow change nothing the
        kernel reports (only the node core's adoption makes them the node's).
        """
        carriers = self.group_flows.get(group)
        if not carriers or not node.alive:
            return
        table, local = node.kernel.table, node.kernel.local
        for key, carrier in list(carriers.items()):
            if carrier == node.id:
                continue
            self.nodes[carrier].kernel.local.pop(key, None)
            if key in table:
                carriers[key] = node.id
                local[key] = table[key]
            else:
                del carriers[key]
                self.broken.append(BrokenFlow(self.now, key, group, carrier, node.id))

    def _external_keys(self, node: SimNode) -> dict:
        sync = node.node.sync
        if sync is None:
            return {}
        return {p: frozenset(k for k, _ in sync.dump_external(p)) for p in sync.peers}

    # ================================================================== queries: election

    def state(self, n: int, group: str) -> State:
        node = self.nodes[n]
        if not node.alive or group not in node.node.election.groups:
            return State.INIT
        return node.node.election.groups[group].state

    def masters(self, group: str) -> list[int]:
        return [n for n in self.ids if self.state(n, group) is State.MASTER]

    def holders(self, group: str) -> set[int]:
        """The nodes whose kernel holds the group's addresses."""
        return {n for n in self.ids if self.nodes[n].kernel.holds(group)}

    def group_names(self) -> list[str]:
        return sorted({g.name for node in self.nodes.values() for g in node.config.groups})

    def priority(self, n: int, group: str) -> tuple[int, int, int]:
        election = self.nodes[n].node.election
        g = election.groups[group]
        return (election.group_demotion(g), g.config.advskew, n)

    def best(self, group: str) -> int:
        """The live node that should be master: lowest (demotion, advskew, node id)."""
        alive = [n for n in self.ids if self.state(n, group) in (State.BACKUP, State.MASTER)]
        return min(alive, key=lambda n: self.priority(n, group))

    def timing(self, n: int, group: str) -> tuple[float, float]:
        """(interval, skew) of a node's group, in seconds."""
        g = self.nodes[n].node.election.groups[group]
        return g.interval, g.skew

    def changes(self, since: float = 0.0) -> list[Transition]:
        return [t for t in self.transitions if t.time > since]

    def timeline(self, since: float = 0.0, limit: int = 60) -> str:
        lines = [f"  {t.time:10.4f}s node {t.node} {t.group}: {t.old.value} -> {t.new.value} ({t.reason})"
                 for t in self.changes(since)]
        if len(lines) > limit:
            lines = lines[:limit // 2] + [f"  ... {len(lines) - limit} more ..."] + lines[-limit // 2:]
        states = ", ".join(f"{g}: masters {self.masters(g)} holders {sorted(self.holders(g))}"
                           for g in self.group_names())
        return f"at {self.now:.4f}s {states}\nstate changes:\n" + ("\n".join(lines) or "  (none)")

    # ================================================================== queries: state mesh

    def alive(self) -> list[int]:
        return [n for n in self.ids if self.nodes[n].alive]

    def in_sync(self, n: int) -> bool:
        return self.nodes[n].in_sync()

    def differences(self, own: bool | None = True, kernels: bool | None = None) -> list[str]:
        """What keeps the mesh from being converged (empty when it is).

        Always: every live node's external cache of every live peer equals
        that peer's internal cache.
        own: each live node's internal cache equals the flows through it (its
            `kernel.local`, the entries small enough for a frame); False: holds
            at least those (after a takeover from a live node, both claim the
            flows); None: not checked.
        kernels: each live node's kernel has an entry for every flow through
            every live node (default: when that node's commit is "continuous").
        """
        out = []
        alive = [n for n in self.alive() if self.nodes[n].node.sync is not None]
        for x in alive:
            node = self.nodes[x]
            cx = node.node.sync
            internal = dict(cx.dump_internal())
            fits = {k: a for k, a in node.kernel.local.items() if len(k) + len(a) <= cx.internal.max_record}
            if own and internal != fits:
                out.append(f"node {x}: internal cache differs from the flows through it "
                           f"({len(internal)} vs {len(fits)})")
            elif own is False and any(internal.get(k) != a for k, a in fits.items()):
                out.append(f"node {x}: internal cache lacks flows through it")
            for y in alive:
                check = kernels if kernels is not None else self.nodes[y].config.sync.commit == "continuous"
                if check and y != x:
                    table = self.nodes[y].kernel.table
                    lacking = sum(1 for k in fits if k not in table)
                    if lacking:
                        out.append(f"node {y}'s kernel lacks {lacking} of the {len(fits)} flows through node {x}")
                if y == x or x not in self.nodes[y].node.sync.peers:
                    continue
                ext = self.nodes[y].node.sync.peers[x].ext
                if ext.digests != cx.internal.digests or len(ext) != len(cx.internal):
                    theirs = dict(self.nodes[y].node.sync.dump_external(x))
                    missing = len(internal.keys() - theirs.keys())
                    extra = len(theirs.keys() - internal.keys())
                    stale = sum(1 for k in internal.keys() & theirs.keys() if internal[k] != theirs[k])
                    out.append(f"node {y}'s copy of {x}: {missing} missing, {extra} extra, "
                               f"{stale} stale of {len(internal)}")
        return out

    def converged(self, own: bool = True, kernels: bool | None = None) -> bool:
        alive = [n for n in self.alive() if self.nodes[n].node.sync is not None]
        for x in alive:
            internal = self.nodes[x].node.sync.internal
            for y in alive:
                if y != x and x in self.nodes[y].node.sync.peers:
                    ext = self.nodes[y].node.sync.peers[x].ext
                    if ext.digests != internal.digests or len(ext) != len(internal):
                        return False
        # Digests equal: confirm entry by entry (a digest could in theory collide).
        return not self.differences(own, kernels)

    def quiet(self) -> bool:
        """Converged, and nothing left to repair: no missing frames, no pending work."""
        if not self.converged():
            return False
        for n in self.alive():
            for p in self.nodes[n].node.sync.peers.values():
                if self.nodes[p.id].alive and (p.rx_direct.missing or p.rx_mcast.missing
                                               or p.pending_sweeps or p.repairs):
                    return False
        return True
