"""The state mesh's trio shell: kernel events in, frames out, the kernel kept in step.

Tasks (all in the daemon's nursery):
- the conntrack event reader puts one list per burst on a bounded channel;
  the consumer feeds each burst to the node core in one call; an Overrun
  marker makes it dump the table (in a thread) for the node core to diff,
  and it waits while a diff runs (the bounded channel then pushes back on
  the reader, as the kernel's buffer does);
- the wire engine (its own process) hands the frames it let through to
  `frame_in`;
- with `[sync] discover`, the DNS-SD announcer and browser (meshd/sync/mdns.py):
  announcements to the node core's DiscoveryTable; frames go to the peers it
  found (and heartbeats to its candidates), and the flood guard admits them;
- with `commit = "continuous"`, an applier injects the peers' changes into
  the kernel in chunks as they arrive, so a takeover has nothing to commit;
- with backup paths ([sync] peers' `addresses`), frames to a peer go over
  the path the PathTable (meshd/sync/paths.py) chooses, heartbeats over
  every path, and what the wire engine forwards from each path is reported
  to the table.

The committer's socket is registered with the reader: events caused by our
own injections are dropped there, never sent back out.

Must not: decide which events are replicated, what a takeover commits or
adopts, or which peer changes reach the kernel: the node core does
(meshd/node/flows.py, node/takeover.py).
"""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
import struct
import time
from typing import Any

import trio

from ..commands import ControlError
from ..config import Config
from ..floodguard import FloodGuard
from ..histogram import COMMIT_BUCKETS, Histogram
from ..kernel import conntrack as kct
from ..kernel import ctnetlink as ct
from ..kernel import sockfilter
from ..kernel.udp import bind_exclusive
from ..log import RejectLog
from ..node.actions import (
    CommitFlows,
    DumpKernel,
    FlowsAdopted,
    FlowsNotAdopted,
    KernelResynced,
    TakeoverSkipped,
    WaitApplied,
)
from .actions import ExternalChanged, FrameRejected, PeerChanged, SendFrame, SyncState
from .frames import FrameType
from .paths import PathSwitch, PathTable
from .sender import DatagramSender

# What sendto says when no route leads to an address (its link is down here):
# that path is down at once (paths.unreachable).
NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})
HEARTBEAT = int(FrameType.HEARTBEAT)    # the type byte (data[1]) of a heartbeat, on the hot path
EVENT_QUEUE_BURSTS = 256      # bursts of up to 256 events buffered between reader and core
APPLY_BATCH = 4096
APPLY_CHUNK = 512             # entries committed per step of the apply loop
DUMP_CHECKPOINT = 1000        # entries streamed between two checkpoints
# What a commit into the kernel was for: a takeover's (commit = "takeover"),
# meshctl commit's, and the continuous applier's batches.
COMMIT_KINDS = ("takeover", "operator", "continuous")


class SyncShell:
    """The state mesh of one node under trio.

    Args:
        config: the running configuration (replaced by `reconfigure`).
        node: the NodeCore (its `sync` and `flows` answer the operator's questions).
        dispatch: the daemon's router for actions the node returns.
        log: the event logger.
    """

    def __init__(self, config: Config, node, dispatch, log):
        self.config = config
        self.sync = config.sync
        self.node = node
        self.dispatch = dispatch
        self.log = log
        self.reject_log = RejectLog(log, "sync_frame_rejected")
        # Redundant paths (meshd/sync/paths.py): which one each peer's frames go over.
        self.paths = PathTable(self.sync.path_timeout_ms / 1000, self.sync.path_return_ms / 1000)
        self.probe_errors = 0             # heartbeats that could not go out on a path not in use
        self._set_peers(self.sync, None)
        self.guard = FloodGuard()         # under a flood of refused frames: peers only (meshd/floodguard.py)
        self._peer_hints: dict[str, int | None] = {}   # source address as received -> peer id
        # Discovery (node.discovery, meshd/sync/discovery.py): its addresses as of
        # its version; candidates' announced ones only for the hints.
        self._discovery_version = -1
        self._discovered_hints: dict[str, int] = {}
        self.announcer = None             # meshd/sync/mdns.py, when [sync] discover
        self.guard.set_known(self._known())
        self.family = socket.AF_INET6 if self.sync.family == 6 else socket.AF_INET
        self.sock: trio.socket.SocketType | None = None
        self.committer: kct.CtCommitter | None = None
        self.reader: kct.CtEventReader | None = None
        self.last_commit: dict = {}
        # Kernel time of each commit, by kind (COMMIT_KINDS): meshd_sync_commit_duration_seconds.
        self.commit_seconds = {kind: Histogram(COMMIT_BUCKETS) for kind in COMMIT_KINDS}
        self.send_errors = 0
        self._sender: DatagramSender | None = None     # made for the socket in use
        self.nursery: trio.Nursery | None = None
        self._apply_send, self._apply_receive = trio.open_memory_channel(math.inf)
        self._commit_lock = trio.Lock()
        self._apply_pending = 0          # changes taken from the apply queue, not yet committed
        self._dump_lock = trio.Lock()    # one kernel dump (and its diff) at a time
        self._resynced = trio.Event()    # set when the node core reports the diff done

    # ------------------------------------------------------------------ start

    def open(self) -> None:
        """Sockets first (errors here stop the start-up with a clear message).

        Raises OSError: a netlink or UDP socket that cannot be opened, bound or
        joined (no CAP_NET_ADMIN, the port taken, no such interface).
        """
        self.committer = kct.CtCommitter(log=self.log)
        self.reader = kct.CtEventReader(rcvbuf=self.sync.event_buffer_bytes,
                                        own_portids={self.committer.portid}, log=self.log)
        s = trio.socket.socket(self.family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        if self.sync.interface and not self.sync.multipath:
            # A backup path arrives on another interface: with one, the socket
            # listens on every interface (the frames' tags say who sent them).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.sync.interface.encode())
        # No SO_REUSEADDR/SO_REUSEPORT: no other socket, a local user's included, may
        # share the port and take frames meant for meshd (meshd/kernel/udp.py).
        bind_exclusive(s._sock, ("::" if self.family == socket.AF_INET6 else "0.0.0.0", self.sync.port))
        if self.sync.multicast_group:
            index = socket.if_nametoindex(self.sync.interface)
            group = ipaddress.ip_address(self.sync.multicast_group).packed
            if self.family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                             group + struct.pack("=4si", b"\0" * 4, index))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                # Not bound to the interface (multipath): the group is sent on it all the same.
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=4s4si", b"\0" * 4,
                                                                                     b"\0" * 4, index))
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("=I", index))
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        self.sock = s

    def set_local_addresses(self, addresses: set[str]) -> None:
        """The node's own and virtual addresses: flows to them are not replicated."""
        self.node.flows.filter.set_local_addresses(addresses)

    async def run(self, nursery: trio.Nursery) -> None:
        """The tasks; with commit = "takeover", the internal cache is first built
        from the kernel's table (as after an overrun), before the node starts."""
        self.nursery = nursery
        events_send, events_receive = trio.open_memory_channel(EVENT_QUEUE_BURSTS)
        nursery.start_soon(self.reader.run, events_send)
        nursery.start_soon(self._consume_events, events_receive)
        nursery.start_soon(sockfilter.guard_clock, self.guard, self._apply_guard)
        nursery.start_soon(self._apply_loop)
        if self.sync.discover and self.node.discovery is not None:
            self._start_announcer(nursery)
        if self.sync.commit != "continuous":
            await self.resync_from_kernel("start")

    def _start_announcer(self, nursery: trio.Nursery) -> None:
        from .. import __version__
        from ..node.core import discovery_fingerprints
        from .mdns import Announcer
        cfg = self.config
        local = set()
        for g in cfg.groups:                  # never announce a virtual address
            local |= {a.split("/", 1)[0] for a in getattr(g, "addresses", ())}
        self.announcer = Announcer(
            self.node, self.dispatch, self.log, node_id=cfg.node.id, name=cfg.node.name,
            port=self.sync.port, fingerprint=discovery_fingerprints(cfg)[0], version=__version__,
            interface=self.sync.interface, family=self.sync.family, exclude=local,
            on_change=self.discovery_changed)
        nursery.start_soon(self.announcer.run)

    def discovery_changed(self) -> None:
        """After an input the DiscoveryTable may have decided on (an announcement,
        a frame that promoted a candidate): the hints and the flood guard's
        admitted senders follow.  Cheap when nothing changed."""
        d = self.node.discovery
        if d is None or d.version == self._discovery_version:
            return
        self._discovery_version = d.version
        self._discovered_hints = d.addresses()
        self._peer_hints.clear()
        if self.guard.set_known(self._known()) and self.sock is not None:
            self._apply_guard()               # engaged: a newly proven peer is admitted now

    def _known(self) -> dict[str, int]:
        """The senders the flood guard admits: configured peers, and the peers
        discovery found once they proved the key (never mere candidates)."""
        known = dict(self.peer_by_address)
        d = self.node.discovery
        if d is not None:
            for address, pid in d.peer_addresses().items():
                known.setdefault(address, pid)
        return known

    def _set_peers(self, sync, now: float | None) -> None:
        """The configured peers' paths: every address of a peer is its (for the
        hints and the flood guard); the path table follows."""
        self.peer_by_address = {_norm(a): p.id for p in sync.peers for a in p.paths if a}
        self._multipath = {p.id for p in sync.peers if p.backups}
        self._path_hints: dict[str, int | None] = {}
        self._path_at = {_norm(a): (p.id, i) for p in sync.peers if p.backups for i, a in enumerate(p.paths)}
        self.paths.set_timers(sync.path_timeout_ms / 1000, sync.path_return_ms / 1000)
        self.paths.configure({p.id: tuple(_norm(a) for a in p.paths) for p in sync.peers}, now)

    def path_counts(self) -> dict[int, tuple[int, int]]:
        """(path in use, switches) of each peer with more than one path: the metrics'."""
        switches = self.paths.switches()
        return {pid: (self.paths.active(pid), switches[pid]) for pid in self._multipath}

    def _targets(self, peer: int | None) -> list[str]:
        """Where a frame goes: the multicast group, every peer, or one peer
        (configured address first, on the path in use; a discovered peer's
        proven address; a candidate's announced ones, at most MAX_ADDRESSES).
        With multicast, a peer whose path in use is not the first (the link
        the group is joined on) gets a unicast copy over the one it uses, and
        the group nothing while no peer is on that link."""
        d = self.node.discovery
        paths = self.paths
        if peer is None:
            if self.sync.multicast_group:
                away = [paths.address(pid) for pid in self._multipath if paths.active(pid)]
                if len(away) == len(self.sync.peers):
                    return away               # nobody left on the group's link
                return [self.sync.multicast_group] + away
            targets = [paths.address(p.id) for p in self.sync.peers if p.address]
            if d is not None:
                configured = set(self.peer_by_address)
                targets += [a for a in d.peer_addresses() if a not in configured]
            return targets
        p = self.sync.peer(peer)
        if p is not None and p.address:
            return [paths.address(peer)]
        if d is None:
            return []
        if peer in d.peer_address and peer in self.node.sync.peers:
            return [d.peer_address[peer]]
        return d.candidate_addresses(peer) if peer in self.node.sync.candidates else []

    # --------------------------------------------------------------- actions

    def carry_out(self, a: Any) -> None:
        """An action of the node core for this shell (SendFrame goes to `send`)."""
        if isinstance(a, ExternalChanged):
            self._apply_send.send_nowait(a)
        elif isinstance(a, DumpKernel):
            self.nursery.start_soon(self.resync_from_kernel, a.reason)
        elif isinstance(a, KernelResynced):
            self.log("ct_resync", reason=a.reason, entries=a.entries, kernel_entries=a.kernel_entries,
                     ms=round(a.seconds * 1000, 1))
            self._resynced.set()
        elif isinstance(a, SyncState):
            self.log("sync_state", in_sync=a.in_sync, reason=a.reason)
        elif isinstance(a, PeerChanged):
            # A bulk that does not finish is the operator's business (docs/operation.md).
            level = "warning" if a.state in ("bulk retry", "out of sync") else "info"
            self.log("sync_peer", level=level, peer=a.peer, state=a.state, reason=a.reason)
        elif isinstance(a, FrameRejected):
            # Bounded per reason, whatever the sources (a flood of forgeries): meshd/log.py.
            self.reject_log(a.reason, trio.current_time(), a.count, detail=a.detail, peer=a.peer)
        elif isinstance(a, FlowsAdopted):
            self.log("flows_adopted", entries=a.entries, ms=round(a.seconds * 1000, 1))
        elif isinstance(a, FlowsNotAdopted):
            self.log("flows_not_adopted", group=a.group, peer=a.peer, reason=a.reason)
        elif isinstance(a, TakeoverSkipped):
            self.log("takeover_commit", group=a.group, from_node=a.from_node, committed=0,
                     reason=a.reason)

    def send(self, frame: SendFrame) -> None:
        """Send one frame (send_frames says how)."""
        self.send_frames((frame,))

    def send_frames(self, frames) -> None:
        """Send frames, each to the multicast group, to every peer, or to one peer.

        The datagrams of all of them go in one batch (one sendmmsg with the
        accelerator, meshd/sync/sender.py), in order: each frame's to its
        targets, then a heartbeat's probes. The targets are chosen before the
        batch goes, so a path found without a route is left from the next
        batch on.

        Never raises: a failed send is counted and logged (the 1st, 10th,
        100th and every 1000th), since the reliability layer resends what a
        peer reports missing.
        """
        datagrams: list[tuple[bytes, str]] = []
        probes_from = []            # (first probe's position, end) per heartbeat with probes
        for frame in frames:
            data = frame.data
            for address in self._targets(frame.peer):
                datagrams.append((data, address))
            if self._multipath and data[1] == HEARTBEAT:
                first = len(datagrams)
                datagrams += [(data, address) for address in self._probe_targets(frame)]
                probes_from.append((first, len(datagrams)))
        if not datagrams:
            return
        sender = self._sender
        if sender is None or sender.sock is not self.sock._sock:
            sender = self._sender = DatagramSender(self.sock._sock, self.family)
        for i, e in sender.send(datagrams, self.sync.port):
            address = datagrams[i][1]
            if any(a <= i < b for a, b in probes_from):
                # A heartbeat over a path not in use: a path that is down, which
                # the switch has said already: counted, not logged.
                self.probe_errors += 1
                if e.errno in NO_ROUTE:
                    self._no_route(address)
                continue
            # A full socket buffer or a down link: the reliability layer
            # resends what the peer reports missing, so count and go on.
            if e.errno in NO_ROUTE and address in self._path_at:
                self._no_route(address)
            self.send_errors += 1
            if self.send_errors in (1, 10, 100) or self.send_errors % 1000 == 0:
                self.log("sync_send_failed", level="warning", peer=address,
                         error=e.strerror or str(e), total=self.send_errors)

    def _probe_targets(self, frame: SendFrame) -> list[str]:
        """A heartbeat goes over every path to a peer, not only the one in use:
        that is how the peer judges the others (and a copy that arrives twice
        is counted as a copy, sync/core.py)."""
        peers = self._multipath if frame.peer is None else \
            (frame.peer,) if frame.peer in self._multipath else ()
        return [address for pid in peers for address in self.paths.others(pid)]

    def _no_route(self, address: str) -> None:
        pid, index = self._path_at[address]
        switch = self.paths.unreachable(pid, index, trio.current_time())
        if switch is not None:
            self._switched(switch)

    async def commit_for_takeover(self, a: CommitFlows | WaitApplied) -> None:
        """Step 1 of a takeover (on the group's executor), then tell the node core.

        Whatever happens to the commit, the node core hears that it is over:
        the group's addresses wait for it, and a master without them is the
        worst outcome of all.
        """
        try:
            await self._commit_for_takeover(a)
        except Exception as e:
            self.log("takeover_commit_failed", level="error", group=a.group, error=repr(e))
        finally:
            self.dispatch(self.node.takeover_committed(a.group, trio.current_time()))

    async def _commit_for_takeover(self, a: CommitFlows | WaitApplied) -> None:
        if isinstance(a, WaitApplied):
            # Already in the kernel; wait (boundedly) for changes still queued to
            # be applied.  Not holding the commit lock while waiting: the apply
            # loop needs it to make progress.
            waited = await self._wait_applied(a.limit_s)
            self.log("takeover_commit", group=a.group, mode="continuous", committed=0,
                     waited_ms=round(waited * 1000, 1),
                     unapplied=self._apply_pending + self._apply_receive.statistics().current_buffer_used)
        else:
            result, exp = await self.commit(list(a.entries), "takeover", list(a.expectations))
            self.log("takeover_commit", group=a.group, from_node=a.from_node, committed=result.ok,
                     failed=result.failed, ms=round(result.seconds * 1000, 1),
                     errors=result.errors_by_reason or None, **_expectation_fields(exp))

    async def _wait_applied(self, limit: float) -> float:
        """Until every change received from the peers is in the kernel, or `limit` s."""
        start = trio.current_time()
        while (self._apply_pending or self._apply_receive.statistics().current_buffer_used) \
                and trio.current_time() - start < limit:
            await trio.sleep(0.001)
        return trio.current_time() - start

    async def commit(self, entries: list[bytes], kind: str = "operator", expectations: list[bytes] = ()):
        """Commit `entries` (attrs) into the kernel, then `expectations` (after
        every entry: the kernel wants an expectation's master in its table), one
        commit at a time (the apply loop takes the same lock).  Returns the
        entries' CommitResult and the expectations' (None without any), also
        kept for `meshctl stats` and timed under `kind` (COMMIT_KINDS).  Failed
        entries are counted in them, not raised."""
        exp = None
        async with self._commit_lock:
            result = await self.committer.commit_async(entries)
            if expectations:
                exp = await trio.to_thread.run_sync(self.committer.commit_expectations, list(expectations))
        seconds = result.seconds + (exp.seconds if exp else 0.0)
        self.commit_seconds[kind].observe(seconds)
        self.last_commit = {"entries": len(entries), "ok": result.ok, "failed": result.failed,
                            "seconds": round(seconds, 4), "errors": result.errors_by_reason,
                            "at": time.time()}
        if exp is not None:
            self.last_commit["expectations"] = _expectation_fields(exp)
        return result, exp

    # ------------------------------------------------------------------ the kernel

    async def resync_from_kernel(self, why: str) -> None:
        """Dump the table (in a thread) for the node core to diff into the internal
        cache, and wait until it did (its steps run from the node's timer)."""
        async with self._dump_lock:
            self.node.kernel_dump_started(trio.current_time())
            table = await trio.to_thread.run_sync(_dump_all)
            self._resynced = trio.Event()
            self.dispatch(self.node.kernel_table(table, why, trio.current_time()))
            await self._resynced.wait()

    async def _consume_events(self, channel) -> None:
        node = self.node
        dispatch = self.dispatch
        async for burst in channel:
            if isinstance(burst, kct.Overrun):
                self.log("ct_overrun", level="warning", overruns=self.reader.overruns,
                         action="dump and diff against the internal cache")
                await self.resync_from_kernel("overrun")
                continue
            if node.flows.busy:
                await self._resynced.wait()       # a diff runs: let the channel push back
            dispatch(node.kernel_events(burst, trio.current_time()))

    # Frames are read by the wire engine, in its own process (meshd/wire/):
    # it hands each one whose tag is valid to `frame_in`, and what it
    # refused to `refused_in`, then the actions to the dispatcher.

    def frame_in(self, data: bytes, source: str, now: float) -> list:
        """A frame the wire engine let through, from `source`: to the node core."""
        peer = self._peer_of(source)
        acts = self.node.frame(data, peer, now, source=source)
        if peer in self._multipath and self.node.sync.heard_from == peer:
            # Anything but a heartbeat goes over the one path the peer uses.
            self._heard_over(peer, source, data[1] != HEARTBEAT, now)
        if self.node.discovery is not None:
            self.discovery_changed()          # a candidate proven by this frame
        for a in acts:
            if type(a) is FrameRejected and self.guard.rejected(source, now):
                self._apply_guard()
        return acts

    def _heard_over(self, peer: int, source: str, own: bool, now: float) -> None:
        """An authentic frame of `peer` from `source`: the path table judges."""
        index = self._path_hints.get(source, -1)
        if index == -1:
            if len(self._path_hints) > 1024:
                self._path_hints.clear()
            index = self._path_hints[source] = self.paths.index_of(peer, _norm(source))
        if index is not None:
            switch = self.paths.heard(peer, index, now, own)
            if switch is not None:
                self._switched(switch)

    def _switched(self, s: PathSwitch) -> None:
        # Nothing sent meanwhile is lost: the peer NACKs what it missed over
        # the new path, and it is resent there (proto/sync.md, 6.4).  Our
        # ABOUT goes at once: the peer sees by it which path we use.
        self.node.sync.about_soon(trio.current_time())
        self.log("sync_path", level="warning" if s.new > s.old else "info", peer=s.peer,
                 old=s.old_address, new=s.new_address, reason=s.reason)

    def refused_in(self, reason: str, detail: str, source: str | None, count: int,
                   now: float) -> list:
        """`count` datagrams the wire engine refused, from `source` (None: many sources)."""
        peer = self._peer_of(source) if source else None
        acts = self.node.frame_refused(reason, detail, peer, count, now)
        if self.guard.rejected(source, now, count):
            self._apply_guard()
        return acts

    def _peer_of(self, address: str) -> int | None:
        """The peer an address belongs to; a cache of hints, bounded, since
        sources are not trusted (cleared when the peers change)."""
        hints = self._peer_hints
        hint = hints.get(address, -1)
        if hint == -1:
            if len(hints) > 1024:
                hints.clear()
            norm = _norm(address)
            hint = self.peer_by_address.get(norm)
            if hint is None and self._discovered_hints:
                hint = self._discovered_hints.get(norm)
            hints[address] = hint
        return hint

    def _apply_guard(self) -> None:
        """The socket filter as the guard says: while engaged, the configured peers'
        addresses and a sample of the rest (meshd/kernel/sockfilter.py)."""
        family = 6 if self.family == socket.AF_INET6 else 4
        sockfilter.apply_guard(self.guard, {family: self.sock}, self.log, "sync_flood_guard")

    async def _apply_loop(self) -> None:
        """commit = "continuous": keep the kernel table populated with the peers' flows.

        Committed inline on the event loop in chunks of APPLY_CHUNK entries
        (a few milliseconds each, with a checkpoint between): in a worker
        thread, the encoding would hold the GIL against the receive loop, whose
        every recv then waits a switch interval, and the socket overflows.
        """
        while True:
            first = await self._apply_receive.receive()
            batch = [first]
            while len(batch) < APPLY_BATCH:
                try:
                    batch.append(self._apply_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            self._apply_pending = len(batch)
            upserts, deletes, exp_upserts, exp_deletes = self.node.kernel_changes(batch)
            seconds = 0.0             # in the kernel calls, not in the checkpoints between them
            try:
                async with self._commit_lock:
                    if exp_deletes:
                        # ENOENT is the usual answer: used up, or gone with its master
                        seconds += self.committer.delete_expectations(exp_deletes, pipeline=False).seconds
                    for lo in range(0, len(deletes), APPLY_CHUNK):
                        seconds += self.committer.delete(deletes[lo:lo + APPLY_CHUNK], pipeline=False).seconds
                        await trio.sleep(0)
                    for lo in range(0, len(upserts), APPLY_CHUNK):
                        result = self.committer.commit(upserts[lo:lo + APPLY_CHUNK], pipeline=False)
                        seconds += result.seconds
                        if result.failed:
                            self.log("ct_apply_errors", level="warning", failed=result.failed,
                                     errors=result.errors_by_reason)
                        await trio.sleep(0)
                    if exp_upserts:       # after their masters, which this batch may carry
                        result = self.committer.commit_expectations(exp_upserts, pipeline=False)
                        seconds += result.seconds
                        if result.failed:
                            self.log("ct_apply_errors", level="warning", what="expectations",
                                     failed=result.failed, errors=result.errors_by_reason)
            finally:
                self._apply_pending = 0
                self.node.kernel_changes_applied()
            if upserts or deletes or exp_upserts or exp_deletes:
                self.commit_seconds["continuous"].observe(seconds)

    # ------------------------------------------------------------------ reload

    def reconfigure(self, old: Config, new: Config) -> None:
        """The shell's part of a reload the node core has applied: the peers'
        addresses and paths (frames to a peer's new address), the event buffer.

        meshd/reload.py has refused what cannot change live (the socket's
        port, interface, family and multicast group).
        """
        self.config, self.sync = new, new.sync
        self._set_peers(new.sync, trio.current_time())
        self._peer_hints.clear()
        self._discovery_version = -1          # the DiscoveryTable was reconfigured too
        d = self.node.discovery
        self._discovered_hints = d.addresses() if d is not None else {}
        if d is not None:
            self._discovery_version = d.version
        if self.announcer is not None and self.nursery is not None:
            from ..node.core import discovery_fingerprints
            fp = discovery_fingerprints(new)[0]
            if fp != self.announcer.fingerprint:
                self.nursery.start_soon(self.announcer.set_fingerprint, fp)
        if self.guard.set_known(self._known()) and self.sock is not None:
            self._apply_guard()               # engaged: the readdressed peers are admitted now
        if new.sync.event_buffer_bytes != old.sync.event_buffer_bytes:
            try:
                self.reader.set_rcvbuf(new.sync.event_buffer_bytes)
            except OSError as e:      # a tuning knob: the old buffer stays, say so
                self.log("ct_buffer_failed", level="error", wanted=new.sync.event_buffer_bytes,
                         error=e.strerror or str(e))

    # ------------------------------------------------------------------ control

    async def handle_control(self, cmd: str, request: dict) -> Any:
        """Answer one of the state mesh's commands (stats, resync, commit, flush, dump).

        Returns:
            The answer's dict; for `dump`, an async iterator of entries, which
            the control server streams.

        Raises:
            ControlError: an unknown peer, a bad `what` or `cache`, or a command
                that is not the state mesh's.
        """
        core = self.node.sync
        now = trio.current_time()
        peer = request.get("peer")
        if peer is not None and peer not in core.peers:
            raise ControlError(f"{cmd}: unknown peer {peer!r} (peers: "
                               f"{', '.join(str(p) for p in core.peers)})")
        if cmd == "stats":
            return {"sync": core.stats(now), "kernel": self.reader.stats(),
                    "filter": self.node.flows.filter.stats.as_dict(), "last_commit": self.last_commit,
                    "young": self.node.flows.young.stats() if self.node.flows.young is not None else None,
                    "send_errors": self.send_errors, "probe_errors": self.probe_errors,
                    "sender": self._sender.stats() if self._sender is not None else None,
                    "paths": {pid: st for pid, st in self.paths.status(now).items() if pid in self._multipath},
                    "reject_log": self.reject_log.stats(),
                    "flood_guard": self.guard.status(now),
                    "commits": {kind: h.count for kind, h in self.commit_seconds.items()}}
        if cmd == "resync":
            self.dispatch(self.node.resync_request(now))
            return {"peers": list(core.peers)}
        if cmd == "commit":
            entries, expectations = [], []
            for key, attrs in _external_pairs(core, peer):
                (expectations if ct.is_expect_key(key) else entries).append(attrs)
            result, exp = await self.commit(entries, expectations=expectations)
            return {"committed": result.ok, "failed": result.failed,
                    "seconds": round(result.seconds, 4), "errors": result.errors_by_reason,
                    **_expectation_fields(exp)}
        if cmd == "flush":
            what = request.get("what")
            if what == "internal":
                removed = self.node.flush_internal()
                await self.resync_from_kernel("operator flush")
            elif what == "external":
                removed = sum(1 for _ in core.external_entries(peer))
                self.dispatch(self.node.flush_external(peer, now))
            elif what == "kernel":
                table = await trio.to_thread.run_sync(kct.dump_table)
                async with self._commit_lock:     # the apply loop commits inline
                    await self.committer.flush_async()
                removed = len(table)
            else:
                raise ControlError(f'flush: "what" must be internal, external or kernel, found {what!r}')
            return {"what": what, "removed": removed}
        if cmd == "dump":
            cache = request.get("cache")
            if cache not in ("internal", "external"):
                raise ControlError(f'dump: "cache" must be internal or external, found {cache!r}')
            return self._dump(cache, peer)
        raise ControlError(f"unknown command {cmd!r}")

    async def _dump(self, cache: str, peer: int | None):
        """Stream entries; a snapshot of the keys first, so the caches may change meanwhile."""
        core = self.node.sync
        if cache == "internal":
            sources = [(self.config.node.id, dict(core.dump_internal()))]
        else:
            origins = [peer] if peer is not None else list(core.peers)
            sources = [(o, dict(core.dump_external(o))) for o in origins]
        n = 0
        for origin, items in sources:
            for key, attrs in items.items():
                try:
                    entry = ct.parse_expect(attrs) if ct.is_expect_key(key) else ct.parse_entry(attrs)
                except ct.CtDecodeError as e:
                    entry = {"error": str(e)}
                yield {"origin": origin, "entry": entry}
                n += 1
                if n % DUMP_CHECKPOINT == 0:
                    await trio.sleep(0)


def _dump_all() -> list:
    """The kernel's table and its expectations (one list of CtEvents), for the diff."""
    return kct.dump_table() + kct.dump_expectations()


def _external_pairs(core, peer: int | None):
    """(key, attrs) of one origin's external cache, or of every origin's (each key once)."""
    if peer is not None:
        yield from core.dump_external(peer)
        return
    seen: set[bytes] = set()
    for origin in list(core.peers):
        for key, attrs in core.dump_external(origin):
            if key not in seen:
                seen.add(key)
                yield key, attrs


def _expectation_fields(result) -> dict:
    """What the log line and the answer say about a commit's expectations (nothing without any)."""
    if result is None:
        return {}
    return {"expectations": result.ok, "expectations_failed": result.failed,
            "expectation_errors": result.errors_by_reason or None}


def _norm(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return address
