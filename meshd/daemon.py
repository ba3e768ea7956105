"""The daemon: one trio nursery wiring the node core to its shells.

The node core (meshd/node/core.py) decides, with every rule between the
engines; the shells carry out its actions: the election's (sockets,
addresses, announcements, hooks, links, tracks: election/shell.py), the
state mesh's (conntrack, UDP: sync/shell.py) and health's (checks,
nftables: health/shell.py).  `dispatch` sends each action to its shell and
logs the events; one timer task wakes the node core at its next deadline.

Here too: the start-up order, the bow-out at stop, reload (all or nothing:
meshd/reload.py), the replay marks on disk, the operator's commands, and
the metrics endpoint's snapshot (meshd/metrics/: served from its own
threads, the snapshot copied here on the event loop).

Must not: hold a rule of the cores (a decision here would escape the
simulator, tests/sim/).
"""

from __future__ import annotations

import os
from functools import partial

import trio

from . import __version__, fastct
from .commands import ControlError, require, unknown_command
from .config import Config, ConfigError, load_config
from .control.server import serve_control
from .election.actions import (AddAddresses, AdvertRejected, Announce, DemotionChanged, RemoveAddresses,
                               RunNotify, SendAdvert, StateChanged)
from .election.shell import ElectionShell, ReadFirst
from .election.transport import TransportError
from .health.actions import CancelCheck, DeleteStates, Log, SetBackends, StartCheck
from .kernel import addresses as kaddr
from .log import EventLog, RejectLog
from .metrics import snapshot as metrics_snapshot
from .metrics.collector import MeshdCollector, SnapshotUnavailable
from .metrics.server import LoopSnapshots, MetricsError, MetricsServer, RefusedConnections, registry_for
from .node.actions import (CommitFlows, DumpKernel, FlowsAdopted, FlowsNotAdopted, KernelResynced,
                           SplitBrain, TakeoverSkipped, WaitApplied)
from .node.core import NodeCore
from .reload import ReloadOutcome, keys_changed, plan_reload
from .wire.remote import WireEngine
from .replay import ReplayGuard
from .sdnotify import Notifier
from .state import StateStore
from .supervision import Supervision
from .sync.actions import ExternalChanged, FrameRejected, PeerChanged, SendFrame, SyncState
from .timers import CoreTimer

REPLAY_SAVE_INTERVAL = 10.0
SHUTDOWN_GRACE = 5.0
SYNC_COMMANDS = ("dump", "flush", "commit", "resync", "stats")
HEALTH_COMMANDS = ("show", "host", "table", "redirect")
SYNC_REPLAY_FILE = "sync-replay.json"
SYNC_REPLAY_WINDOW = 4096

# Which shell carries out which action.
ELECTION_ACTIONS = (SendAdvert, AddAddresses, RemoveAddresses, Announce, RunNotify, CommitFlows,
                    WaitApplied)
SYNC_ACTIONS = (ExternalChanged, DumpKernel, KernelResynced, PeerChanged, FrameRejected, FlowsAdopted,
                FlowsNotAdopted, TakeoverSkipped)
HEALTH_ACTIONS = (StartCheck, CancelCheck, SetBackends, DeleteStates, Log)


class StartupError(Exception):
    pass


def _virtual_addresses(config: Config) -> set[str]:
    """Every group's virtual addresses, without prefix length."""
    return {a.split("/")[0] for g in config.groups for a in g.addresses}


class Daemon:
    def __init__(self, config: Config, log: EventLog, notifier: Notifier | None = None):
        self.config = config
        self.log = log
        # Read (and scrubbed from the environment) before any hook is started.
        self.supervision = Supervision(self, notifier if notifier is not None else Notifier.from_environment())
        self.store = StateStore(config.node.state_dir)
        # Bounded per reason, whatever the sources (a flood of forgeries): meshd/log.py.
        self.reject_log = RejectLog(log, "advert_rejected")
        self.node: NodeCore | None = None
        self.election: ElectionShell | None = None
        self.wire: WireEngine | None = None
        self.sync = None
        self.health = None
        self.relays = None                   # meshd/relay/remote.py's RelayEngine, with [[health.relay]]
        self.nursery: trio.Nursery | None = None
        self.metrics: MetricsServer | None = None
        self._metrics_registry = None        # one collector for every endpoint a reload binds
        self._metrics_refused = None         # the endpoint's refused connections, across reloads too
        self._next_metrics: MetricsServer | None = None   # bound by a reload's prepare step
        self._stopping = False
        self._reload_lock = trio.Lock()      # SIGHUP and meshctl reload: one at a time

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
            sync_replay = None
            if cfg.sync is not None:
                sync_replay = ReplayGuard(window=SYNC_REPLAY_WINDOW)
                sync_replay.restore(self.store.load_replay_marks(SYNC_REPLAY_FILE))
            epoch = self.store.next_epoch()
        except Exception as e:
            raise StartupError(str(e)) from None
        self.node = NodeCore(cfg, epoch, election_replay=replay, sync_replay=sync_replay)
        self.election = ElectionShell(cfg, self.node, self.dispatch, self._commit, self.log)
        self.timer = CoreTimer(ReadFirst(self.node, self.election, self.dispatch), self.dispatch)
        if cfg.sync is not None:
            from .sync.shell import SyncShell  # conntrack needs root: only when configured
            try:
                self.sync = SyncShell(cfg, self.node, self.dispatch, self.log)
                self.sync.open()
            except OSError as e:
                raise StartupError(f"state mesh: cannot open its sockets: {e.strerror or e}") from None
        if cfg.health is not None:
            from .health.shell import HealthShell
            from .kernel.nft import NftError
            try:
                self.health = HealthShell(cfg, self.node, self.dispatch, self.log)
                self.health.open()
            except (NftError, OSError) as e:
                raise StartupError(f"health: cannot set up nftables table "
                                   f"{cfg.health.nft_table!r}: {e}") from None
        try:
            self.election.open()
        except TransportError as e:
            raise StartupError(str(e)) from None
        if cfg.metrics is not None:
            try:
                self.metrics = self._bind_metrics(cfg)
            except MetricsError as e:
                raise StartupError(f"{cfg.path}: metrics.listen: {e}") from None
            self.metrics.start()

    async def run(self) -> None:
        self._prepare()
        try:
            await self._run()
        finally:
            self.election.drop_held_addresses()
            if self.metrics is not None:
                self.metrics.close()

    async def _run(self) -> None:
        cfg = self.config
        self.log("started", node=cfg.node.name, node_id=cfg.node.id, epoch=self.node.election.epoch,
                 version=__version__, groups=",".join(g.name for g in cfg.groups),
                 config=cfg.path, hot_path=fastct.implementation())
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                await nursery.start(partial(serve_control, log=self.log),
                                    cfg.node.control_socket, self.handle_control)
            except OSError as e:
                raise StartupError(str(e)) from None
            # The node's timer first: a kernel dump at start is diffed in its steps.
            nursery.start_soon(self.timer.run)
            await self.election.prepare(nursery)
            if self.sync is not None:
                self.sync.set_local_addresses(_virtual_addresses(cfg) |
                                              await trio.to_thread.run_sync(kaddr.node_addresses))
                await self.sync.run(nursery)
            if self.health is not None:
                await self.health.run(nursery)
                if cfg.health.relays:
                    self._start_relays(cfg)
            # The datagrams from the network are read by the wire engine: deaf
            # until it says hello (no backup's master-down runs meanwhile).
            self.wire = WireEngine(self.node, self.election, self.sync, self.dispatch,
                                   uid=cfg.node.wire_uid, gid=cfg.node.wire_gid, log=self.log)
            self.election.wire = self.wire
            self.dispatch(self.node.wire_engine(False, "wire engine starting", trio.current_time()))
            nursery.start_soon(self.wire.run)
            # Not the `now` from before the state mesh's start-up: its table dump
            # can take a while, and a stale `now` arms an expired master-down timer.
            self.dispatch(self.node.start(trio.current_time()))
            self.supervision.groups_started()
            self.election.run()
            nursery.start_soon(self._save_replay_loop)
            nursery.start_soon(self.supervision.liveness_loop)
            nursery.start_soon(self.supervision.signal_loop)

    # ------------------------------------------------------------- dispatching

    def dispatch(self, actions: list) -> None:
        """Each action to its shell; events logged now."""
        status_changed = False
        health_acted = False
        sync = self.sync
        frames: list = []       # consecutive SendFrames: one batch (one sendmmsg) for them all
        for a in actions:
            if type(a) is SendFrame:                 # by far the most frequent
                frames.append(a)
                continue
            if frames:
                sync.send_frames(frames)
                frames = []
            if isinstance(a, ELECTION_ACTIONS):
                self.election.submit(a)
            elif isinstance(a, StateChanged):
                self.log("state", group=a.group, old=a.old.value, new=a.new.value, reason=a.reason,
                         cause=a.cause.value)
                status_changed = True
            elif isinstance(a, SplitBrain):
                if a.on:
                    self.log("split_brain", level="error", group=a.group,
                             masters=",".join(map(str, a.nodes)),
                             reason="more than one node claims MASTER (their ABOUT frames, 3 s apart)")
                else:
                    self.log("split_brain_ended", group=a.group, masters_were=",".join(map(str, a.nodes)))
            elif isinstance(a, AdvertRejected):
                self.reject_log(a.reason, trio.current_time(), a.count, source=a.source, detail=a.detail)
            elif isinstance(a, DemotionChanged):
                self.log("demotion", name=a.name, value=a.value, reason=a.reason)
                status_changed = True
            elif isinstance(a, SyncState):
                sync.carry_out(a)
                self.supervision.sync_verdict(a.in_sync)
                status_changed = True
            elif isinstance(a, SYNC_ACTIONS):
                sync.carry_out(a)
            elif isinstance(a, HEALTH_ACTIONS):
                self.health.carry_out(a)
                health_acted = True
        if frames:
            sync.send_frames(frames)
        if health_acted and self.relays is not None:
            # In the same step as the redirects' SetBackends: relays follow table health at once.
            self.relays.tables_changed()
        if status_changed:
            self.supervision.changed()
        self.timer.kick()

    def _start_relays(self, cfg: Config) -> None:
        """The relay engine (a child as relay_user), once there are relays."""
        from .relay.remote import RelayEngine
        self.relays = RelayEngine(lambda: self.node.health, cfg.health, log=self.log)
        self.nursery.start_soon(self.relays.run)

    async def _commit(self, action) -> None:
        """A takeover's commit (on the group's executor): the state mesh's to carry out."""
        await self.sync.commit_for_takeover(action)

    # ------------------------------------------------------------------ metrics

    def _bind_metrics(self, config: Config) -> MetricsServer:
        """The endpoint of `config` bound (not serving yet); MetricsError if it cannot be."""
        if self._metrics_registry is None:
            snapshots = LoopSnapshots(self._metrics_snapshot, trio.lowlevel.current_trio_token().run_sync_soon)
            self._metrics_refused = RefusedConnections()
            self._metrics_registry = registry_for(MeshdCollector(snapshots.fetch), self._metrics_refused)
        return MetricsServer(config.metrics, self._metrics_registry, self._metrics_refused)

    def _metrics_snapshot(self) -> metrics_snapshot.Snapshot:
        """On the event loop's thread, between two of its steps (LoopSnapshots).

        A failure is a bug: logged here (the HTTP thread has no log), and the
        scrape is served as one without a snapshot rather than as an error page.
        """
        sync = self.sync
        try:
            return metrics_snapshot.take(self.node, trio.current_time(), node_name=self.config.node.name,
                                         version=__version__,
                                         kernel=sync.reader.stats() if sync is not None else None,
                                         commits=sync.commit_seconds if sync is not None else None,
                                         paths=sync.path_counts() if sync is not None else None,
                                         relays=(self.relays.metrics_rows(trio.current_time())
                                                 if self.relays is not None else None))
        except Exception as e:
            self.log("metrics_snapshot_failed", level="error", error=repr(e))
            raise SnapshotUnavailable(repr(e)) from None

    async def _close_metrics(self, server: MetricsServer) -> None:
        await trio.to_thread.run_sync(server.close)

    # ------------------------------------------------------------------ replay marks

    def _replay_guards(self) -> list[tuple[str, ReplayGuard]]:
        guards = [("replay.json", self.node.election.replay)]
        if self.node.sync is not None:
            guards.append((SYNC_REPLAY_FILE, self.node.sync.replay))
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

    # ------------------------------------------------------------------ stop

    async def stop(self, why: str) -> None:
        """Bow out of every group, drop the addresses, save state, end the nursery."""
        if self._stopping:
            return
        self._stopping = True
        self.supervision.stopping()
        self.log("stopping", reason=why)
        self.dispatch(self.node.shutdown(trio.current_time(), f"shutting down ({why})"))
        with trio.move_on_after(SHUTDOWN_GRACE):
            await self.election.drain()
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
        if self.nursery is None or not self.node.election.started:
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
            self.election.prepare_reload(new)
        except TransportError as e:
            return str(e)
        if self.health is not None and new.health != old.health:
            from .kernel.nft import NftError
            try:
                await self.health.prepare_reload(new)
            except (NftError, OSError) as e:
                return f"health: cannot rebuild nftables table {old.health.nft_table!r}: {e}"
        # Last: nothing after it can fail, so a new endpoint bound here is used.
        self._next_metrics = None
        if new.metrics != old.metrics and new.metrics is not None:
            try:
                self._next_metrics = self._bind_metrics(new)
            except MetricsError as e:
                return f"{new.path}: metrics.listen: {e}"
        return None

    def _apply_reload(self, old: Config, new: Config) -> None:
        """Everything else, with no checkpoint in between: no task sees half of it."""
        self.config = new
        if self.sync is not None:
            # Before the node's frames go out: the shell reads the peers' addresses.
            self.sync.reconfigure(old, new)
        if self.health is not None and new.health != old.health:
            self.health.apply_reload(new)
        if self.health is not None and new.node.run_as != old.node.run_as:
            self.health.set_script_user(new)
        self.dispatch(self.node.reconfigure(old, new, keys_changed(old, new), trio.current_time()))
        if self.relays is not None and new.health != old.health:
            self.relays.reload(new.health)
        elif self.relays is None and new.health is not None and new.health.relays:
            self._start_relays(new)
        self.election.reconfigure(old, new)
        if self.wire is not None:
            self.wire.keys_changed()
            self.wire.sockets_changed()
        if new.metrics != old.metrics:
            if self.metrics is not None:
                self.nursery.start_soon(self._close_metrics, self.metrics)
            self.metrics, self._next_metrics = self._next_metrics, None
            if self.metrics is not None:
                self.metrics.start()
        if self.sync is not None and _virtual_addresses(new) != _virtual_addresses(old):
            self.nursery.start_soon(self._refresh_sync_addresses)

    async def _refresh_sync_addresses(self) -> None:
        """The state mesh ignores flows to this node's addresses: the virtual ones changed."""
        try:
            own = await trio.to_thread.run_sync(kaddr.node_addresses)
        except OSError as e:
            self.log("sync_addresses_failed", level="error", error=e.strerror or str(e))
            return
        self.sync.set_local_addresses(_virtual_addresses(self.config) | own)

    # --------------------------------------------------------------- control

    async def handle_control(self, request: dict) -> dict:
        cmd = request.get("cmd")
        now = trio.current_time()
        election = self.node.election
        if cmd == "relay" or (cmd == "show" and request.get("what") in ("relays", "sessions")):
            return await self._relay_control(cmd, request)
        if cmd in HEALTH_COMMANDS:
            if self.health is None:
                raise ControlError(f"{cmd}: health checks are not configured (no [health] section)")
            return await self.health.handle_control(cmd, request)
        if cmd in SYNC_COMMANDS:
            if self.sync is None:
                raise ControlError(f"{cmd}: the state mesh is not configured (no [sync] section)")
            return await self.sync.handle_control(cmd, request)
        if cmd == "status":
            answer = {"node": self.config.node.name, "version": __version__, **election.status(now),
                      "reject_log": self.reject_log.stats(),
                      "flood_guard": self.election.guard.status(now),
                      "wire_engine": self.wire.status(now) if self.wire is not None else None}
            if self.health is not None:
                answer["check_engine"] = self.health.engine_status(now)
            if self.relays is not None:
                answer["relay_engine"] = self.relays.status(now)
            if self.sync is not None:
                answer["state_mesh"] = self.node.sync.progress(now)
            return answer
        if cmd == "cluster":
            return self.node.cluster(now)
        if cmd == "discover":
            if self.sync is None:
                raise ControlError("discover: the state mesh is not configured (no [sync] section)")
            answer = self.node.discover_view(now)
            announcer = self.sync.announcer
            answer["announcer"] = announcer.status() if announcer is not None else None
            return answer
        if cmd == "reload":
            outcome = await self.supervision.reload()
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
                self.dispatch(self.node.operator_demote(name, by, now))
            else:
                self.dispatch(self.node.operator_promote(name, now))
            return {"name": name, "value": election.counter_value(name)}
        if cmd in ("enable", "disable"):
            group = require(request, "group", str)
            if group not in election.groups:
                raise ControlError(f"{cmd}: unknown group \"{group}\" "
                                   f"(known: {', '.join(sorted(election.groups))})")
            method = self.node.enable if cmd == "enable" else self.node.disable
            self.dispatch(method(group, now))
            return {"group": group, "state": election.groups[group].state.value}
        raise unknown_command(cmd)

    async def _relay_control(self, cmd: str, request: dict) -> dict:
        """`show relays|sessions`, `relay enable|disable NAME`."""
        from .relay.remote import RelayUnavailable
        if self.relays is None:
            raise ControlError(f"{cmd}: no relay is configured (no [[health.relay]])")
        if cmd == "show":
            what = request["what"]
            try:
                answer = await self.relays.query(what)
            except RelayUnavailable as e:
                raise ControlError(f"show {what}: {e}") from None
            if what == "relays":
                for row in answer["relays"]:
                    row["enabled"] = self.relays.enabled(row["name"])
                    if not row["listening"] and row["name"] in self.relays.not_listening:
                        row["why"] = self.relays.not_listening[row["name"]]
                known = {row["name"] for row in answer["relays"]}
                for relay in self.config.health.relays:
                    if relay.name not in known:
                        answer["relays"].append({
                            "name": relay.name, "address": relay.address, "port": relay.port,
                            "protocol": relay.protocol, "status": "not running",
                            "listening": False, "why": self.relays.not_listening.get(relay.name)})
                return {"what": "relays", "rows": answer["relays"]}
            return {"what": "sessions", "rows": answer["sessions"], "truncated": answer["truncated"]}
        action = require(request, "action", str)
        if action not in ("enable", "disable"):
            raise ControlError(f'relay: "action" must be enable or disable, found {action!r}')
        name = require(request, "name", str)
        try:
            self.relays.set_enabled(name, action == "enable")
        except KeyError:
            known = ", ".join(r.name for r in self.config.health.relays) or "none"
            raise ControlError(f'relay {action}: no relay named "{name}" (relays: {known})') from None
        return {"kind": "relay", "name": name, "enabled": action == "enable"}
