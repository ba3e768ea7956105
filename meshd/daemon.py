"""The trio shell: one nursery wiring sockets, kernel, hooks and control to the cores.

The election core decides; this module carries out its actions.  Actions of
one group run strictly in order on that group's executor (the failover
ordering: commit, addresses, announce, advert, notify), while groups do not
wait for each other, so a slow takeover of one group never delays the adverts
of another.
"""

from __future__ import annotations

import ipaddress
import math
import os
import signal
from functools import partial
from typing import Any

import trio

from . import __version__
from .commands import ControlError, require, unknown_command
from .config import Config, ConfigError, load_config
from .control.server import serve_control
from .crypto import ELECTION_INFO, KeyRing
from .election.actions import (AddAddresses, AdvertRejected, Announce, DemotionChanged,
                               PrepareTakeover, RemoveAddresses, RunNotify, SendAdvert,
                               StateChanged)
from .election.core import ElectionCore
from .election.transport import ElectionSockets, TransportError
from .hooks import HookRun, HookRunner
from .kernel import addresses as kaddr
from .kernel.announce import AnnounceError, announce
from .kernel.leases import AddressLeases
from .kernel.links import LinkMonitor, initial_state
from .lifecycle import (DUMP_SIGNALS, HANDLED_SIGNALS, IGNORED_SIGNALS, RELOAD_SIGNALS, Readiness,
                        signal_name, status_line, write_dump)
from .log import EventLog, RateLimiter
from .reload import ReloadOutcome, keys_changed, plan_reload
from .replay import ReplayGuard
from .sdnotify import Notifier
from .state import StateStore
from .timers import CoreTimer
from .track.scripts import run_track_script

REPLAY_SAVE_INTERVAL = 10.0
SHUTDOWN_GRACE = 5.0
# While the state mesh is not in sync (start-up, resync), every group is demoted
# by this much, so the node never becomes master with half of its peers' flows.
SYNC_DEMOTION = 200
SYNC_COMMANDS = ("dump", "flush", "commit", "resync", "stats")
HEALTH_COMMANDS = ("show", "host", "table", "redirect")
# A redirect with no live host raises its `demote` counter by this much: as a
# failed sync set, enough to hand the addresses to a node that can still serve.
HEALTH_DEMOTION = 100
SYNC_REPLAY_FILE = "sync-replay.json"
SYNC_REPLAY_WINDOW = 4096


class StartupError(Exception):
    pass


class GroupExecutor:
    """Carries out one group's actions in order, in its own task."""

    def __init__(self, daemon: "Daemon", group: str):
        self.daemon = daemon
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
                await self.daemon.carry_out(action)
            except Exception as e:  # one failed action must not stop the group
                self.daemon.log("action_failed", level="error", group=self.group,
                                action=type(action).__name__, error=repr(e))


def _virtual_addresses(config: Config) -> set[str]:
    """Every group's virtual addresses, without prefix length."""
    return {a.split("/")[0] for g in config.groups for a in g.addresses}


def election_family(group) -> int:
    """Family the group's adverts use: its peers' if unicast, else its first address's."""
    if group.peers:
        return ipaddress.ip_address(group.peers[0]).version
    return group.family


class _ReadFirst:
    """The election core as its timer sees it: before a deadline is acted upon,
    the adverts already queued on the sockets are read.

    After the event loop was busy (a big commit, a starved CPU), the timer and
    the receive task become runnable together; if the timer ran first, a
    backup would take over from a master whose adverts sit unread in its
    socket buffer.
    """

    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon

    def next_deadline(self) -> float | None:
        return self.daemon.core.next_deadline()

    def handle_timer(self, now: float) -> list:
        d = self.daemon
        actions: list = []
        for family in list(d.sockets.socks):
            for _ in range(64):
                try:
                    dg = d.sockets.receive_nowait(family)
                except OSError:
                    break
                if dg is None:
                    break
                actions += d.advert_received(dg, now)
        if actions:
            # Handled first: the deadline may have moved (an advert re-arms it).
            d.dispatch(actions)
            if (deadline := d.core.next_deadline()) is None or deadline > now:
                return []
        return d.core.handle_timer(now)


class Daemon:
    def __init__(self, config: Config, log: EventLog, notifier: Notifier | None = None):
        self.config = config
        self.log = log
        # Read (and scrubbed from the environment) before any hook is started.
        self.notifier = notifier if notifier is not None else Notifier.from_environment()
        self.readiness = Readiness(with_sync=config.sync is not None)
        self._status_sent: str | None = None
        self._in_sync: bool | None = None
        self.store = StateStore(config.node.state_dir)
        self.sockets = ElectionSockets(config.cluster.port, config.cluster.multicast_v4,
                                       config.cluster.multicast_v6)
        self.hooks = HookRunner(log)
        self.executors: dict[str, GroupExecutor] = {}
        self.reject_log = RateLimiter()
        self.core: ElectionCore | None = None
        self.nursery: trio.Nursery | None = None
        self._tracks_scope: trio.CancelScope | None = None
        self._stopping = False
        self.sync = None
        self.health = None
        self._announcing: dict[str, trio.CancelScope] = {}   # group -> its GARP/NA burst
        lifetime = config.node.address_lifetime_s
        self.leases = AddressLeases(lifetime, log) if lifetime else None
        self._reload_lock = trio.Lock()      # SIGHUP and meshctl reload: one at a time
        self._receiving: set[int] = set()    # families whose receive loop runs

    # ------------------------------------------------------------------ start

    def _prepare(self) -> None:
        """Everything that can fail before the daemon touches the network."""
        cfg = self.config
        try:
            os.makedirs(cfg.node.run_dir, mode=0o750, exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot create run directory {cfg.node.run_dir}: {e.strerror}") from None
        try:
            self.store.ensure()
            replay = ReplayGuard()
            replay.restore(self.store.load_replay_marks())
            epoch = self.store.next_epoch()
        except Exception as e:
            raise StartupError(str(e)) from None
        keys = KeyRing.from_secrets(cfg.secrets, cfg.cluster.send_key, ELECTION_INFO)
        self.core = ElectionCore(cfg.node.id, cfg.groups, keys, epoch, replay=replay)
        self.timer = CoreTimer(_ReadFirst(self), self.dispatch)
        if cfg.sync is not None:
            from .sync.service import SyncService  # conntrack needs root: only when configured
            try:
                sync_replay = ReplayGuard(window=SYNC_REPLAY_WINDOW)
                sync_replay.restore(self.store.load_replay_marks(SYNC_REPLAY_FILE))
            except Exception as e:
                raise StartupError(str(e)) from None
            try:
                self.sync = SyncService(cfg, epoch, self.log, self._on_sync_state, sync_replay)
                self.sync.open()
            except OSError as e:
                raise StartupError(f"state mesh: cannot open its sockets: {e.strerror or e}") from None
            self.core.set_demotion("all", "sync", SYNC_DEMOTION, 0.0, "state mesh not in sync yet")
        if cfg.health is not None:
            from .health.service import HealthService
            from .kernel.nft import NftError
            try:
                self.health = HealthService(cfg, self.log, self._on_health_demote)
                self.health.open()
            except (NftError, OSError) as e:
                raise StartupError(f"health: cannot set up nftables table "
                                   f"{cfg.health.nft_table!r}: {e}") from None
        try:
            self.sockets.open({election_family(g) for g in cfg.groups})
        except TransportError as e:
            raise StartupError(str(e)) from None

    async def run(self) -> None:
        self._prepare()
        if self.leases is not None:
            self.leases.start()
        try:
            await self._run()
        finally:
            self._drop_held_addresses()

    def _drop_held_addresses(self) -> None:
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

    async def _run(self) -> None:
        cfg = self.config
        self.log("started", node=cfg.node.name, node_id=cfg.node.id, epoch=self.core.epoch,
                 version=__version__, groups=",".join(g.name for g in cfg.groups),
                 config=cfg.path)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                await nursery.start(partial(serve_control, log=self.log),
                                    cfg.node.control_socket, self.handle_control)
            except OSError as e:
                raise StartupError(str(e)) from None
            nursery.start_soon(self.hooks.run)
            await self._reconcile_addresses(cfg)
            # Subscribe before reading the initial state, so no change falls in between.
            monitor = LinkMonitor(log=self.log)
            for name, up in (await trio.to_thread.run_sync(initial_state, self._watched_interfaces())).items():
                self._on_link(name, up)
            self._join_all()
            if self.sync is not None:
                vips = {a.split("/")[0] for g in cfg.groups for a in g.addresses}
                self.sync.set_local_addresses(vips | await trio.to_thread.run_sync(kaddr.node_addresses))
                await self.sync.run(nursery)
            if self.health is not None:
                await self.health.run(nursery)
            # Not the `now` from before the state mesh's start-up: its table dump
            # can take a while, and a stale `now` arms an expired master-down timer.
            self.dispatch(self.core.start(trio.current_time()))
            self.readiness.groups_started(trio.current_time())
            self._tell_supervisor()
            if self.notifier.last_error:
                self.log("notify_problem", level="warning", error=self.notifier.last_error)
            for family in list(self.sockets.socks):
                nursery.start_soon(self._receive_loop, family)
            nursery.start_soon(self.timer.run)
            nursery.start_soon(self._link_loop, monitor)
            nursery.start_soon(self._save_replay_loop)
            nursery.start_soon(self._liveness_loop)
            nursery.start_soon(self._signal_loop)
            self._start_tracks()

    async def _reconcile_addresses(self, cfg: Config) -> None:
        """An earlier instance may have left addresses behind (a crash with
        address_lifetime_s = 0, or a restart within the lifetime); a new boot
        starts without them, before it joins any group."""
        for g in cfg.groups:
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

    def _watched_interfaces(self) -> list[str]:
        names = {g.interface for g in self.config.groups}
        names.update(t.interface for t in self.config.track_interfaces)
        return sorted(names)

    def _join_all(self) -> None:
        for g in self.config.groups:
            if not g.peers:
                self._join(g)

    def _join(self, g) -> None:
        try:
            self.sockets.join(election_family(g), g.interface)
        except TransportError as e:
            self.log("multicast_join", level="warning", group=g.name, error=str(e))

    # ------------------------------------------------------------- dispatching

    def dispatch(self, actions: list) -> None:
        """Log events now; queue everything else on its group's executor."""
        status_changed = False
        for action in actions:
            if isinstance(action, StateChanged):
                self.log("state", group=action.group, old=action.old.value,
                         new=action.new.value, reason=action.reason)
                status_changed = True
            elif isinstance(action, AdvertRejected):
                ok, suppressed = self.reject_log.allow((action.reason, action.source),
                                                      trio.current_time())
                if ok:
                    self.log("advert_rejected", level="warning", reason=action.reason,
                             source=action.source, detail=action.detail,
                             suppressed=suppressed or None)
            elif isinstance(action, DemotionChanged):
                self.log("demotion", name=action.name, value=action.value, reason=action.reason)
                status_changed = True
            else:
                self._executor(action.group).submit(action)
        if status_changed:
            self._tell_supervisor()
        self.timer.kick()

    def _tell_supervisor(self) -> None:
        """READY=1 once start-up is done, and STATUS= whenever the summary changes."""
        if self.readiness.groups_started_at is None:
            return
        groups = self.core.status(trio.current_time())["groups"]
        line = status_line(groups, self._in_sync)
        if self.readiness.check(trio.current_time(), [g["state"] for g in groups]):
            self.notifier.ready(line)
            self._status_sent = line
            self.log("ready", status=line)
        elif line != self._status_sent and self.readiness.ready:
            self.notifier.status(line)
            self._status_sent = line

    def _executor(self, group: str) -> GroupExecutor:
        ex = self.executors.get(group)
        if ex is None:
            ex = self.executors[group] = GroupExecutor(self, group)
            self.nursery.start_soon(ex.run)
        return ex

    async def carry_out(self, action: Any) -> None:
        group = self.core.groups.get(action.group)
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
                    self.dispatch(self.core.send_failed(cfg.name, trio.current_time(), str(e)))
        elif isinstance(action, PrepareTakeover):
            # Step 1 of the failover ordering: the replicated flows go into the
            # kernel before the addresses move.
            if self.sync is not None and group is not None:
                await self.sync.commit_for_takeover(group.config, action.from_node)
        elif isinstance(action, AddAddresses):
            # Raw rtnetlink, well under a millisecond: inline, since a hand-over
            # to a worker thread costs more than that on a busy 2-core box.
            await self._addresses(action, self._add_and_hold, "addresses_added", inline=True)
            if self.sync is not None:
                self.sync.addresses_moved()
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
                                          action.priority, cfg.notify_timeout_ms / 1000))

    def _add_and_hold(self, interface: str, addresses: tuple[str, ...]) -> list[str]:
        """Add with the configured lifetime, then keep renewing what was added."""
        if self.leases is None:
            return kaddr.add_addresses(interface, addresses)
        failed = kaddr.add_addresses_detail(interface, addresses, self.leases.lifetime_s)
        self.leases.hold(interface, tuple(a for a in addresses if a not in failed))
        return list(failed.values())

    async def _addresses(self, action, operation, event: str, inline: bool = False) -> None:
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

    # ------------------------------------------------------------------ loops

    async def _receive_loop(self, family: int) -> None:
        self._receiving.add(family)
        while True:
            try:
                d = await self.sockets.receive(family)
            except OSError as e:
                self.log("receive_error", level="warning", family=family, error=e.strerror or str(e))
                await trio.sleep(0.01)
                continue
            self.dispatch(self.advert_received(d, trio.current_time()))

    def advert_received(self, d, now: float) -> list:
        return self.core.receive(d.data, d.source, now, ttl=d.ttl, interface=d.interface)

    async def _link_loop(self, monitor: LinkMonitor) -> None:
        await monitor.run(lambda ev: self._on_link(ev.name, ev.up and not ev.deleted)
                          if ev.name in self._watched_interfaces() else None)

    def _on_link(self, name: str | None, up: bool) -> None:
        """A watched link changed (or was read afresh: the core ignores repeats)."""
        if name is None:
            return
        now = trio.current_time()
        if up and self.core.started:
            for g in self.config.groups:
                if g.interface == name and not g.peers:
                    self._join(g)
        actions = self.core.set_interface(name, up, now)
        for t in self.config.track_interfaces:
            if t.interface == name:
                actions += self._track_changed(t.demotion_group, f"link:{name}", t.weight, not up,
                                               f"tracked interface {name} {'up' if up else 'down'}")
        if actions:
            self.log("link", interface=name, up=up)
        self.dispatch(actions)

    async def _refresh_links(self, old: Config) -> None:
        """After a reload: drop demotions of tracks that are gone, learn the state of new links."""
        wanted = {(t.demotion_group, f"link:{t.interface}") for t in self.config.track_interfaces}
        for t in old.track_interfaces:
            key = (t.demotion_group, f"link:{t.interface}")
            if key not in wanted:
                self.dispatch(self._track_changed(*key, t.weight, False, f"track of {t.interface} removed"))
        state = await trio.to_thread.run_sync(initial_state, self._watched_interfaces())
        for name, up in state.items():
            self._on_link(name, up)

    def _start_tracks(self, previous: tuple = ()) -> None:
        """(Re)start the track scripts; what the previous ones had raised is cleared."""
        if self._tracks_scope is not None:
            self._tracks_scope.cancel()
        for t in previous:
            self.dispatch(self._track_changed(t.demotion_group, f"script:{t.name}", t.weight,
                                              False, "track script restarted by reload"))
        scope = self._tracks_scope = trio.CancelScope()

        async def tracks():
            with scope:
                async with trio.open_nursery() as n:
                    for t in self.config.track_scripts:
                        n.start_soon(run_track_script, t, self._on_script, self.log)
                    await trio.sleep_forever()
        self.nursery.start_soon(tracks)

    def _on_script(self, t, healthy: bool, reason: str) -> None:
        self.dispatch(self._track_changed(t.demotion_group, f"script:{t.name}", t.weight,
                                          not healthy, f"track script {t.name}: {reason}"))

    def _track_changed(self, counter: str, source: str, weight: int, failed: bool,
                       reason: str) -> list:
        """A track's weight demotes; weight 0 means FAULT instead (keepalived's convention)."""
        now = trio.current_time()
        if weight == 0:
            label = source.replace("link:", "tracked interface ").replace("script:", "track script ")
            return self.core.set_tracked_fault(counter, f"{label} failed", failed, now)
        return self.core.set_demotion(counter, source, weight if failed else 0, now, reason)

    async def _liveness_loop(self) -> None:
        """Show that the event loop runs: to the address leases (kernel/leases.py)
        and to systemd's watchdog, which restarts a daemon whose loop is stuck.
        Also where a start-up still waiting for the state mesh is called done."""
        periods = [p for p in (self.leases and self.leases.interval / 2,
                               self.notifier.watchdog_interval, 1.0) if p]
        period = min(periods)
        while True:
            if self.leases is not None:
                self.leases.feed()
            self.notifier.watchdog()
            if not self.readiness.ready:
                self._tell_supervisor()
            await trio.sleep(period)

    def _replay_guards(self) -> list[tuple[str, ReplayGuard]]:
        guards = [("replay.json", self.core.replay)]
        if self.sync is not None:
            guards.append((SYNC_REPLAY_FILE, self.sync.core.replay))
        return guards

    async def _save_replay_loop(self) -> None:
        last: dict[str, dict] = {}
        while True:
            await trio.sleep(REPLAY_SAVE_INTERVAL)
            for name, guard in self._replay_guards():
                snap = guard.snapshot()
                if snap != last.get(name):
                    await self._save_replay(snap, name)
                    last[name] = snap

    async def _save_replay(self, snap: dict, name: str = "replay.json") -> None:
        try:
            await trio.to_thread.run_sync(self.store.save_replay_marks, snap, name)
        except OSError as e:
            self.log("state_save_failed", level="error", error=e.strerror or str(e))

    async def _signal_loop(self) -> None:
        """See lifecycle.py for what each signal does (and which cannot be caught)."""
        for signum in IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            async for signum in signals:
                if signum in RELOAD_SIGNALS:
                    await self._reload_supervised("SIGHUP")
                elif signum in DUMP_SIGNALS:
                    await self._write_dump(signum)
                else:
                    await self.stop(signal_name(signum))
                    return

    async def _reload_supervised(self, why: str) -> ReloadOutcome:
        """A reload as systemd sees it: RELOADING=1, the reload, READY=1."""
        self.notifier.reloading()
        self.log.reopen()                    # a log file moved away by logrotate (never raises)
        try:
            result = await self.reload()
        finally:
            self.notifier.ready(status_line(self.core.status(trio.current_time())["groups"],
                                            self._in_sync))
        return result

    async def _write_dump(self, signum: int) -> None:
        """SIGUSR1: the state (meshctl status, the state mesh's and health's
        summaries); SIGUSR2: the statistics; as JSON files under run_dir."""
        name = DUMP_SIGNALS[signum]
        try:
            if signum == signal.SIGUSR1:
                data = {"status": await self.handle_control({"cmd": "status"}),
                        "addresses_held": self.leases.held() if self.leases else None}
                if self.health is not None:
                    data["health"] = await self.handle_control({"cmd": "show", "what": "summary"})
            else:
                data = {"election": {g["name"]: {"adverts": g["adverts"], "transitions": g["transitions"]}
                                     for g in self.core.status(trio.current_time())["groups"]},
                        "rejected": dict(self.core.rejected)}
                if self.sync is not None:
                    data["sync"] = await self.handle_control({"cmd": "stats"})
                if self.leases is not None:
                    data["address_leases"] = {"renewals": self.leases.renewals,
                                              "errors": self.leases.errors, "stalls": self.leases.stalls}
            path = await trio.to_thread.run_sync(write_dump, self.config.node.run_dir, name, data)
        except (OSError, ControlError) as e:
            self.log("dump_failed", level="error", signal=signal_name(signum),
                     error=getattr(e, "strerror", None) or str(e))
            return
        self.log("dump_written", signal=signal_name(signum), path=path)

    async def stop(self, why: str) -> None:
        """Bow out of every group, drop the addresses, save state, end the nursery."""
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping()
        self.log("stopping", reason=why)
        self.dispatch(self.core.shutdown(trio.current_time(), f"shutting down ({why})"))
        with trio.move_on_after(SHUTDOWN_GRACE):
            for ex in list(self.executors.values()):
                await ex.drain()
        for name, guard in self._replay_guards():
            await self._save_replay(guard.snapshot(), name)
        if self.health is not None:
            with trio.move_on_after(SHUTDOWN_GRACE):
                await self.health.close()
        self.log("stopped")
        self.nursery.cancel_scope.cancel()

    # ---------------------------------------------------------------- reload

    async def reload(self) -> ReloadOutcome:
        """Read the configuration file again and apply all of it, or nothing.

        SIGHUP and `meshctl reload` both come here, one at a time.  What can
        change live and what needs a restart is meshd/reload.py's to say; a
        plan with a refusal is refused whole, and the running configuration
        stays in force.  Returns what was applied, refused, or why the reload
        failed; the log says the same (reloaded / reload_unchanged /
        reload_refused / reload_failed), and says "reloaded" only when
        everything was applied.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> ReloadOutcome:
        old = self.config
        if self.nursery is None or not self.core.started:
            # The shells are not all running yet: a change could not reach them.
            why = "meshd is still starting; reload once it runs"
            self.log("reload_failed", level="error", config=old.path, errors=[why])
            return ReloadOutcome.failing([why], "nothing was applied")
        try:
            new = load_config(old.path)
        except ConfigError as e:
            self.log("reload_failed", level="error", config=old.path, errors=e.problems)
            return ReloadOutcome.failing(e.problems, f"{len(e.problems)} error(s) in the file")
        plan = plan_reload(old, new)
        if plan.refusals:
            self.log("reload_refused", level="error", config=old.path, refused=list(plan.refusals))
            return ReloadOutcome.refusing(plan.refusals)
        if not plan.changes:
            self.log("reload_unchanged", config=old.path)
            return ReloadOutcome()
        problem = await self._prepare_reload(old, new)
        if problem is not None:
            self.log("reload_failed", level="error", config=old.path, errors=[problem])
            return ReloadOutcome.failing([problem], "nothing was applied")
        self._apply_reload(old, new)
        self.log("reloaded", config=new.path, changes=list(plan.changes))
        return ReloadOutcome(applied=plan.changes)

    async def _prepare_reload(self, old: Config, new: Config) -> str | None:
        """The steps of a reload that can fail, before anything changes; the problem, or None.

        Opening a socket for a new advert family changes nothing the running
        configuration depends on; meshd's nftables table is rebuilt in one
        transaction, so on error it stays as it was.
        """
        try:
            self.sockets.open({election_family(g) for g in new.groups})
        except TransportError as e:
            return str(e)
        if self.health is not None and new.health != old.health:
            from .kernel.nft import NftError
            try:
                await self.health.prepare_reload(new)
            except (NftError, OSError) as e:
                return f"health: cannot rebuild nftables table {old.health.nft_table!r}: {e}"
        return None

    def _apply_reload(self, old: Config, new: Config) -> None:
        """Everything else, with no checkpoint in between: no task sees half of it."""
        now = trio.current_time()
        self.config = new
        for family in self.sockets.socks:
            if family not in self._receiving:
                self._receiving.add(family)
                self.nursery.start_soon(self._receive_loop, family)
        if keys_changed(old, new):
            # Before the groups: a bow-out of a changed group goes out under the new send key.
            self.core.keys = KeyRing.from_secrets(new.secrets, new.cluster.send_key, ELECTION_INFO)
        self.dispatch(self.core.reconfigure(new.groups, now))
        self._join_all()
        if self.sync is not None:
            if new.sync != old.sync or keys_changed(old, new):
                self.sync.reconfigure(new)
            if _virtual_addresses(new) != _virtual_addresses(old):
                self.nursery.start_soon(self._refresh_sync_addresses)
        if self.health is not None and new.health != old.health:
            self.health.apply_reload(new)
        if new.track_scripts != old.track_scripts:
            self._start_tracks(old.track_scripts)
        if new.track_interfaces != old.track_interfaces or \
                {g.interface for g in new.groups} != {g.interface for g in old.groups}:
            self.nursery.start_soon(self._refresh_links, old)

    async def _refresh_sync_addresses(self) -> None:
        """The state mesh ignores flows to this node's addresses: the virtual ones changed."""
        try:
            own = await trio.to_thread.run_sync(kaddr.node_addresses)
        except OSError as e:
            self.log("sync_addresses_failed", level="error", error=e.strerror or str(e))
            return
        self.sync.set_local_addresses(_virtual_addresses(self.config) | own)

    # --------------------------------------------------------------- control

    def _on_sync_state(self, in_sync: bool, reason: str) -> None:
        self._in_sync = in_sync
        self.readiness.sync_verdict(in_sync)
        self.dispatch(self.core.set_demotion("all", "sync", 0 if in_sync else SYNC_DEMOTION,
                                             trio.current_time(), f"state mesh: {reason}"))
        self._tell_supervisor()

    def _on_health_demote(self, counter: str, on: bool, reason: str) -> None:
        self.dispatch(self.core.set_demotion(counter, "health", HEALTH_DEMOTION if on else 0,
                                             trio.current_time(), f"health: {reason}"))

    async def handle_control(self, request: dict) -> dict:
        cmd = request.get("cmd")
        now = trio.current_time()
        if cmd in HEALTH_COMMANDS:
            if self.health is None:
                raise ControlError(f"{cmd}: health checks are not configured (no [health] section)")
            return await self.health.handle_control(cmd, request)
        if cmd in SYNC_COMMANDS:
            if self.sync is None:
                raise ControlError(f"{cmd}: the state mesh is not configured (no [sync] section)")
            return await self.sync.handle_control(cmd, request)
        if cmd == "status":
            return {"node": self.config.node.name, "version": __version__,
                    **self.core.status(now)}
        if cmd == "reload":
            outcome = await self._reload_supervised("meshctl reload")
            if outcome.refused:
                raise ControlError(outcome.error, refused=list(outcome.refused))
            if not outcome.ok:
                raise ControlError(outcome.error)
            return {"applied": list(outcome.applied)}
        if cmd in ("demote", "promote"):
            name = require(request, "name", str)
            known = self.config.demotion_names()
            if name not in known:
                raise ControlError(f"{cmd}: unknown demotion counter \"{name}\" "
                                   f"(known: {', '.join(sorted(known))})")
            if cmd == "demote":
                by = require(request, "by", int, lo=-(2**32), hi=2**32)
                self.dispatch(self.core.operator_demote(name, by, now))
            else:
                self.dispatch(self.core.operator_promote(name, now))
            return {"name": name, "value": self.core.counter_value(name)}
        if cmd in ("enable", "disable"):
            group = require(request, "group", str)
            if group not in self.core.groups:
                raise ControlError(f"{cmd}: unknown group \"{group}\" "
                                   f"(known: {', '.join(sorted(self.core.groups))})")
            method = self.core.enable if cmd == "enable" else self.core.disable
            self.dispatch(method(group, now))
            return {"group": group, "state": self.core.groups[group].state.value}
        raise unknown_command(cmd)
