"""NodeCore: one firewall node's engines and every rule between them (sans-I/O).

The node composes the election core (ElectionCore), the state mesh
(SyncCore, with KernelFlows and Takeovers) and the health checker
(HealthCore), and owns what ties them together:

* the failover ordering: a group's flows are committed (or the queued ones
  applied) before its addresses, announcements, advert and hooks
  (node/takeover.py);
* not in sync (start-up, resync) demotes every group by SYNC_DEMOTION, so
  the node never becomes master with half of its peers' flows;
* a redirect with nothing to forward to raises its `demote` counter by
  HEALTH_DEMOTION (health core's Demote);
* while the check engine (the health checks' own process) is down, every
  group is demoted by HEALTH_DEMOTION: the node cannot tell its live
  backends from its dead ones;
* tracked interfaces and scripts add their weight to a demotion counter, or
  with weight 0 put the groups that follow it in FAULT;
* the flows taken over become this node's once the addresses moved;
* the kernel dump that rebuilds the internal cache (node/flows.py), at start
  (commit = "takeover") or once the peers' bulk is in (commit = "continuous");
* what a reload changes in the cores (Daemon.reload decides *whether*:
  meshd/reload.py);
* how long each takeover took, from the decision to become MASTER (the
  master-down timer, a bow-out, a preemption) to the addresses up
  (`takeover_seconds`, per group, for meshd_takeover_duration_seconds).

Inputs are method calls that take `now`; outputs are lists of actions: the
engines' own (meshd/election/actions.py, sync/actions.py, health/actions.py)
and the node's (node/actions.py).  The daemon's shells carry the actions out.

Must not: read a clock, touch a socket or the kernel, log, or import a shell:
the simulator (tests/sim/) runs it whole.
"""

from __future__ import annotations

import random

from .. import __version__
from ..config import ALL_GROUPS, Config
from ..config.shared import settings_digest, shared_settings
from ..crypto import ELECTION_INFO, SYNC_INFO, KeyRing
from ..election.actions import (
    AddAddresses,
    Announce,
    DemotionChanged,
    PrepareTakeover,
    RemoveAddresses,
    RunNotify,
    SendAdvert,
    State,
    StateChanged,
)
from ..election.core import ElectionCore
from ..health.actions import Demote
from ..health.core import HealthCore
from ..histogram import LATENCY_BUCKETS, Histogram
from ..replay import ReplayGuard
from ..sync.actions import ExternalChanged, PeerAbout, PeerChanged, SendFrame, SyncState
from ..sync.core import SyncCore
from ..sync.discovery import DiscoveryTable, fingerprint
from ..sync.filters import EventFilter
from ..sync.membership import DISCOVERY_WINDOW_S
from .actions import DumpKernel, KernelResynced
from .cluster import SplitBrainWatch, cluster_view, masters
from .flows import KernelChanges, KernelFlows
from .takeover import Takeovers

SYNC_DEMOTION = 200
HEALTH_DEMOTION = 100
# Actions carried out in a group's order, held behind its takeover commit.
GROUP_ACTIONS = (PrepareTakeover, SendAdvert, AddAddresses, RemoveAddresses, Announce, RunNotify)


def election_keys(config: Config) -> KeyRing:
    return KeyRing.from_secrets(config.secrets, config.cluster.send_key, ELECTION_INFO)


def sync_keys(config: Config) -> KeyRing:
    """The state mesh's keys: the cluster secrets, derived for the sync AEAD."""
    return KeyRing.from_secrets(config.secrets, config.cluster.send_key, SYNC_INFO)


def discovery_fingerprints(config: Config) -> tuple[str, str]:
    """(the fingerprint this node announces: its send key's, every key's it accepts)."""
    fps = {kid: fingerprint(secret) for kid, secret in sorted(config.secrets.items())}
    return fps[config.cluster.send_key], tuple(fps.values())


def core_timers(sync) -> dict[str, float]:
    """The [sync] periods and bulk limits as SyncCore takes them (seconds)."""
    heartbeat = sync.heartbeat_ms / 1000
    # Two lost heartbeats must not make a live peer absent (the core refuses less).
    return {"heartbeat_s": heartbeat, "digest_interval_s": sync.digest_interval_ms / 1000,
            "peer_timeout_s": max(sync.peer_timeout_ms / 1000, 2 * heartbeat),
            "bulk_timeout_s": sync.bulk_timeout_ms / 1000, "bulk_attempts": sync.bulk_attempts}


class NodeCore:
    """One node of the cluster.

    Args:
        config: the node's configuration (secrets read).
        epoch: the persisted boot epoch, raised at each start.
        election_replay, sync_replay: ReplayGuards restored from the marks saved
            before this start (None: fresh ones).
        rng: randomness for the health checks' jitter.

    Every input returns the actions for the shells, in the order they are to
    be carried out (Daemon.dispatch routes them): the engines' own and the
    node's (node/actions.py).  The state mesh's inputs (frame, kernel_*,
    takeover_committed, resync_request, flush_*) exist only with a [sync]
    section, health's (check_*, reset_seen, health_enable) only with
    [health]: the shells that call them exist only then too.

    Raises:
        ValueError: from the engines' constructors and KeyRing.from_secrets,
            for a configuration that load_config, reading the secrets, would
            have refused (an id out of range, a send key without its secret).
    """

    def __init__(self, config: Config, epoch: int, *, election_replay: ReplayGuard | None = None,
                 sync_replay: ReplayGuard | None = None, rng: random.Random | None = None):
        self.config = config
        self.election = ElectionCore(config.node.id, config.groups, election_keys(config), epoch,
                                     replay=election_replay)
        self.sync: SyncCore | None = None
        self.flows: KernelFlows | None = None
        self.takeovers: Takeovers | None = None
        self.discovery: DiscoveryTable | None = None
        self.in_sync: bool | None = None
        self.split_brain = SplitBrainWatch()
        self._dump_when_in_sync = False
        if config.sync is not None:
            s = config.sync
            self.sync = SyncCore(config.node.id, [p.id for p in s.peers], sync_keys(config), epoch,
                                 max_datagram=s.max_datagram, resend_queue=s.resend_queue,
                                 report_external_changes=s.commit == "continuous", replay=sync_replay,
                                 discovery_window_s=DISCOVERY_WINDOW_S if s.discover else 0.0,
                                 **core_timers(s))
            self.sync.set_multipath([p.id for p in s.peers if p.backups], 0.0)
            self.flows = KernelFlows(self.sync, EventFilter(s.filter), s.commit == "continuous",
                                     s.min_age_ms / 1000)
            self.takeovers = Takeovers(self.sync, s.commit, s.commit_scope)
            if s.discover:
                self.discovery = DiscoveryTable(config.node.id, s.port, discovery_fingerprints(config)[1],
                                                {p.id: p.address for p in s.peers}, self.sync)
            # Until the first bulk is in: demoted before anything is advertised.
            self.election.set_demotion(ALL_GROUPS, "sync", SYNC_DEMOTION, 0.0, "state mesh not in sync yet")
        self.health = HealthCore(config.health, rng or random.Random()) if config.health else None
        self.takeover_seconds: dict[str, Histogram] = {}
        self._takeover_since: dict[str, float] = {}     # group -> when it became MASTER
        self._out: list = []

    # ================================================================== start, stop, time

    def start(self, now: float) -> list:
        """Every engine starts; with commit = "continuous" the first kernel dump
        waits for the peers' bulk (until then the kernel's injected peer flows
        cannot be told from our own).  With commit = "takeover" the shell has
        fed the start dump before (`kernel_table(..., "start", ...)`)."""
        if self.sync is not None:
            self._dump_when_in_sync = self.config.sync.commit == "continuous"
            self._set_about(now)
            self._route(self.sync.start(now), now)
        if self.health is not None:
            self._route(self.health.start(now), now)
        self._route(self.election.start(now), now)
        return self._flush()

    def shutdown(self, now: float, reason: str) -> list:
        """Bow out of every group (the addresses go, backups take over at once)."""
        self._route(self.election.shutdown(now, reason), now)
        return self._flush()

    def next_deadline(self) -> float | None:
        """The earliest deadline of the engines and of the node's own steps (an
        adoption); -inf while a kernel resync has a step due; None if nothing waits."""
        deadlines = [self.election.next_deadline()]
        if self.sync is not None:
            deadlines.append(self.sync.next_deadline())
            deadlines.append(self.takeovers.next_deadline())
            deadlines.append(self.flows.young_deadline())
        if self.health is not None:
            deadlines.append(self.health.next_deadline())
        if self.flows is not None and self.flows.busy:
            return float("-inf")                     # a resync step is due at once
        due = [d for d in deadlines if d is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> list:
        """Whatever is due: the engines' timers, one step of a kernel resync or adoption."""
        deadline = self.election.next_deadline()
        if deadline is not None and deadline <= now:
            self._route(self.election.handle_timer(now), now)
        if self.sync is not None:
            deadline = self.sync.next_deadline()
            if deadline is not None and deadline <= now:
                self._route(self.sync.handle_timer(now), now)
            if self.flows.busy:
                self._route(self.flows.step(now), now)
            deadline = self.flows.young_deadline()
            if deadline is not None and deadline <= now:
                self._route(self.flows.release_young(now), now)       # min_age_ms
            self._route(self.takeovers.step(now), now)
        if self.health is not None:
            deadline = self.health.next_deadline()
            if deadline is not None and deadline <= now:
                self._route(self.health.poll(now), now)
        return self._flush()

    # ================================================================== the election's inputs

    def advert(self, data: bytes, source: str, now: float, *, ttl: int | None = None,
               interface: str | None = None) -> list:
        """A datagram on the election socket (see ElectionCore.receive: never raises
        for what it holds)."""
        self._route(self.election.receive(data, source, now, ttl=ttl, interface=interface), now)
        return self._flush()

    def advert_refused(self, reason: str, detail: str, source: str | None, count: int,
                       now: float) -> list:
        """Adverts the wire engine refused (a bad MAC, an unknown key...): counted
        by the election core as its own rejects."""
        self._route(self.election.rejected_elsewhere(reason, detail, source, count), now)
        return self._flush()

    def wire_engine(self, up: bool, reason: str, now: float) -> list:
        """The wire engine (meshd/wire/remote.py) came up or went down: down, the
        node hears no advert, and a backup's master-down is held until it is
        back (ElectionCore.set_deaf; why not a demotion: docs/architecture.md)."""
        self._route(self.election.set_deaf(None if up else reason, now), now)
        return self._flush()

    def advert_send_failed(self, group: str, error: str, now: float) -> list:
        """The election shell could not send an advert of `group` (ElectionCore.send_failed)."""
        self._route(self.election.send_failed(group, now, error), now)
        return self._flush()

    def link(self, name: str, up: bool, now: float) -> list:
        """A watched interface changed (or was read afresh; repeats change nothing)."""
        self._route(self.election.set_interface(name, up, now), now)
        for t in self.config.track_interfaces:
            if t.interface == name:
                self._track(t.demotion_group, f"link:{name}", t.weight, not up,
                            f"tracked interface {name} {'up' if up else 'down'}", now)
        return self._flush()

    def track_script(self, script, healthy: bool, reason: str, now: float) -> list:
        """A track script rose or fell (see track/scripts.py)."""
        self._track(script.demotion_group, f"script:{script.name}", script.weight, not healthy,
                    f"track script {script.name}: {reason}", now)
        return self._flush()

    def track_gone(self, counter: str, source: str, weight: int, reason: str, now: float) -> list:
        """A track left the configuration (a reload): what it had raised is cleared."""
        self._track(counter, source, weight, False, reason, now)
        return self._flush()

    def _track(self, counter: str, source: str, weight: int, failed: bool, reason: str,
               now: float) -> None:
        """A track's weight demotes; weight 0 means FAULT instead (keepalived's convention)."""
        if weight == 0:
            label = source.replace("link:", "tracked interface ").replace("script:", "track script ")
            self._route(self.election.set_tracked_fault(counter, f"{label} failed", failed, now), now)
        else:
            self._route(self.election.set_demotion(counter, source, weight if failed else 0, now, reason),
                        now)

    # ---------------------------------------------------------------- operator

    def operator_demote(self, name: str, by: int, now: float) -> list:
        """Operator: add `by` to the operator's share of demotion counter `name`."""
        self._route(self.election.operator_demote(name, by, now), now)
        return self._flush()

    def operator_promote(self, name: str, now: float) -> list:
        """Operator: clear the operator's share of demotion counter `name`."""
        self._route(self.election.operator_promote(name, now), now)
        return self._flush()

    def enable(self, group: str, now: float) -> list:
        """Operator: `group` takes part in elections again.  KeyError for an unknown group."""
        self._route(self.election.enable(group, now), now)
        return self._flush()

    def disable(self, group: str, now: float) -> list:
        """Operator: take `group` out of elections.  KeyError for an unknown group."""
        self._route(self.election.disable(group, now), now)
        return self._flush()

    # ================================================================== the state mesh's inputs

    def frame(self, data: bytes, peer_hint: int | None, now: float, source: str | None = None) -> list:
        """A datagram on the state mesh's socket; `peer_hint` is the peer (or
        discovered candidate) its source address belongs to (None: no one's),
        `source` that address.  Never raises for what it holds: a bad one
        becomes a FrameRejected."""
        actions = self.sync.receive(data, peer_hint, now)
        if self.discovery is not None and self.sync.discovered:
            for a in actions:
                if type(a) is PeerChanged and a.state == "discovered":
                    self.discovery.promoted(a.peer, source, now)
        self._route(actions, now)
        return self._flush()

    def announced(self, key: str, node: int | None, name: str, address: str, port: int | None,
                  fp: str, now: float) -> list:
        """Discovery heard (or heard again) an announcement on the sync link
        (sync/discovery.py decides what it is; a candidate's heartbeats go out
        from the timer, at once: next_deadline says so)."""
        if self.discovery is not None:
            self.discovery.announced(key, node, name, address, port, fp, now)
        return self._flush()

    def withdrawn(self, key: str, now: float) -> list:
        """An announcement is gone."""
        if self.discovery is not None:
            self.discovery.withdrawn(key, now)
        return self._flush()

    def discover_view(self, now: float) -> dict:
        """`meshctl discover`."""
        if self.discovery is None:
            return {"discover": False, "heard": []}
        return {"discover": True, **self.discovery.view(now)}

    def frame_refused(self, reason: str, detail: str, peer_hint: int | None, count: int,
                      now: float) -> list:
        """Frames the wire engine refused (truncated, an unknown key, a bad tag),
        from the address of `peer_hint`: counted by the sync core as its own."""
        self._route(self.sync.rejected_elsewhere(reason, detail, peer_hint, count, now), now)
        return self._flush()

    def kernel_events(self, burst, now: float) -> list:
        """A burst of conntrack events (CtEvents) read from the kernel."""
        self._route(self.flows.events(burst, now), now)
        return self._flush()

    def kernel_overrun(self) -> list:
        """The kernel dropped events (ENOBUFS): rebuild the internal cache from a dump."""
        return [DumpKernel("overrun")]

    def kernel_dump_started(self, now: float) -> None:
        """The shell starts reading the kernel's table for kernel_table (every
        dump: DumpKernel's, an overrun's, the operator's)."""
        self.flows.dump_started(now)

    def kernel_table(self, table: list, reason: str, now: float) -> list:
        """A dump of the kernel's table (see DumpKernel); diffed in steps (next_deadline)."""
        self.flows.begin_resync(table, reason, now)
        return self._flush()

    def kernel_changes(self, batch: list[ExternalChanged]) -> KernelChanges:
        """The peers' changes to put into the kernel now (continuous mode); the
        applier says kernel_changes_applied() once it has carried them out."""
        return self.flows.kernel_changes(batch)

    def kernel_changes_applied(self) -> None:
        """The applier carried out the oldest kernel_changes answer not reported yet."""
        self.flows.changes_applied()

    def takeover_committed(self, group: str, now: float) -> list:
        """The shell carried out CommitFlows / WaitApplied of `group`: the group's
        held actions, in order (and the next takeover's commit, if one waits).
        ValueError if no commit of `group` is in flight."""
        self._route(self.takeovers.committed(group, now), now)
        return self._flush()

    def addresses_added(self, group: str, now: float) -> list:
        """A group's addresses are up (AddAddresses carried out): the takeover
        is timed, and what it committed may be adopted."""
        since = self._takeover_since.pop(group, None)
        if since is not None:
            self.takeover_seconds.setdefault(group, Histogram(LATENCY_BUCKETS)).observe(now - since)
        if self.takeovers is not None:
            self.takeovers.addresses_added(now)
        return self._flush()

    def resync_request(self, now: float) -> list:
        """Operator: fetch every peer's whole state again."""
        self._route(self.sync.request_resync(now), now)
        return self._flush()

    def flush_internal(self) -> int:
        """Operator: forget the internal cache (the shell then rebuilds it from a
        kernel dump, reason "operator flush"); how many entries it held."""
        return self.sync.flush_internal()

    def flush_external(self, peer: int | None, now: float) -> list:
        """Operator: forget one peer's external cache (None: every peer's).  KeyError
        for a peer not configured."""
        self._route(self.sync.flush_external(peer), now)
        return self._flush()

    # ================================================================== health's inputs

    def check_done(self, check_id: int, outcome, now: float) -> list:
        """A health check's CheckOutcome (a late or unknown `check_id` is ignored)."""
        self._route(self.health.check_done(check_id, outcome, now), now)
        return self._flush()

    def check_refused(self, check_id: int, now: float) -> list:
        """The check runner could not start run `check_id`; it runs again later."""
        self._route(self.health.check_refused(check_id, now), now)
        return self._flush()

    def check_engine(self, up: bool, reason: str, now: float) -> list:
        """The check engine came up or went down (meshd/health/remote.py): down
        demotes every group until it is back.  The checks it held are handed
        back one by one through check_refused."""
        self._route(self.election.set_demotion(ALL_GROUPS, "check-engine", 0 if up else HEALTH_DEMOTION,
                                               now, reason), now)
        return self._flush()

    def reset_seen(self, address: str, port: int, now: float) -> list:
        """A backend sent a TCP reset (the NFLOG watcher); see HealthCore.rst_seen."""
        self._route(self.health.rst_seen(address, port, now), now)
        return self._flush()

    def health_enable(self, kind: str, name: str, enabled: bool, now: float) -> list:
        """Raises health.core.UnknownName for a name that is not configured."""
        self._route(self.health.set_enabled(kind, name, enabled, now), now)
        return self._flush()

    # ================================================================== reload

    def reconfigure(self, old: Config, new: Config, keys_changed: bool, now: float) -> list:
        """Apply a reloaded configuration to the cores (meshd/reload.py accepted it).

        Keys first, so that the bow-out of a changed group goes out under the
        new send key; then the groups, the state mesh, health.
        """
        self.config = new
        if keys_changed:
            self.election.keys = election_keys(new)
        self._route(self.election.reconfigure(new.groups, now), now)
        if self.sync is not None:
            self._reconfigure_sync(old, new, keys_changed, now)
            self._set_about(now)
        if self.health is not None and new.health != old.health:
            self._route(self.health.reload(new.health, now), now)
        return self._flush()

    def _reconfigure_sync(self, old: Config, new: Config, keys_changed: bool, now: float) -> None:
        o, n = old.sync, new.sync
        if keys_changed:
            self._route(self.sync.set_keys(sync_keys(new), now), now)
        old_ids, new_ids = {p.id for p in o.peers}, {p.id for p in n.peers}
        for pid in sorted(old_ids - new_ids):
            self._route(self.sync.remove_peer(pid, now), now)
        for pid in sorted(new_ids - old_ids):
            if pid in self.sync.peers:        # found by discovery, configured now
                self.sync.discovered.pop(pid, None)
                continue
            self._route(self.sync.add_peer(pid, now), now)
        if self.discovery is not None:
            self.discovery.reconfigure(n.port, discovery_fingerprints(new)[1],
                                       {p.id: p.address for p in n.peers}, now)
        self._route(self.sync.set_multipath([p.id for p in n.peers if p.backups], now), now)
        if core_timers(n) != core_timers(o):
            self._route(self.sync.set_timers(**core_timers(n), now=now), now)
        self.takeovers.commit, self.takeovers.scope = n.commit, n.commit_scope
        self.flows.continuous = n.commit == "continuous"
        if n.min_age_ms != o.min_age_ms:
            self._route(self.flows.set_min_age(n.min_age_ms / 1000, now), now)
        if n.filter != o.filter:
            self.flows.filter.set_config(n.filter)
            # Flows the new filter ignores leave the internal cache (and the
            # peers' copies); flows it no longer ignores come in.  Not before
            # the peers' bulk in continuous mode: that dump is due anyway.
            if not self._dump_when_in_sync:
                self._out.append(DumpKernel("filter changed"))
        if n.commit != o.commit:
            # To continuous: every replicated flow held now goes to the kernel,
            # ahead of the changes that follow.
            self._route(self.sync.set_report_external_changes(n.commit == "continuous", now), now)

    # ================================================================== routing

    def _route(self, actions: list, now: float) -> None:
        """The rules between the engines, applied to what an engine returned."""
        out = self._out
        takeovers = self.takeovers
        for a in actions:
            if type(a) is SendFrame:              # most actions by far: no rule applies
                out.append(a)
                continue
            if isinstance(a, GROUP_ACTIONS) and takeovers is not None and takeovers.hold(a):
                continue
            if isinstance(a, PrepareTakeover):
                if takeovers is not None:
                    group = self.election.groups[a.group].config
                    first, _held = takeovers.prepare(a, group, now)
                    self._route(first, now)
                continue                           # nothing to commit without a state mesh
            if isinstance(a, SyncState):
                out.append(a)
                self._sync_state(a, now)
                continue
            if type(a) is StateChanged:
                # A master that steps down before its addresses are up took no takeover.
                if a.new is State.MASTER:
                    self._takeover_since[a.group] = now
                else:
                    self._takeover_since.pop(a.group, None)
                out.append(a)
                if self.sync is not None:
                    self._about_groups(now)
                    out.extend(self.split_brain.update(masters(self), now))
                continue
            if isinstance(a, Demote):
                self._route(self.election.set_demotion(a.counter, "health", HEALTH_DEMOTION if a.on else 0,
                                                       now, f"health: {a.reason}"), now)
                continue
            if isinstance(a, PeerAbout):
                out.extend(self.split_brain.update(masters(self), now))
                continue
            if isinstance(a, DemotionChanged) and self.sync is not None:
                self._about_groups(now)
            out.append(a)

    def cluster(self, now: float) -> dict:
        """`meshctl cluster`: every node this one hears (node/cluster.py)."""
        return cluster_view(self, now)

    def _set_about(self, now: float) -> None:
        """Who this node is, for the peers' `meshctl cluster` (sync/about.py)."""
        settings = shared_settings(self.config)
        self.sync.set_about(self.config.node.name, __version__, settings, settings_digest(settings), now)
        self._about_groups(now)

    def _about_groups(self, now: float) -> None:
        e = self.election
        self.sync.set_about_groups([(g.config.id, g.state.value, e.group_demotion(g))
                                    for g in e.groups.values()], now)

    def _sync_state(self, a: SyncState, now: float) -> None:
        self.in_sync = a.in_sync
        if a.in_sync and self._dump_when_in_sync:
            self._dump_when_in_sync = False
            self._out.append(DumpKernel("start (after the peers' bulk)"))
        self._route(self.election.set_demotion(ALL_GROUPS, "sync", 0 if a.in_sync else SYNC_DEMOTION,
                                               now, f"state mesh: {a.reason}"), now)

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out


__all__ = [
    "HEALTH_DEMOTION",
    "SYNC_DEMOTION",
    "KernelResynced",
    "NodeCore",
    "core_timers",
    "discovery_fingerprints",
    "election_keys",
    "sync_keys",
]
