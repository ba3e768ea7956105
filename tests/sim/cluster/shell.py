"""The simulated shell of one node: its NodeCore's actions carried out as the
daemon's shells carry them out (meshd/daemon.py, election/shell.py,
sync/shell.py, health/shell.py), against the simulated network and kernel.

What each action does here, and where the real one is:

* SendAdvert, AddAddresses, RemoveAddresses, Announce, RunNotify, CommitFlows,
  WaitApplied: on the group's executor, one group's actions strictly in order,
  groups independent (election/shell.py GroupExecutor).  The executor runs as
  its own event, after the input that queued the actions, as a trio task
  runs after the task that fed it.  CommitFlows takes len(entries) /
  commit_rate seconds, then the entries are in the table and
  `takeover_committed` is called; WaitApplied waits (polling each 1 ms, at
  most its limit) until the applier has nothing left; AddAddresses is
  followed by `addresses_added`.
* SendFrame: sent at once (the sync shell's `send_frames`, called from dispatch).
* ExternalChanged: queued for the applier, which takes up to APPLY_BATCH
  changes, asks `kernel_changes` what goes into the kernel and writes it in
  chunks of APPLY_CHUNK, each taking its length / apply_rate seconds.
* DumpKernel: one dump at a time; `kernel_table` gets the table len / dump_rate
  seconds later, and the next dump waits for KernelResynced.  At start with
  commit = "takeover" the node starts once the start dump is diffed.
* StartCheck: answered from `up` / `errors` after `check_latency`; an address in
  `hung` never answers.  CancelCheck drops the answer.
* Everything else is recorded in `log` as (time, action).

The node's timer runs at `next_deadline()`, re-queried after every input; a
stale timer event is ignored through a token.  Not modelled: the election
shell reading queued adverts before a due deadline (ReadFirst: there is no
socket buffer here, a datagram is handled when it arrives), address
lifetimes (a killed node's addresses count as gone at once), hooks.
"""

from __future__ import annotations

import random
from collections import deque

from meshd.daemon import SYNC_REPLAY_WINDOW
from meshd.election.actions import (
    AddAddresses,
    AdvertRejected,
    Announce,
    RemoveAddresses,
    RunNotify,
    SendAdvert,
    StateChanged,
)
from meshd.health.actions import CancelCheck, StartCheck
from meshd.health.checkspec import CheckOutcome
from meshd.kernel import ctnetlink as ct
from meshd.node.actions import CommitFlows, DumpKernel, KernelResynced, WaitApplied
from meshd.node.core import NodeCore
from meshd.reload import keys_changed, plan_reload
from meshd.replay import ReplayGuard
from meshd.sync.actions import ExternalChanged, SendFrame
from meshd.sync.shell import APPLY_BATCH, APPLY_CHUNK

from .configs import address, parse
from .kernel import SimKernel
from .network import ADVERT, FRAME, Datagram

EXECUTOR_ACTIONS = (SendAdvert, AddAddresses, RemoveAddresses, Announce, RunNotify, CommitFlows,
                    WaitApplied)
WAIT_POLL = 0.001             # s, as SyncShell._wait_applied
SPIN_LIMIT = 100_000          # timer firings at one instant before the simulation calls it a spin


class SimNode:
    """One node: its configuration, NodeCore, kernel and shell state.

    Args:
        cluster: the Cluster it belongs to.
        node_id: the node's id (its address is configs.address(node_id)).
        text: its configuration file.
        secrets: the key files' contents.
    """

    def __init__(self, cluster, node_id: int, text: str, secrets: dict[int, bytes] | None = None):
        self.cluster = cluster
        self.id = node_id
        self.text = text
        self.config = parse(text, secrets, f"node{node_id}.toml")
        self._configure()
        self.node: NodeCore | None = None
        self.alive = False
        self.started = False
        self.epoch = 0                            # the persisted boot epoch
        self.down_at: float | None = None         # when it was last killed or stopped
        self.election_marks: dict = {}            # the replay marks persisted at the last stop
        self.sync_marks: dict = {}
        self.kernel = SimKernel(cluster.flows)
        self.links: dict[str, bool] = {}          # interface -> up (absent: up)
        self.up: dict[str, bool] = {}             # backend address -> answers its checks
        self.errors: dict[str, str] = {}
        self.hung: set[str] = set()
        self.check_latency = cluster.check_latency
        self.log: list[tuple[float, object]] = []
        self.masters_heard: dict[str, int | None] = {}
        self.incarnation = 0                      # events of an earlier life are ignored
        self.timer_token = 0
        self.timer_at: float | None = None
        self._spin_at, self._spins = None, 0
        self._reset_shell()

    def _reset_shell(self) -> None:
        self.queues: dict[str, deque] = {}
        self.running: set[str] = set()            # groups whose executor is scheduled or busy
        self.apply_queue: list = []
        self.apply_chunks: deque = deque()
        self.applying = False
        self.dump_requests: list[str] = []
        self.dumping = False
        self.cancelled: set[int] = set()

    def _configure(self) -> None:
        """What the shells derive from the configuration (at start and reload)."""
        cfg = self.config
        self.group_ids = {g.id for g in cfg.groups}
        self.interface_of = {g.id: g.interface for g in cfg.groups}
        self.peer_by_address = {p.address: p.id for p in cfg.sync.peers} if cfg.sync else {}

    def __repr__(self) -> str:
        return f"<SimNode {self.id} {'alive' if self.alive else 'down'} epoch {self.epoch}>"

    # ================================================================== lifecycle

    def start(self, epoch: int | None = None, restore_replay: bool = True) -> None:
        """The daemon starts: a new NodeCore with the next epoch and the persisted marks."""
        now = self.cluster.now
        self.epoch = self.epoch + 1 if epoch is None else epoch
        election_replay = ReplayGuard()
        sync_replay = ReplayGuard(window=SYNC_REPLAY_WINDOW) if self.config.sync else None
        if restore_replay:
            election_replay.restore(self.election_marks)
            if sync_replay is not None:
                sync_replay.restore(self.sync_marks)
        rng = random.Random(self.cluster.seed * 7919 + self.id * 104729 + self.epoch)
        self.node = NodeCore(self.config, self.epoch, election_replay=election_replay,
                             sync_replay=sync_replay, rng=rng)
        self.alive, self.started = True, False
        self.incarnation += 1
        self._reset_shell()
        # The election shell's prepare: no address left from an earlier life, the links' state.
        for g in self.config.groups:
            self.kernel.remove_addresses(now, g.name, g.addresses)
        for name in self._watched_interfaces():
            self.dispatch(self.node.link(name, self.links.get(name, True), now))
        if self.node.flows is not None:
            self.node.flows.filter.set_local_addresses(self._own_addresses())
        if self.config.sync is not None and self.config.sync.commit != "continuous":
            # The internal cache is built from the table first (sync/shell.py `run`).
            self.request_dump("start")
        else:
            self._finish_start()

    def _finish_start(self) -> None:
        self.started = True
        self.dispatch(self.node.start(self.cluster.now))

    def kill(self) -> None:
        """SIGKILL or power loss: no bow-out; the addresses count as gone at once."""
        now = self.cluster.now
        groups = set(self.kernel.addresses.values())
        for group in groups:
            self.kernel.remove_addresses(now, group, [a for a, g in self.kernel.addresses.items() if g == group])
        self._down()
        for group in sorted(groups):
            self.cluster.on_addresses_removed(self, group)

    def stop(self) -> None:
        """Graceful stop: the bow-out and the address removals are carried out first."""
        self.dispatch(self.node.shutdown(self.cluster.now, "shutting down (simulated stop)"))
        inc = self.incarnation
        for group in list(self.queues):
            self._run_group(group, inc)
        self.kill()

    def _down(self) -> None:
        # The daemon persists its replay marks; assume the last ones reached the disk.
        self.election_marks = self.node.election.replay.snapshot()
        if self.node.sync is not None:
            self.sync_marks = self.node.sync.replay.snapshot()
        self.alive = self.started = False
        self.down_at = self.cluster.now
        self.incarnation += 1
        self.timer_token += 1
        self.timer_at = None
        self._reset_shell()

    def reload(self, text: str, secrets: dict[int, bytes] | None = None) -> list:
        """A reload as Daemon._reload applies it; the node core's actions.

        Raises AssertionError for a file meshd/reload.py would refuse.
        """
        old = self.config
        new = parse(text, secrets if secrets is not None else old.secrets, old.path)
        plan = plan_reload(old, new)
        assert not plan.refusals, plan.refusals
        if not plan.changes:
            return []
        self.text, self.config = text, new
        self._configure()
        actions = self.node.reconfigure(old, new, keys_changed(old, new), self.cluster.now)
        self.dispatch(actions)
        if self.node.flows is not None:
            self.node.flows.filter.set_local_addresses(self._own_addresses())
        return actions

    def _watched_interfaces(self) -> list[str]:
        names = {g.interface for g in self.config.groups}
        names.update(t.interface for t in self.config.track_interfaces)
        return sorted(names)

    def _own_addresses(self) -> set[str]:
        return {a.split("/")[0] for g in self.config.groups for a in g.addresses} | {address(self.id)}

    # ================================================================== inputs

    def receive_advert(self, data: bytes, src: int) -> list:
        if not self.started:
            return []               # the election's sockets are read once the node started
        gid = int.from_bytes(data[2:4], "big") if len(data) >= 4 else 0
        if self.cluster.audit:
            self._note_masters()
        actions = self.node.advert(data, address(src), self.cluster.now, ttl=255,
                                   interface=self.interface_of.get(gid))
        self.dispatch(actions)
        return actions

    def _note_masters(self) -> None:
        """Which node each group took for its master before this input (the audit's
        "taken over from"): a takeover follows an advert or a timer."""
        self.masters_heard = {name: g.master_node for name, g in self.node.election.groups.items()}

    def receive_frame(self, data: bytes, src: int | None, hint: int | None = -1) -> list:
        if self.node.sync is None:
            return []
        source = address(src) if src is not None else None
        if hint == -1:
            hint = self.peer_by_address.get(source) if src is not None else None
            if hint is None and src is not None and self.node.discovery is not None:
                hint = self.node.discovery.addresses().get(source)   # discovered, as SyncShell
        actions = self.node.frame(data, hint, self.cluster.now, source)
        self.dispatch(actions)
        return actions

    def kernel_events(self, burst: list) -> None:
        """Conntrack events read from the kernel (the table is already changed)."""
        if self.alive and self.node.flows is not None:
            self.dispatch(self.node.kernel_events(burst, self.cluster.now))

    def call(self, method: str, *args, **kw) -> list:
        """Any other NodeCore input, `now` appended; its actions, carried out."""
        actions = getattr(self.node, method)(*args, self.cluster.now, **kw)
        self.dispatch(actions)
        return actions

    # ================================================================== actions

    def dispatch(self, actions: list) -> None:
        """Each action to its shell, as Daemon.dispatch does; then the timer."""
        now = self.cluster.now
        log = self.log
        for a in actions:
            t = type(a)
            if t is SendFrame:
                self._send_frame(a)
                continue
            if t in EXECUTOR_ACTIONS:
                self._submit(a)
                continue
            log.append((now, a))
            if t is ExternalChanged:
                self.apply_queue.append(a)
                if not self.applying:
                    self.applying = True
                    self.cluster.at(now, self._apply_batch, self.incarnation)
            elif t is StartCheck:
                if a.target.address not in self.hung:
                    self.cluster.at(now + self.check_latency, self._check_result, a.check_id,
                                    a.target, self.incarnation)
            elif t is CancelCheck:
                self.cancelled.add(a.check_id)
            elif t is StateChanged:
                self.cluster.on_transition(self, a)
            elif t is AdvertRejected:
                self.cluster.rejections.append((now, self.id, a.reason))
            elif t is DumpKernel:
                self.request_dump(a.reason)
            elif t is KernelResynced:
                self.dumping = False
                if not self.started and a.reason == "start":
                    self._finish_start()
                self._next_dump()
        self.rearm()

    # ------------------------------------------------------------ executors

    def _submit(self, a) -> None:
        q = self.queues.get(a.group)
        if q is None:
            q = self.queues[a.group] = deque()
        q.append(a)
        if a.group not in self.running:
            self.running.add(a.group)
            self.cluster.at(self.cluster.now, self._run_group, a.group, self.incarnation)

    def _run_group(self, group: str, inc: int) -> None:
        """Carry out the group's queued actions until one has to wait."""
        if inc != self.incarnation:
            return
        q = self.queues[group]
        cluster = self.cluster
        while q:
            a = q.popleft()
            t = type(a)
            if t is SendAdvert:
                self._send_advert(a)
            elif t is AddAddresses:
                self.kernel.add_addresses(cluster.now, group, a.addresses, cluster.audit)
                reached = cluster.on_addresses_added(self, group)
                self.dispatch(self.node.addresses_added(group, cluster.now))
                if reached:
                    cluster.move_traffic(self, group)
            elif t is RemoveAddresses:
                if self.kernel.remove_addresses(cluster.now, group, a.addresses):
                    cluster.on_addresses_removed(self, group)
            elif t is CommitFlows:
                self.log.append((cluster.now, a))
                cluster.at(cluster.now + len(a.entries) / cluster.commit_rate, self._committed, a, inc)
                return
            elif t is WaitApplied:
                self.log.append((cluster.now, a))
                self._wait_applied(a, cluster.now, inc)
                return
            else:                                   # Announce, RunNotify: for the record
                self.log.append((cluster.now, a))
        self.running.discard(group)

    def _committed(self, a: CommitFlows, inc: int) -> None:
        if inc != self.incarnation:
            return
        self.kernel.inject(a.entries)
        self.dispatch(self.node.takeover_committed(a.group, self.cluster.now))
        self._run_group(a.group, inc)

    def _wait_applied(self, a: WaitApplied, since: float, inc: int) -> None:
        if inc != self.incarnation:
            return
        now = self.cluster.now
        if self.applying and now - since < a.limit_s:
            self.cluster.at(now + WAIT_POLL, self._wait_applied, a, since, inc)
            return
        self.dispatch(self.node.takeover_committed(a.group, now))
        self._run_group(a.group, inc)

    def _send_advert(self, a: SendAdvert) -> None:
        group = self.node.election.groups.get(a.group)
        cfg = a.config or (group.config if group else None)
        if cfg is None:
            return
        nodes = self.cluster.nodes
        if cfg.peers:
            by_address = self.cluster.node_by_address
            targets = [by_address[p] for p in cfg.peers if p in by_address]
        else:
            targets = [n for n, other in nodes.items() if n != self.id and cfg.id in other.group_ids]
        self.cluster.network.send(self.id, targets, Datagram(self.cluster.now, self.id, ADVERT, a.data,
                                                             group_id=cfg.id, bowout=a.bowout))

    # ------------------------------------------------------------ the state mesh

    def _send_frame(self, a: SendFrame) -> None:
        s = self.config.sync
        cluster = self.cluster
        if a.peer is None and s.multicast_group:
            targets = [n for n, o in cluster.nodes.items() if n != self.id and o.config.sync
                       and o.config.sync.multicast_group == s.multicast_group]
        elif a.peer is None:
            by_address = cluster.node_by_address
            targets = [by_address[p.address] for p in s.peers if p.address in by_address]
            d = self.node.discovery
            if d is not None:          # the peers found by discovery, as SyncShell.send
                targets += [by_address[ad] for pid, ad in d.peer_address.items()
                            if pid in self.node.sync.peers and ad in by_address]
        else:
            peer = s.peer(a.peer)
            where = [peer.address] if peer and peer.address else []
            d = self.node.discovery
            if not where and d is not None:
                where = [d.peer_address[a.peer]] if a.peer in d.peer_address else \
                    d.candidate_addresses(a.peer)
            targets = [cluster.node_by_address[ad] for ad in where if ad in cluster.node_by_address]
        cluster.network.send(self.id, targets, Datagram(cluster.now, self.id, FRAME, a.data, peer=a.peer))

    def _apply_batch(self, inc: int) -> None:
        """The applier (commit = "continuous"): the peers' changes into the kernel."""
        if inc != self.incarnation:
            return
        batch, self.apply_queue = self.apply_queue[:APPLY_BATCH], self.apply_queue[APPLY_BATCH:]
        upserts, deletes, _exp_upserts, _exp_deletes = self.node.kernel_changes(batch)   # no helpers here
        for lo in range(0, len(deletes), APPLY_CHUNK):
            self.apply_chunks.append((self.kernel.delete, deletes[lo:lo + APPLY_CHUNK]))
        for lo in range(0, len(upserts), APPLY_CHUNK):
            self.apply_chunks.append((self.kernel.inject, upserts[lo:lo + APPLY_CHUNK]))
        self.apply_chunks.append((self._batch_applied, ()))     # then the node is told
        self._apply_next(inc)

    def _batch_applied(self, _entries) -> None:
        self.node.kernel_changes_applied()

    def _apply_next(self, inc: int) -> None:
        if self.apply_chunks:
            _, entries = self.apply_chunks[0]
            self.cluster.at(self.cluster.now + len(entries) / self.cluster.apply_rate,
                            self._apply_chunk, inc)
        elif self.apply_queue:
            self.cluster.at(self.cluster.now, self._apply_batch, inc)
        else:
            self.applying = False

    def _apply_chunk(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        operation, entries = self.apply_chunks.popleft()
        operation(entries)
        self._apply_next(inc)

    def request_dump(self, reason: str) -> None:
        """Dump the table for `kernel_table` (after the dump in progress, if any)."""
        self.dump_requests.append(reason)
        self._next_dump()

    def _next_dump(self) -> None:
        if self.dumping or not self.dump_requests:
            return
        self.dumping = True
        reason = self.dump_requests.pop(0)
        self.cluster.at(self.cluster.now + len(self.kernel.table) / self.cluster.dump_rate,
                        self._dump, reason, self.incarnation)

    def _dump(self, reason: str, inc: int) -> None:
        if inc != self.incarnation:
            return
        self.node.kernel_dump_started(self.cluster.now)
        self.dispatch(self.node.kernel_table(self.kernel.dump(), reason, self.cluster.now))

    # ------------------------------------------------------------ health

    def _check_result(self, check_id: int, target, inc: int) -> None:
        if inc != self.incarnation or check_id in self.cancelled:
            return
        addr = target.address
        if self.up.get(addr, True):
            outcome = CheckOutcome(True, self.check_latency)
        else:
            outcome = CheckOutcome(False, self.check_latency, self.errors.get(addr, "connect refused"))
        self.dispatch(self.node.check_done(check_id, outcome, self.cluster.now))

    # ================================================================== the timer

    def rearm(self) -> None:
        if not self.alive:
            return
        deadline = self.node.next_deadline()
        if deadline == self.timer_at:
            return
        self.timer_token += 1
        self.timer_at = deadline
        if deadline is not None:                  # -inf (a step due at once): at() makes it now
            self.cluster.at(deadline, self._fire, self.timer_token)

    def _fire(self, token: int) -> None:
        if not self.alive or token != self.timer_token:
            return
        now = self.cluster.now
        if now == self._spin_at:
            self._spins += 1
            assert self._spins < SPIN_LIMIT, f"node {self.id}: its timer spins at {now}"
        else:
            self._spin_at, self._spins = now, 0
        self.timer_at = None
        if self.cluster.audit:
            self._note_masters()
        self.dispatch(self.node.handle_timer(now))

    # ================================================================== queries

    @property
    def election(self):
        return self.node.election

    @property
    def sync(self):
        return self.node.sync

    @property
    def health(self):
        return self.node.health

    def of(self, kind, since: float = -1.0) -> list:
        """The recorded actions of a type (or tuple of types), oldest first."""
        return [a for t, a in self.log if isinstance(a, kind) and t >= since]

    def timed(self, kind, since: float = -1.0) -> list[tuple[float, object]]:
        """(time, action) of the recorded actions of a type, oldest first."""
        return [(t, a) for t, a in self.log if isinstance(a, kind) and t >= since]

    def in_sync(self) -> bool:
        return bool(self.alive and self.node.sync is not None and self.node.sync.in_sync)


def ct_update(flows, key: bytes) -> ct.CtEvent:
    """An UPDATE event with the flow's next version (a packet refreshed it)."""
    return flows.event(ct.UPDATE, flows.next_version(key))
