"""The election's trio shell: sockets, addresses, announcements, hooks, links, tracks.

It carries out the election's actions that the node core returns, and feeds
the node core what the election hears: adverts, link changes, track results.
The rules are the node core's (meshd/node/core.py) and the election core's;
here is only I/O.

Ordering: each group's actions run strictly in order on that group's own
executor task (the failover ordering: commit, addresses, announce, advert,
notify), while groups do not wait for each other, so a slow takeover of one
group never delays the adverts of another.  The takeover commit (CommitFlows /
WaitApplied) runs on the group's executor too, through `commit`, so it waits
for what the group was doing before.

Must not: decide anything an election or node rule decides; block the event
loop (address removal and dumps go to worker threads; the add is inline, raw
rtnetlink, well under a millisecond).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..config import Config, GroupConfig
from ..floodguard import FloodGuard
from ..hooks import HookRun, HookRunner
from ..kernel import addresses as kaddr
from ..kernel import sockfilter
from ..kernel.announce import AnnounceError, announce
from ..kernel.leases import AddressLeases
from ..kernel.links import LinkMonitor, initial_state
from ..track.scripts import run_track_script
from .actions import (
    AddAddresses,
    AdvertRejected,
    Announce,
    RemoveAddresses,
    RunNotify,
    SendAdvert,
)
from .transport import ElectionSockets, TransportError

# Adverts read from each socket before a due election deadline is acted upon:
# more than the socket buffer holds (SO_RCVBUF 1 MiB, doubled by the kernel:
# under 2,800 small datagrams), so that the master's advert queued behind a
# flood of forged ones is read before a master-down acts; still a bound, so a
# queue that never empties cannot hold the loop (tests/election/test_read_first_under_flood.py).
READ_FIRST_LIMIT = 8192
RECV_BURST = 64               # adverts read per wake-up of the receive loop


def election_family(group: GroupConfig) -> int:
    """Family the group's adverts use: its peers' if unicast, else its first address's."""
    if group.peers:
        return ipaddress.ip_address(group.peers[0]).version
    return group.family


class GroupExecutor:
    """Carries out one group's actions in order, in its own task."""

    def __init__(self, shell: "ElectionShell", group: str):
        self.shell = shell
        self.group = group
        self.send, self.receive = trio.open_memory_channel(math.inf)

    def submit(self, action: Any) -> None:
        self.send.send_nowait(action)

    async def drain(self) -> None:
        done = trio.Event()
        self.send.send_nowait(done)
        await done.wait()

    async def run(self) -> None:
        async for action in self.receive:
            if isinstance(action, trio.Event):
                action.set()
                continue
            try:
                await self.shell.carry_out(action)
            except Exception as e:  # one failed action must not stop the group
                self.shell.log("action_failed", level="error", group=self.group,
                               action=type(action).__name__, error=repr(e))


class ElectionShell:
    """The election side of one node under trio.

    Args:
        config: the running configuration (replaced by `reconfigure`).
        node: the NodeCore (its `election` answers status questions).
        dispatch: the daemon's router for actions the node returns.
        commit: carries out a CommitFlows / WaitApplied action (the state mesh's shell).
        log: the event logger.
    """

    def __init__(self, config: Config, node, dispatch: Callable[[list], None],
                 commit: Callable[[Any], Awaitable[None]], log):
        self.config = config
        self.node = node
        self.dispatch = dispatch
        self.commit = commit
        self.log = log
        self.sockets = ElectionSockets(config.cluster.port, config.cluster.multicast_v4,
                                       config.cluster.multicast_v6)
        self.hooks = HookRunner(log)
        lifetime = config.node.address_lifetime_s
        self.leases = AddressLeases(lifetime, log) if lifetime else None
        self.executors: dict[str, GroupExecutor] = {}
        self.nursery: trio.Nursery | None = None
        self._announcing: dict[str, trio.CancelScope] = {}   # group -> its GARP/NA burst
        self.wire = None                                     # the wire engine (meshd/wire/remote.py)
        self._tracks_scope: trio.CancelScope | None = None
        self._monitor: LinkMonitor | None = None
        self.guard = FloodGuard()

    # ------------------------------------------------------------------ start and end

    def open(self) -> None:
        """Sockets (raises TransportError); the address renewals' thread."""
        self.sockets.open({election_family(g) for g in self.config.groups})
        if self.leases is not None:
            self.leases.start()

    async def prepare(self, nursery: trio.Nursery) -> None:
        """Before the groups start: hooks, stale addresses, the links' state, multicast."""
        self.nursery = nursery
        nursery.start_soon(self.hooks.run)
        await self._remove_stale_addresses()
        # Subscribe before reading the initial state, so no change falls in between.
        self._monitor = LinkMonitor(log=self.log)
        for name, up in (await trio.to_thread.run_sync(initial_state, self.watched_interfaces())).items():
            self._on_link(name, up)
        self.join_all()

    def run(self) -> None:
        """Once the groups started: the link monitor, the flood guard, track scripts."""
        self.nursery.start_soon(self._link_loop, self._monitor)
        self.nursery.start_soon(sockfilter.guard_clock, self.guard, self._apply_guard)
        self.start_tracks()

    async def drain(self) -> None:
        """Wait until every group's executor has carried out what it was given so
        far (the bow-out at stop)."""
        for ex in list(self.executors.values()):
            await ex.drain()

    def drop_held_addresses(self) -> None:
        """Whatever ended the daemon (a stop has released them already), drop what
        it still holds now rather than when the lifetimes run out."""
        if self.leases is None:
            return
        held = self.leases.held()
        self.leases.close()
        for interface, addresses in held.items():
            try:
                errors = kaddr.remove_addresses(interface, addresses)
            except (kaddr.AddressError, OSError) as e:
                errors = [str(e)]
            self.log("addresses_dropped", level="warning", interface=interface,
                     addresses=",".join(addresses), reason="daemon ended without a stop",
                     errors=errors or None)

    async def _remove_stale_addresses(self) -> None:
        """An earlier instance may have left addresses behind (a crash with
        address_lifetime_s = 0, or a restart within the lifetime); a new boot
        starts without them, before it joins any group."""
        for g in self.config.groups:
            try:
                present = await trio.to_thread.run_sync(kaddr.interface_addresses, g.interface)
            except (kaddr.AddressError, OSError):
                continue  # interface missing: the group starts in FAULT
            stale = tuple(a for a in g.addresses if a in present)
            if not stale:
                continue
            try:
                errors = await trio.to_thread.run_sync(kaddr.remove_addresses, g.interface, stale)
            except kaddr.AddressError:
                continue
            for err in errors:
                self.log("address_error", level="error", group=g.name, error=err)
            self.log("stale_addresses_removed", level="warning", group=g.name, interface=g.interface,
                     addresses=",".join(stale), reason="left behind by an earlier meshd",
                     failed=len(errors) or None)

    # ------------------------------------------------------------------ multicast

    def watched_interfaces(self) -> list[str]:
        """The interfaces whose link state matters: the groups' and the tracked ones."""
        names = {g.interface for g in self.config.groups}
        names.update(t.interface for t in self.config.track_interfaces)
        return sorted(names)

    def join_all(self) -> None:
        """Join the multicast group on the interface of every multicast group; a
        failure is logged, and the join is tried again when the link comes up."""
        for g in self.config.groups:
            if not g.peers:
                self._join(g)

    def _join(self, g: GroupConfig) -> None:
        try:
            self.sockets.join(election_family(g), g.interface)
        except TransportError as e:
            self.log("multicast_join", level="warning", group=g.name, error=str(e))

    # ------------------------------------------------------------------ actions

    def submit(self, action: Any) -> None:
        """Queue one of the group's actions on its executor (started on first use); never blocks."""
        ex = self.executors.get(action.group)
        if ex is None:
            ex = self.executors[action.group] = GroupExecutor(self, action.group)
            self.nursery.start_soon(ex.run)
        ex.submit(action)

    async def carry_out(self, action: Any) -> None:
        """One action of a group, on its executor (GroupExecutor.run logs what this
        raises and goes on with the next).

        SendAdvert: a failed send is logged and, unless a bow-out, reported to
        the node core.  AddAddresses, RemoveAddresses: errors are logged per
        address; after an add, whatever failed, the node core is told
        (NodeCore.addresses_added).  Announce: a burst in a task of its own.
        RunNotify: queued for the hook runner.
        CommitFlows, WaitApplied: `commit`, awaited.
        """
        group = self.node.election.groups.get(action.group)
        if isinstance(action, SendAdvert):
            cfg = action.config or (group.config if group else None)
            if cfg is None:
                return
            try:
                self.sockets.send(election_family(cfg), cfg.interface, cfg.peers, action.data)
            except (OSError, TransportError) as e:
                self.log("send_failed", level="error", group=cfg.name,
                         error=getattr(e, "strerror", None) or str(e))
                if not action.bowout:
                    self.dispatch(self.node.advert_send_failed(cfg.name, str(e), trio.current_time()))
        elif isinstance(action, AddAddresses):
            # Raw rtnetlink, well under a millisecond: inline, since a hand-over
            # to a worker thread costs more than that on a busy 2-core box.
            errors = await self._addresses(action, self._add_and_hold, "addresses_added", inline=True)
            if len(errors) < len(action.addresses):    # some are up: the flows pass here now
                self.dispatch(self.node.addresses_added(action.group, trio.current_time()))
        elif isinstance(action, RemoveAddresses):
            # A burst still announcing these addresses as ours would point the
            # neighbours back at us after the new master's own announcements.
            scope = self._announcing.pop(action.group, None)
            if scope is not None:
                scope.cancel()
            if self.leases is not None:
                self.leases.release(action.interface, action.addresses)
            await self._addresses(action, kaddr.remove_addresses, "addresses_removed")
        elif isinstance(action, Announce):
            old = self._announcing.pop(action.group, None)
            if old is not None:
                old.cancel()
            scope = self._announcing[action.group] = trio.CancelScope()
            self.nursery.start_soon(self._announce, action, scope)
        elif isinstance(action, RunNotify):
            cfg = action.config or (group.config if group else None)
            if cfg is not None:
                self.hooks.submit(HookRun(cfg.notify, action.group, action.state.value,
                                          action.priority, cfg.notify_timeout_ms / 1000,
                                          self.config.node.run_as))
        else:                                  # the takeover commit (node/actions.py)
            await self.commit(action)

    def _add_and_hold(self, interface: str, addresses: tuple[str, ...]) -> list[str]:
        """Add with the configured lifetime, then keep renewing what was added."""
        if self.leases is None:
            return kaddr.add_addresses(interface, addresses)
        failed = kaddr.add_addresses_detail(interface, addresses, self.leases.lifetime_s)
        self.leases.hold(interface, tuple(a for a in addresses if a not in failed))
        return list(failed.values())

    async def _addresses(self, action, operation, event: str, inline: bool = False) -> list[str]:
        """Add or remove the action's addresses, log the outcome; the errors."""
        start = trio.current_time()
        try:
            if inline:
                errors = operation(action.interface, action.addresses)
            else:
                errors = await trio.to_thread.run_sync(operation, action.interface, action.addresses)
        except kaddr.AddressError as e:
            errors = [str(e)]
        except OSError as e:
            errors = [f"{event}: {e.strerror or e}"]
        ms = round((trio.current_time() - start) * 1000, 1)
        if errors:
            for err in errors:
                self.log("address_error", level="error", group=action.group, error=err)
        else:
            self.log(event, group=action.group, interface=action.interface,
                     addresses=",".join(action.addresses), ms=ms)
        return errors

    async def _announce(self, action: Announce, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await announce(action.interface, action.addresses, action.count, action.interval_ms)
            except AnnounceError as e:
                self.log("announce_failed", level="warning", group=action.group, error=str(e))
        if scope.cancelled_caught:
            self.log("announce_cancelled", group=action.group, reason="no longer master")
        if self._announcing.get(action.group) is scope:
            del self._announcing[action.group]

    # ------------------------------------------------------------------ adverts in

    # Adverts are read by the wire engine, in its own process (meshd/wire/):
    # it hands each authentic one to the node core and, once per read of
    # its channel, the actions to `watch_rejects` and the dispatcher.

    def read_queued(self, now: float) -> list:
        """The adverts the wire engine has forwarded and nobody read yet, fed to
        the node (see ReadFirst)."""
        if self.wire is None:
            return []
        actions = self.wire.read_queued(now)
        self.watch_rejects(actions, now)
        # Silence read through a hung engine is not the master's silence.
        return actions + self.wire.check_silence(time.monotonic())

    # ------------------------------------------------------------------ the flood guard

    def watch_rejects(self, actions: list, now: float) -> None:
        """Tell the flood guard of the rejects and of the senders now known."""
        changed = False
        for a in actions:
            if type(a) is AdvertRejected:
                changed |= self.guard.rejected(a.source or None, now, a.count)
        changed |= self.guard.known(self._known_sources(), now)
        if changed:
            self._apply_guard()

    def _known_sources(self) -> set[str]:
        """The configured unicast peers, and the sources of the adverts that
        passed every check (the core's peer table)."""
        known = {p for g in self.config.groups for p in g.peers}
        for g in self.node.election.groups.values():
            for peer in g.peers.values():
                known.add(peer["source"])
        return known

    def _apply_guard(self) -> None:
        """Attach or remove the socket filter as the guard says (meshd/kernel/sockfilter.py)."""
        sockfilter.apply_guard(self.guard, self.sockets.socks, self.log, "flood_guard")


    # ------------------------------------------------------------------ links and tracks

    async def _link_loop(self, monitor: LinkMonitor) -> None:
        await monitor.run(lambda ev: self._on_link(ev.name, ev.up and not ev.deleted)
                          if ev.name in self.watched_interfaces() else None)

    def _on_link(self, name: str | None, up: bool) -> None:
        """A watched link changed (or was read afresh: the core ignores repeats)."""
        if name is None:
            return
        if up and self.node.election.started:
            for g in self.config.groups:
                if g.interface == name and not g.peers:
                    self._join(g)
        actions = self.node.link(name, up, trio.current_time())
        if actions:
            self.log("link", interface=name, up=up)
        self.dispatch(actions)

    async def refresh_links(self, old: Config) -> None:
        """After a reload: drop demotions of tracks that are gone, learn the state of new links."""
        wanted = {(t.demotion_group, f"link:{t.interface}") for t in self.config.track_interfaces}
        for t in old.track_interfaces:
            key = (t.demotion_group, f"link:{t.interface}")
            if key not in wanted:
                self.dispatch(self.node.track_gone(*key, t.weight, f"track of {t.interface} removed",
                                                   trio.current_time()))
        state = await trio.to_thread.run_sync(initial_state, self.watched_interfaces())
        for name, up in state.items():
            self._on_link(name, up)

    def start_tracks(self, previous: tuple = ()) -> None:
        """(Re)start the track scripts; what the previous ones had raised is cleared."""
        if self._tracks_scope is not None:
            self._tracks_scope.cancel()
        for t in previous:
            self.dispatch(self.node.track_gone(t.demotion_group, f"script:{t.name}", t.weight,
                                               "track script restarted by reload", trio.current_time()))
        scope = self._tracks_scope = trio.CancelScope()

        async def tracks():
            with scope:
                async with trio.open_nursery() as n:
                    for t in self.config.track_scripts:
                        n.start_soon(run_track_script, t, self._on_script, self.log,
                                     lambda: self.config.node.run_as)
                    await trio.sleep_forever()
        self.nursery.start_soon(tracks)

    def _on_script(self, t, healthy: bool, reason: str) -> None:
        self.dispatch(self.node.track_script(t, healthy, reason, trio.current_time()))

    # ------------------------------------------------------------------ reload

    def prepare_reload(self, new: Config) -> None:
        """What can fail, before anything changes: sockets for new advert families.
        Raises TransportError."""
        self.sockets.open({election_family(g) for g in new.groups})

    def reconfigure(self, old: Config, new: Config) -> None:
        """After the node core took the new configuration: sockets, joins, tracks, links."""
        self.config = new
        self.join_all()
        if new.track_scripts != old.track_scripts:
            self.start_tracks(old.track_scripts)
        if new.track_interfaces != old.track_interfaces or \
                {g.interface for g in new.groups} != {g.interface for g in old.groups}:
            self.nursery.start_soon(self.refresh_links, old)


class ReadFirst:
    """The node core as its timer sees it: before an election deadline is acted
    upon, the adverts already queued on the sockets are read.

    After the event loop was busy (a big commit, a starved CPU), the timer and
    the receive task become runnable together; if the timer ran first, a
    backup would take over from a master whose adverts sit unread in its
    socket buffer.  Only a backup's master-down waits for the reading: a
    master's advert does not (under a flood of forged adverts the queue can
    take a few hundred ms to read, and a late advert is what makes a backup
    take over; tests/lab/test_flood_lab.py).
    """

    def __init__(self, node, shell: ElectionShell, dispatch: Callable[[list], None]):
        self.node = node
        self.shell = shell
        self.dispatch = dispatch

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()

    def handle_timer(self, now: float) -> list:
        master_down = self.node.election.next_master_down()
        if master_down is not None and master_down <= now:
            actions = self.shell.read_queued(now)
            if actions:
                # Handled first: the deadline may have moved (an advert re-arms it).
                self.dispatch(actions)
        return self.node.handle_timer(now)
