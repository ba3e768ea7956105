"""The trio shell of the state mesh: kernel events in, frames out, commits at takeover.

Tasks (all in the daemon's nursery):
- the conntrack event reader puts one list per burst on a bounded channel;
  the consumer filters the burst and feeds it to the core in one call;
  an Overrun marker makes it dump the table (in a thread) and diff;
- the UDP receive loop feeds frames to the core;
- the timer loop wakes the core at its next deadline;
- with `commit = "continuous"`, an applier injects external changes into the
  kernel in batches as they arrive, so a takeover has nothing left to commit.

The committer's socket is registered with the reader: events caused by our
own injections are dropped there, never sent back out.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct
import time
from typing import Any

import trio

from ..commands import ControlError
from ..config import Config, GroupConfig
from ..config.sync import SyncConfig
from ..crypto import SYNC_INFO, KeyRing
from ..kernel import conntrack as kct
from ..kernel import ctnetlink as ct
from ..timers import CoreTimer
from .actions import (
    NEW,
    UPDATE,
    ExternalChanged,
    FrameRejected,
    PeerChanged,
    SendFrame,
    SyncState,
)
from .core import SyncCore
from .digest import NBUCKETS, bucket_of
from .filters import EventFilter

EVENT_QUEUE_BURSTS = 256      # bursts of up to 256 events buffered between reader and core
APPLY_BATCH = 4096
TAKEOVER_APPLY_WAIT = 1.0     # s a continuous-mode takeover waits for queued changes at most
RECV_BURST = 64               # datagrams received per wake-up of the receive loop
APPLY_CHUNK = 512            # entries committed per step of the apply loop
ADOPT_DELAY = 0.5             # s after the addresses moved before the taken-over flows are adopted
RESYNC_CHECKPOINT = 5000      # dumped entries split into buckets between two checkpoints
DUMP_CHECKPOINT = 1000        # entries streamed between two checkpoints


class SyncService:
    def __init__(self, config: Config, epoch: int, log, on_sync_state, replay=None):
        sync: SyncConfig = config.sync
        self.config = config
        self.sync = sync
        self.log = log
        self.on_sync_state = on_sync_state
        self.core = SyncCore(
            config.node.id, [p.id for p in sync.peers], sync_keys(config), epoch,
            max_datagram=sync.max_datagram, resend_queue=sync.resend_queue,
            report_external_changes=sync.commit == "continuous", replay=replay,
            **core_timers(sync))
        self.timer = CoreTimer(self.core, self.dispatch)
        self.filter = EventFilter(sync.filter)
        self.peer_by_address = {_norm(p.address): p.id for p in sync.peers if p.address}
        self._peer_hints: dict[str, int | None] = {}   # source address as received -> peer id
        self.family = socket.AF_INET6 if sync.family == 6 else socket.AF_INET
        self.sock: trio.socket.SocketType | None = None
        self.committer: kct.CtCommitter | None = None
        self.reader: kct.CtEventReader | None = None
        self.last_commit: dict = {}
        self.send_errors = 0
        self.nursery: trio.Nursery | None = None
        self._pending_adoption: list[tuple[list[int], GroupConfig, bool]] = []
        self._dump_when_in_sync = False
        self._apply_send, self._apply_receive = trio.open_memory_channel(math.inf)
        self._commit_lock = trio.Lock()
        self._apply_pending = 0          # changes taken from the apply queue, not yet committed
        self._resync_lock = trio.Lock()  # held by a dump-and-diff of the internal cache
        self._takeover_lock = trio.Lock()

    # ------------------------------------------------------------------ start

    def open(self) -> None:
        """Sockets first (errors here stop the start-up with a clear message)."""
        self.committer = kct.CtCommitter(log=self.log)
        self.reader = kct.CtEventReader(rcvbuf=self.sync.event_buffer_bytes,
                                        own_portids={self.committer.portid}, log=self.log)
        s = trio.socket.socket(self.family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        if self.sync.interface:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.sync.interface.encode())
        s._sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", self.sync.port))
        if self.sync.multicast_group:
            index = socket.if_nametoindex(self.sync.interface)
            group = ipaddress.ip_address(self.sync.multicast_group).packed
            if self.family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                             group + struct.pack("=4si", b"\0" * 4, index))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("=I", index))
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        self.sock = s

    def set_local_addresses(self, addresses: set[str]) -> None:
        self.filter.set_local_addresses(addresses)

    async def run(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        events_send, events_receive = trio.open_memory_channel(EVENT_QUEUE_BURSTS)
        nursery.start_soon(self.reader.run, events_send)
        nursery.start_soon(self._consume_events, events_receive)
        nursery.start_soon(self._receive_loop)
        nursery.start_soon(self.timer.run)
        nursery.start_soon(self._apply_loop)
        # The internal cache starts from the kernel's table, as after an overrun;
        # with continuous commits only once the peers' bulk has arrived: until
        # then the table's injected peer flows cannot be told from our own.
        if self.sync.commit != "continuous":
            await self._resync_from_kernel("start")
        else:
            self._dump_when_in_sync = True
        self.dispatch(self.core.start(trio.current_time()))

    # --------------------------------------------------------------- dispatch

    def dispatch(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, SendFrame):
                self._send(a)
            elif isinstance(a, ExternalChanged):
                self._apply_send.send_nowait(a)
            elif isinstance(a, SyncState):
                self.log("sync_state", in_sync=a.in_sync, reason=a.reason)
                if a.in_sync and self._dump_when_in_sync:
                    self._dump_when_in_sync = False
                    self.nursery.start_soon(self._resync_from_kernel, "start (after the peers' bulk)")
                self.on_sync_state(a.in_sync, a.reason)
            elif isinstance(a, PeerChanged):
                self.log("sync_peer", peer=a.peer, state=a.state, reason=a.reason)
            elif isinstance(a, FrameRejected):
                self.log("sync_frame_rejected", level="warning", reason=a.reason,
                         detail=a.detail, peer=a.peer)
        self.timer.kick()

    def _send(self, frame: SendFrame) -> None:
        if frame.peer is None and self.sync.multicast_group:
            targets = [self.sync.multicast_group]
        elif frame.peer is None:
            targets = [p.address for p in self.sync.peers]
        else:
            peer = self.sync.peer(frame.peer)
            targets = [peer.address] if peer and peer.address else []
        for address in targets:
            try:
                self.sock._sock.sendto(frame.data, (address, self.sync.port))
            except OSError as e:
                # A full socket buffer or a down link: the reliability layer
                # resends what the peer reports missing, so count and go on.
                self.send_errors += 1
                if self.send_errors in (1, 10, 100) or self.send_errors % 1000 == 0:
                    self.log("sync_send_failed", level="warning", peer=address,
                             error=e.strerror or str(e), total=self.send_errors)

    # ------------------------------------------------------------------ loops

    async def _consume_events(self, channel) -> None:
        keep = self.filter.keep
        get = self.core.internal.get
        merge = ct.merge_attrs
        async for burst in channel:
            if isinstance(burst, kct.Overrun):
                self.log("ct_overrun", level="warning", overruns=self.reader.overruns,
                         action="dump and diff against the internal cache")
                await self._resync_from_kernel("overrun")
                continue
            if self._resync_lock.locked():
                async with self._resync_lock:     # a resync is diffing the cache bucket by bucket
                    pass
            events = []
            for e in burst:
                if not keep(e):
                    continue
                attrs = e.attrs
                if e.kind == UPDATE:
                    # UPDATE events are partial (protoinfo, labels, seq-adjust and
                    # helper come only when they change): merge into what we hold.
                    old = get(e.key)
                    if old is not None:
                        attrs = merge(old, attrs)
                events.append((e.kind, e.key, attrs))
            if events:
                self.dispatch(self.core.local_events(events, trio.current_time()))

    async def _resync_from_kernel(self, why: str) -> None:
        """Dump the table and send what differs from the internal cache.

        One cache bucket at a time with a checkpoint after each (and every
        RESYNC_CHECKPOINT entries while splitting the dump): after an overrun
        under a flood, the table holds hundreds of thousands of entries, and
        the election's adverts share this event loop.  The event consumer
        waits meanwhile (it called us, or it waits for _resync_lock), so the
        cache changes only here.
        """
        async with self._resync_lock:
            await self._resync_locked(why)

    async def _resync_locked(self, why: str) -> None:
        start = time.perf_counter()
        table = await trio.to_thread.run_sync(kct.dump_table)
        keep = self.filter.keep
        parts: list[dict[bytes, bytes]] = [{} for _ in range(NBUCKETS)]
        kept = 0
        for i, e in enumerate(table):
            if keep(e):
                parts[bucket_of(e.key)][e.key] = e.attrs
                kept += 1
            if i % RESYNC_CHECKPOINT == RESYNC_CHECKPOINT - 1:
                await trio.lowlevel.checkpoint()
        continuous = self.sync.commit == "continuous"
        internal = self.core.internal.get
        for b in range(NBUCKETS):
            part = parts[b]
            if continuous:
                # The table also holds the peers' flows we injected; they are not
                # ours unless the kernel already reported them as ours (traffic).
                for p in self.core.peers.values():
                    for key in p.ext.buckets[b]:
                        if key in part and internal(key) is None:
                            del part[key]
                            kept -= 1
            actions = self.core.local_resync_bucket(b, part, trio.current_time())
            if actions:
                self.dispatch(actions)
            parts[b] = None
            await trio.lowlevel.checkpoint()
        self.core.local_resync_done()
        self.log("ct_resync", reason=why, entries=kept, kernel_entries=len(table),
                 ms=round((time.perf_counter() - start) * 1000, 1))

    async def _receive_loop(self) -> None:
        """Drain the socket in bursts: one wake-up per burst, not per datagram
        (the per-call overhead of an await is a good part of a record's cost)."""
        raw = self.sock._sock                 # non-blocking, as trio keeps it
        buf = bytearray(65536)
        view = memoryview(buf)
        receive = self.core.receive
        hints = self._peer_hints              # a hint only; cleared when the peers change

        def peer_of(address: str) -> int | None:
            hint = hints.get(address, -1)
            if hint == -1:
                if len(hints) > 1024:         # bounded: sources are not trusted
                    hints.clear()
                hint = hints[address] = self.peer_by_address.get(_norm(address))
            return hint

        while True:
            await trio.lowlevel.wait_readable(raw)
            now = trio.current_time()
            actions: list = []
            for _ in range(RECV_BURST):
                try:
                    n, addr = raw.recvfrom_into(buf)
                except BlockingIOError:
                    break
                except OSError as e:
                    self.log("sync_receive_error", level="warning", error=e.strerror or str(e))
                    await trio.sleep(0.01)
                    break
                actions += receive(bytes(view[:n]), peer_of(addr[0]), now)
            if actions:
                self.dispatch(actions)

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
            upserts = [attrs for change in batch for _key, attrs in change.upserts]
            # A flow we carry now (adopted at a takeover) stays, whatever the
            # old origin's bulk says: it is ours to replicate.
            mine = self.core.internal.get
            deletes = [attrs for change in batch for key, attrs in change.deletes if mine(key) is None]
            try:
                async with self._commit_lock:
                    for lo in range(0, len(deletes), APPLY_CHUNK):
                        self.committer.delete(deletes[lo:lo + APPLY_CHUNK], pipeline=False)
                        await trio.lowlevel.checkpoint()
                    for lo in range(0, len(upserts), APPLY_CHUNK):
                        result = self.committer.commit(upserts[lo:lo + APPLY_CHUNK], pipeline=False)
                        if result.failed:
                            self.log("ct_apply_errors", level="warning", failed=result.failed,
                                     errors=result.errors_by_reason)
                        await trio.lowlevel.checkpoint()
            finally:
                self._apply_pending = 0

    # ----------------------------------------------------------------- takeover

    async def commit_for_takeover(self, group: GroupConfig, from_node: int | None) -> None:
        """Step 1 of the failover ordering: the flows of the node we replace, into the kernel."""
        # Groups of a sync set take over at once, each on its own executor:
        # one at a time, so the second sees that the first committed.
        async with self._takeover_lock:
            await self._commit_for_takeover(group, from_node)

    async def _commit_for_takeover(self, group: GroupConfig, from_node: int | None) -> None:
        origin = from_node if from_node in self.core.peers else None
        origins = [origin] if origin is not None else list(self.core.peers)
        if origin is not None and self.sync.commit_scope == "all" and self._already_adopted(origin):
            # Another group (of the same sync set, usually) just committed this
            # origin's flows, and the origin has said nothing since.
            self.log("takeover_commit", group=group.name, from_node=origin, committed=0,
                     reason="already committed for another group")
            return
        if self.sync.commit == "continuous":
            # Already in the kernel; wait (boundedly) for changes still queued to
            # be applied.  Not holding the commit lock while waiting: the apply
            # loop needs it to make progress.
            waited = await self._wait_applied(TAKEOVER_APPLY_WAIT)
            self.log("takeover_commit", group=group.name, mode="continuous", committed=0,
                     waited_ms=round(waited * 1000, 1),
                     unapplied=self._apply_pending + self._apply_receive.statistics().current_buffer_used)
        else:
            pairs = self._taken_over(origins, group)
            result = await self.commit([a for _k, a in pairs])
            self.log("takeover_commit", group=group.name, from_node=origin, committed=result.ok,
                     failed=result.failed, ms=round(result.seconds * 1000, 1),
                     errors=result.errors_by_reason or None)
        for o in origins:
            self.dispatch(self.core.adopt(o, trio.current_time()))
        # Without a known origin every peer is a candidate; those heard again
        # after the grace are alive and keep their own flows (see _adopt_flows).
        self._pending_adoption.append((origins, group, origin is None))

    async def _wait_applied(self, limit: float) -> float:
        """Until every change received from the peers is in the kernel, or `limit` s."""
        start = trio.current_time()
        while (self._apply_pending or self._apply_receive.statistics().current_buffer_used) \
                and trio.current_time() - start < limit:
            await trio.sleep(0.001)
        return trio.current_time() - start

    def _taken_over(self, origins: list[int], group: GroupConfig) -> list[tuple[bytes, bytes]]:
        pairs = [kv for o in origins for kv in self.core.dump_external(o)]
        if self.sync.commit_scope == "group":
            pairs = [(k, a) for k, a in pairs if _touches(a, group.addresses)]
        return pairs

    def addresses_moved(self) -> None:
        """The takeover's addresses are up: now adopt the taken-over flows.

        They pass here now, so they become this node's and its peers learn
        them, above all the old master when it comes back with an empty table.
        Not before the addresses move: moving 100k flows costs event-loop time
        that the takeover itself must not wait for.
        """
        if self._pending_adoption:
            pending, self._pending_adoption = self._pending_adoption, []
            self.nursery.start_soon(self._adopt_flows, pending)

    async def _adopt_flows(self, pending: list) -> None:
        """Move the taken-over flows into the internal cache (and so to the peers).

        After ADOPT_DELAY (the takeover's other groups, announcements and
        adverts go first), one cache bucket at a time with a checkpoint after
        each: with 100k flows the whole move costs seconds of CPU, and no step
        of it may hold the event loop.
        """
        guessed = any(unknown for _o, _g, unknown in pending)
        # A guessed origin must have had the chance to be heard after the
        # core's adoption grace (a heartbeat or two) before its flows are taken.
        await trio.sleep(max(ADOPT_DELAY, self.core.adopt_grace_s + 2 * self.core.heartbeat_s)
                         if guessed else ADOPT_DELAY)
        t0 = time.perf_counter()
        worst = 0.0
        moved = 0
        get = self.core.internal.get
        for origins, group, unknown in pending:
            for origin in origins:
                peer = self.core.peers.get(origin)
                if peer is None:
                    continue
                if unknown and not peer.adopted:
                    # The node replaced was not known, and this peer is alive:
                    # its flows are its own, not taken over.
                    self.log("flows_not_adopted", group=group.name, peer=origin,
                             reason="peer alive (heard after the takeover)")
                    continue
                for bucket in range(NBUCKETS):
                    if unknown and not peer.adopted:
                        break                 # heard meanwhile: the rest stays its own
                    t = time.perf_counter()
                    pairs = self.core.adoptable_bucket(origin, bucket)
                    if self.sync.commit_scope == "group":
                        pairs = [(k, a) for k, a in pairs if _touches(a, group.addresses)]
                    events = [(NEW, k, a) for k, a in pairs if get(k) is None]
                    if events:
                        self.dispatch(self.core.local_events(events, trio.current_time()))
                        moved += len(events)
                    worst = max(worst, time.perf_counter() - t)
                    await trio.lowlevel.checkpoint()
        self.log("flows_adopted", entries=moved, ms=round((time.perf_counter() - t0) * 1000, 1),
                 longest_step_ms=round(worst * 1000, 1))

    def _already_adopted(self, origin: int) -> bool:
        p = self.core.peers[origin]
        return p.adopted and (p.last_heard is None or p.last_heard <= p.adopted_at)

    async def commit(self, entries: list[bytes]):
        async with self._commit_lock:
            result = await self.committer.commit_async(entries)
        self.last_commit = {"entries": len(entries), "ok": result.ok, "failed": result.failed,
                            "seconds": round(result.seconds, 4), "errors": result.errors_by_reason,
                            "at": time.time()}
        return result

    # ------------------------------------------------------------------ reload

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded configuration at once, between two inputs of the core.

        meshd/reload.py has refused what cannot change live (the socket's
        port, interface, family and multicast group; max_datagram and
        resend_queue, which size the core's buffers).  What the change then
        needs from the kernel runs in the nursery afterwards: the dump that
        makes the internal cache match a new filter, the commit of the
        replicated flows after a switch to continuous commits.
        """
        old, new = self.sync, config.sync
        now = trio.current_time()
        keys = sync_keys(config)
        if keys != self.core.keys:
            self.dispatch(self.core.set_keys(keys, now))
        old_ids, new_ids = {p.id for p in old.peers}, {p.id for p in new.peers}
        # Before the peers' frames go out: _send reads their addresses from here.
        self.config, self.sync = config, new
        self.peer_by_address = {_norm(p.address): p.id for p in new.peers if p.address}
        self._peer_hints.clear()
        for pid in sorted(old_ids - new_ids):
            self.dispatch(self.core.remove_peer(pid, now))
        for pid in sorted(new_ids - old_ids):
            self.dispatch(self.core.add_peer(pid, now))
        if core_timers(new) != core_timers(old):
            self.dispatch(self.core.set_timers(**core_timers(new), now=now))
        if new.event_buffer_bytes != old.event_buffer_bytes:
            try:
                self.reader.set_rcvbuf(new.event_buffer_bytes)
            except OSError as e:      # a tuning knob: the old buffer stays, say so
                self.log("ct_buffer_failed", level="error", wanted=new.event_buffer_bytes,
                         error=e.strerror or str(e))
        if new.filter != old.filter:
            self.filter.set_config(new.filter)
            # Flows the new filter ignores leave the internal cache (and the
            # peers' copies); flows it no longer ignores come in.  Not before
            # the peers' bulk in continuous mode: that dump is due anyway.
            if not self._dump_when_in_sync:
                self.nursery.start_soon(self._resync_from_kernel, "filter changed")
        if new.commit != old.commit:
            # To continuous: every replicated flow held now goes through the
            # applier into the kernel, ahead of the changes that follow.
            self.dispatch(self.core.set_report_external_changes(new.commit == "continuous", now))

    # ------------------------------------------------------------------ control

    async def handle_control(self, cmd: str, request: dict) -> Any:
        now = trio.current_time()
        peer = request.get("peer")
        if peer is not None and peer not in self.core.peers:
            raise ControlError(f"{cmd}: unknown peer {peer!r} (peers: "
                               f"{', '.join(str(p) for p in self.core.peers)})")
        if cmd == "stats":
            return {"sync": self.core.stats(now), "kernel": self.reader.stats(),
                    "filter": self.filter.stats.as_dict(), "last_commit": self.last_commit,
                    "send_errors": self.send_errors}
        if cmd == "resync":
            self.dispatch(self.core.request_resync(now))
            return {"peers": list(self.core.peers)}
        if cmd == "commit":
            result = await self.commit(list(self.core.external_entries(peer)))
            return {"committed": result.ok, "failed": result.failed,
                    "seconds": round(result.seconds, 4), "errors": result.errors_by_reason}
        if cmd == "flush":
            what = request.get("what")
            if what == "internal":
                removed = self.core.flush_internal()
                await self._resync_from_kernel("operator flush")
            elif what == "external":
                before = sum(1 for _ in self.core.external_entries(peer))
                self.dispatch(self.core.flush_external(peer))
                removed = before
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
        if cache == "internal":
            sources = [(self.config.node.id, dict(self.core.dump_internal()))]
        else:
            origins = [peer] if peer is not None else list(self.core.peers)
            sources = [(o, dict(self.core.dump_external(o))) for o in origins]
        n = 0
        for origin, items in sources:
            for attrs in items.values():
                try:
                    entry = ct.parse_entry(attrs)
                except ct.CtDecodeError as e:
                    entry = {"error": str(e)}
                yield {"origin": origin, "entry": entry}
                n += 1
                if n % DUMP_CHECKPOINT == 0:
                    await trio.lowlevel.checkpoint()


def sync_keys(config: Config) -> KeyRing:
    """The state mesh's keys: the cluster secrets, derived for the sync AEAD."""
    return KeyRing.from_secrets(config.secrets, config.cluster.send_key, SYNC_INFO)


def core_timers(sync: SyncConfig) -> dict[str, float]:
    """The [sync] periods as SyncCore takes them (seconds)."""
    heartbeat = sync.heartbeat_ms / 1000
    # Two lost heartbeats must not make a live peer absent (the core refuses less).
    return {"heartbeat_s": heartbeat, "digest_interval_s": sync.digest_interval_ms / 1000,
            "peer_timeout_s": max(sync.peer_timeout_ms / 1000, 2 * heartbeat)}


def _norm(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return address


def _touches(attrs: bytes, addresses: tuple[str, ...]) -> bool:
    """Whether a flow's tuples involve one of a group's networks (commit_scope = "group")."""
    nets = [ipaddress.ip_interface(a).network for a in addresses]
    try:
        entry = ct.parse_entry(attrs)
    except ct.CtDecodeError:
        return True
    for side in ("orig", "reply"):
        for k in ("src", "dst"):
            value = (entry.get(side) or {}).get(k)
            if value:
                ip = ipaddress.ip_address(value)
                if any(ip.version == n.version and ip in n for n in nets):
                    return True
    return False
