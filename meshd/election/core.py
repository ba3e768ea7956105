"""The election core: CARP-style groups as a sans-I/O state machine.

Inputs are method calls that always take `now` (seconds, any monotonic
origin): received datagrams, timers, interface state, demotion changes and
operator commands.  Outputs are lists of actions (meshd.election.actions) for
the shell to carry out in order.

Rules, all in this file:

* Priority is the tuple (demotion, advskew, node id); lower wins.  Node id
  breaks ties so that equal configurations still elect exactly one master.
* A MASTER steps down when it hears a better priority.
* A BACKUP takes over when the master has been silent for
  3 x interval + skew, at once (after its skew) when the master bows out, and
  on hearing a worse master when it is better by demotion (always) or by
  advskew/node id (only with preempt).  Demotion always preempts because a
  demoted master has declared that it cannot serve properly.  A second
  master that is worse than the one the BACKUP follows (a partition heals)
  is left to step down: preempting it would take the addresses from the better.
* A group whose interface is down, or whose adverts cannot be sent, is FAULT.
  Groups of a sync set share a demotion counter named after the set; a fault
  in one member raises it, so its siblings hand over too.

Must not: read a clock, touch a socket or log; nor know the state mesh or the
health checks: what they demand comes in as named demotion counters
(set_demotion, from the node core).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from ..config import GroupConfig
from ..crypto import KeyRing
from ..replay import ReplayGuard
from .actions import (Action, AddAddresses, AdvertRejected, Announce, Cause, DemotionChanged,
                      PrepareTakeover, RemoveAddresses, RunNotify, SendAdvert, State,
                      StateChanged)
from .wire import (Advert, AdvertError, AdvertType, config_digest, decode_advert,
                   encode_advert)

MAX_DEMOTION = 2**32 - 1
FAULT_DEMOTION = 100      # added to a sync set's counter while a member is FAULT
SEND_RETRY_INTERVALS = 3  # a send failure is retried after this many intervals
SOURCE_OPERATOR = "operator"


MIN_SLACK = 0.002      # s: timer and scheduling jitter the master's third advert may have


@dataclass
class GroupRuntime:
    config: GroupConfig
    digest: bytes
    state: State = State.INIT
    deadline: float | None = None      # advert (MASTER), master down (BACKUP), retry (FAULT)
    master_node: int | None = None
    master_demotion: int | None = None
    bowout_from: int | None = None       # node whose bow-out advert armed the timer
    faults: set[str] = field(default_factory=set)
    last_change: float | None = None
    last_reason: str = "startup"
    transitions: int = 0
    # (new state, cause) -> count: bounded, since Cause is (docs/metrics.md).
    transitions_by: Counter = field(default_factory=Counter)
    sent: int = 0
    received: int = 0
    stale: int = 0
    armed_down: float = 0.0          # the master-down wait last armed (for the reason text)
    rejected: Counter = field(default_factory=Counter)
    peers: dict[int, dict] = field(default_factory=dict)

    @property
    def interval(self) -> float:
        c = self.config
        return c.advbase_ms * (1 + c.advskew / 256) / 1000

    @property
    def skew(self) -> float:
        return self.config.advbase_ms * self.config.advskew / 256 / 1000

    @property
    def master_down(self) -> float:
        return 3 * self.interval + self.skew

    def master_down_after(self, advbase_ms: int, advskew: int) -> float:
        """Silence tolerated after an advert from a master with these timings.

        Three of the *master's* intervals (a master with a larger advskew
        advertises more slowly than our own interval), plus our skew so backups
        stay ordered: CARP's and VRRP's master-down, so that a takeover is as
        fast as theirs at equal settings.  The master's third advert is due
        right at the deadline; our skew is the slack it has, and never less
        than MIN_SLACK (a backup with advskew 0).
        """
        master_interval = advbase_ms * (1 + advskew / 256) / 1000
        return 3 * master_interval + max(self.skew, MIN_SLACK)


class ElectionCore:
    """All election groups of one node.

    Args:
        node_id: this node (1..2**32-1); of two equal priorities, the lower id wins.
        groups: the [[group]] tables.
        keys: the election KeyRing (`KeyRing.from_secrets(secrets, send_id,
            ELECTION_INFO)`); replaced as a whole by a reload of the keys.
        epoch: the persisted boot epoch (meshd/state.py), sent in every advert.
        replay: a ReplayGuard restored from the marks saved before this start
            (None: a fresh one).

    Every input returns the actions to carry out, in that order.

    Raises:
        ValueError: a node id out of range, or two groups with one name or id.
        KeyError: from the inputs that name a group (send_failed, enable,
            disable) for a group not configured; the daemon checks operator
            input before.
    """

    def __init__(self, node_id: int, groups: tuple[GroupConfig, ...] | list[GroupConfig],
                 keys: KeyRing, epoch: int, *, replay: ReplayGuard | None = None):
        if not 1 <= node_id <= 2**32 - 1:
            raise ValueError(f"node id {node_id} out of range")
        self.node_id = node_id
        self.keys = keys
        self.epoch = epoch
        self.counter = 0
        self.replay = replay or ReplayGuard()
        self.groups: dict[str, GroupRuntime] = {}
        self.by_id: dict[int, GroupRuntime] = {}
        self.demotions: dict[str, dict[str, int]] = {}
        self.interfaces_down: set[str] = set()
        self.rejected: Counter = Counter()
        self.started = False
        self.deaf: str | None = None        # why no advert can be heard now (set_deaf)
        for g in groups:
            self._add_group(g)

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[Action]:
        """Every group leaves INIT: FAULT if its interface is down, else BACKUP."""
        self.started = True
        out: list[Action] = []
        for g in self.groups.values():
            out += self._leave_init(g, now, "startup", Cause.STARTUP)
        return out

    def next_deadline(self) -> float | None:
        """When handle_timer has work next (an advert, a master-down, a retry), or None."""
        deadlines = [g.deadline for g in self.groups.values() if g.deadline is not None]
        return min(deadlines) if deadlines else None

    def next_master_down(self) -> float | None:
        """When the first backup's master-down falls due, or None: the only
        deadline before which queued adverts matter (ReadFirst)."""
        deadlines = [g.deadline for g in self.groups.values()
                     if g.state is State.BACKUP and g.deadline is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Action]:
        """What is due at `now`: a master's advert, a backup's takeover (the
        failover ordering), a FAULT's retry after a send failure."""
        out: list[Action] = []
        for g in list(self.groups.values()):
            if g.deadline is None or g.deadline > now:
                continue
            if g.state is State.MASTER:
                out += self._advertise(g)
                nxt = g.deadline + g.interval
                g.deadline = nxt if nxt > now else now + g.interval
            elif g.state is State.BACKUP:
                if g.bowout_from is not None:
                    reason = f"master node {g.bowout_from} bowed out"
                    previous, cause = g.bowout_from, Cause.BOWOUT
                else:
                    reason = f"no advert for {round(g.armed_down * 1000)} ms (master down)"
                    previous, cause = g.master_node, Cause.MASTER_DOWN
                out += self._become_master(g, now, reason, cause, from_node=previous)
            elif g.state is State.FAULT and "send failed" in g.faults:
                g.faults.discard("send failed")
                if not g.faults:
                    out += self._leave_init(g, now, "retrying after send failure", Cause.RECOVERED)
                else:
                    g.deadline = None
        return out

    def set_deaf(self, why: str | None, now: float) -> list[Action]:
        """Whether this node can hear adverts: `why` it cannot (the wire engine,
        which reads the sockets, is down), or None when it can again.

        While deaf, a backup's master-down is held: silence it cannot hear
        through is no evidence that the master is gone, and a takeover on it
        would put the addresses on two nodes.  A master goes on advertising
        (its peers hear it and stay backups).  Hearing again, every backup
        waits one whole master-down interval from `now`, for the adverts it
        missed.  Nothing is emitted: the groups' states do not change.
        """
        was = self.deaf
        self.deaf = why
        if (was is None) == (why is None):
            return []
        for g in self.groups.values():
            if g.state is State.BACKUP:
                if why is not None:
                    g.deadline = None
                else:
                    g.bowout_from = None
                    self._arm_master_down(g, now, g.master_down)
        return []

    def rejected_elsewhere(self, reason: str, detail: str, source: str | None,
                           count: int) -> list[Action]:
        """`count` datagrams refused before they reached this core (the wire
        engine's screen: a bad MAC, an unknown key...), counted as if refused here."""
        self.rejected[reason] += count
        return [AdvertRejected(reason, detail, source or "", count)]

    def receive(self, data: bytes, source: str, now: float, *, ttl: int | None = None,
                interface: str | None = None) -> list[Action]:
        """A datagram arrived on the election socket.

        Args:
            data: the datagram.
            source: its source address, as the socket reported it.
            ttl: the TTL or hop limit the kernel reported; None (not reported)
                is refused where the group checks the TTL.
            interface: the interface it arrived on (None: unknown).

        Returns:
            The group's actions.  A datagram that fails a check returns one
            AdvertRejected(reason) and changes no group (it is counted per
            reason); an authentic copy older than one already acted on
            returns nothing (counted as stale).  Never raises for what a
            datagram holds.
        """
        try:
            advert = decode_advert(data, self.keys)
        except AdvertError as e:
            return self._reject(None, e.reason, e.detail, source)
        g = self.by_id.get(advert.group_id)
        if g is None:
            return self._reject(None, "unknown group", f"group id {advert.group_id} from node {advert.node_id}", source)
        if advert.node_id == self.node_id:
            if advert.epoch < self.epoch or (advert.epoch == self.epoch and advert.counter <= self.counter):
                return self._reject(g, "own advert", "looped back", source)
            return self._reject(g, "duplicate node id", f"another node uses node id {self.node_id} (from {source})", source)
        if g.config.peers and _normal_ip(source) not in g.config.peers:
            return self._reject(g, "unknown peer", f"{source} is not in the peers of group {g.config.name}", source)
        if g.config.check_ttl and ttl != 255:
            # Fail closed: a datagram whose TTL the kernel did not report is not trusted either.
            return self._reject(g, "bad ttl", f"ttl {ttl}, expected 255 (advert was routed)", source)
        if interface is not None and not g.config.peers and interface != g.config.interface:
            return self._reject(g, "wrong interface", f"arrived on {interface}, group is on {g.config.interface}", source)
        sender = (advert.node_id, advert.group_id)
        why = self.replay.check(sender, advert.epoch, advert.counter)
        if why:
            return self._reject(g, why, f"node {advert.node_id} epoch {advert.epoch} counter {advert.counter}", source)
        newest = self.replay.is_newest(sender, advert.epoch, advert.counter)
        self.replay.accept(sender, advert.epoch, advert.counter)
        if advert.config_digest != g.digest:
            # The digest covers the group id, advbase and addresses; advbase is
            # also in the clear, so it can be named when it is the one that differs.
            why = (f"advbase_ms {advert.advbase_ms} there, {g.config.advbase_ms} here"
                   if advert.advbase_ms != g.config.advbase_ms else
                   "its addresses differ from this node's (advbase_ms agrees; `meshd --check --peer` names them)")
            return self._reject(g, "peer config differs",
                                f"node {advert.node_id}, group {g.config.name}: {why}", source)
        if advert.advbase_ms != g.config.advbase_ms:
            # The digest covers advbase, but master-down is armed from this field:
            # one that contradicts the digest is a peer bug, never acted on.
            return self._reject(g, "peer config differs",
                                f"node {advert.node_id} sends advbase {advert.advbase_ms} ms, its digest says "
                                f"{g.config.advbase_ms} ms, in group {g.config.name}", source)
        if not newest:
            # Authentic but older than what we already acted on (reordered copy,
            # or replayed after we lost the original): its content is outdated.
            g.stale += 1
            return []
        g.received += 1
        g.peers[advert.node_id] = {"demotion": advert.demotion, "advskew": advert.advskew,
                                   "last_seen": now, "bowout": advert.type is AdvertType.BOWOUT,
                                   "source": source}
        return self._on_advert(g, advert, now)

    def send_failed(self, group: str, now: float, error: str) -> list[Action]:
        """The shell could not send an advert for this group.

        A master goes to FAULT and retries SEND_RETRY_INTERVALS intervals
        later; other states ignore it.  KeyError for a group not configured.
        """
        g = self.groups[group]
        if g.state is not State.MASTER:
            return []
        g.faults.add("send failed")
        out = self._to_fault(g, now, f"cannot send adverts: {error}")
        g.deadline = now + SEND_RETRY_INTERVALS * g.interval
        return out

    def set_interface(self, interface: str, up: bool, now: float) -> list[Action]:
        """Link state of an interface changed (or was learnt at start-up)."""
        if up == (interface not in self.interfaces_down):
            return []
        out: list[Action] = []
        if up:
            self.interfaces_down.discard(interface)
        else:
            self.interfaces_down.add(interface)
        for g in self.groups.values():
            if g.config.interface != interface or g.state is State.DISABLED:
                continue
            if not up:
                g.faults.add("interface down")
                if self.started:
                    out += self._to_fault(g, now, f"interface {interface} down")
            elif "interface down" in g.faults:
                g.faults.discard("interface down")
                if self.started and not g.faults and g.state is State.FAULT:
                    out += self._leave_init(g, now, f"interface {interface} up", Cause.RECOVERED)
        return out

    def set_demotion(self, name: str, source: str, value: int, now: float,
                     reason: str = "") -> list[Action]:
        """Set one source's contribution to a named demotion counter.

        `value` is clamped to 0..MAX_DEMOTION, and 0 removes the source.  A
        master whose advertised demotion changed advertises at once.
        """
        sources = self.demotions.setdefault(name, {})
        old = sources.get(source, 0)
        value = max(0, min(MAX_DEMOTION, value))
        if value == old:
            return []
        before = {n: self.group_demotion(g) for n, g in self.groups.items()}
        if value:
            sources[source] = value
        else:
            sources.pop(source, None)
        out: list[Action] = [DemotionChanged(name, self.counter_value(name),
                                             reason or f"{source} set {value}")]
        for n, g in self.groups.items():
            if g.state is State.MASTER and self.group_demotion(g) != before[n]:
                # Tell peers now: a raised demotion should hand over without waiting.
                out += self._advertise(g)
        return out

    def set_tracked_fault(self, name: str, source: str, failed: bool, now: float) -> list[Action]:
        """A track with weight 0 failed or recovered: FAULT every group following `name`.

        keepalived's convention: a tracked interface or script without a weight
        does not lower the priority, it takes the instance out of service.
        """
        out: list[Action] = []
        for g in self.groups.values():
            if name not in g.config.counters() or g.state is State.DISABLED:
                continue
            if failed and source not in g.faults:
                g.faults.add(source)
                if self.started:
                    out += self._to_fault(g, now, source)
            elif not failed and source in g.faults:
                g.faults.discard(source)
                if self.started and not g.faults and g.state is State.FAULT:
                    out += self._leave_init(g, now, f"{source} recovered", Cause.RECOVERED)
        return out

    def operator_demote(self, name: str, delta: int, now: float) -> list[Action]:
        """Add `delta` (may be negative) to the operator's share of counter `name`."""
        current = self.demotions.get(name, {}).get(SOURCE_OPERATOR, 0)
        return self.set_demotion(name, SOURCE_OPERATOR, current + delta, now,
                                 f"operator demote {delta:+d}")

    def operator_promote(self, name: str, now: float) -> list[Action]:
        """Clear the operator's share of counter `name`; the other sources stay."""
        return self.set_demotion(name, SOURCE_OPERATOR, 0, now, "operator promote")

    def disable(self, group: str, now: float, reason: str = "disabled by operator") -> list[Action]:
        """Take `group` out of elections (a master bows out).  KeyError for a group
        not configured."""
        g = self.groups[group]
        if g.state is State.DISABLED:
            return []
        out = self._release(g, now, State.DISABLED, reason, Cause.OPERATOR)
        g.deadline = None
        return out

    def enable(self, group: str, now: float) -> list[Action]:
        """A disabled `group` takes part again: BACKUP, or FAULT while a fault
        remains.  KeyError for a group not configured."""
        g = self.groups[group]
        if g.state is not State.DISABLED:
            return []
        return self._leave_init(g, now, "enabled by operator", Cause.OPERATOR)

    def shutdown(self, now: float, reason: str = "shutting down") -> list[Action]:
        """Bow out of every group: masters tell backups to take over at once."""
        out: list[Action] = []
        for g in self.groups.values():
            if g.state is not State.DISABLED:
                out += self._release(g, now, State.INIT, reason, Cause.SHUTDOWN)
            g.deadline = None
        return out

    def reconfigure(self, groups: tuple[GroupConfig, ...], now: float) -> list[Action]:
        """Apply a new group list; groups whose election settings are unchanged keep their state."""
        out: list[Action] = []
        wanted = {g.name: g for g in groups}
        for name, g in list(self.groups.items()):
            new = wanted.get(name)
            if new is not None and _same_election(g.config, new):
                g.config = new
                continue
            out += self._release(g, now, State.INIT, "removed from configuration" if new is None
                                 else "configuration changed", Cause.RELOAD)
            del self.groups[name]
            del self.by_id[g.config.id]
        for name, cfg in wanted.items():
            if name not in self.groups:
                g = self._add_group(cfg)
                if self.started:
                    out += self._leave_init(g, now, "added by reload", Cause.RELOAD)
        return out

    # ----------------------------------------------------------------- queries

    def counter_value(self, name: str) -> int:
        """The sum of one counter's sources (0 for a name nothing has set)."""
        return min(MAX_DEMOTION, sum(self.demotions.get(name, {}).values()))

    def group_demotion(self, g: GroupRuntime) -> int:
        """The demotion a group advertises: the sum of the counters it follows."""
        return min(MAX_DEMOTION, sum(self.counter_value(n) for n in g.config.counters()))

    def status(self, now: float) -> dict:
        """The answer to `meshctl status`: every group with its state, counters
        and peers, ages counted from `now`."""
        groups = []
        for g in self.groups.values():
            c = g.config
            groups.append({
                "name": c.name, "id": c.id, "interface": c.interface,
                "addresses": list(c.addresses), "state": g.state.value,
                "advbase_ms": c.advbase_ms, "advskew": c.advskew,
                "demotion": self.group_demotion(g), "preempt": c.preempt,
                "master": self.node_id if g.state is State.MASTER else g.master_node or None,
                "last_change_ago_s": None if g.last_change is None else round(now - g.last_change, 3),
                "last_reason": g.last_reason, "transitions": g.transitions,
                "faults": sorted(g.faults),
                "adverts": {"sent": g.sent, "received": g.received, "stale": g.stale,
                            "rejected": dict(g.rejected)},
                "peers": {str(n): {**p, "last_seen_ago_s": round(now - p["last_seen"], 3)}
                          for n, p in g.peers.items()},
            })
        return {"node_id": self.node_id, "epoch": self.epoch, "groups": groups,
                "demotions": {n: self.counter_value(n) for n in sorted(self.demotions)},
                "rejected": dict(self.rejected), "deaf": self.deaf}

    # ---------------------------------------------------------------- internals

    def _add_group(self, cfg: GroupConfig) -> GroupRuntime:
        if cfg.name in self.groups or cfg.id in self.by_id:
            raise ValueError(f"duplicate group {cfg.name} / id {cfg.id}")
        g = GroupRuntime(cfg, config_digest(cfg.id, cfg.advbase_ms, cfg.addresses))
        if cfg.interface in self.interfaces_down:
            g.faults.add("interface down")
        self.groups[cfg.name] = g
        self.by_id[cfg.id] = g
        return g

    def _priority(self, demotion: int, advskew: int, node_id: int) -> tuple[int, int, int]:
        return (demotion, advskew, node_id)

    def _my_priority(self, g: GroupRuntime) -> tuple[int, int, int]:
        return self._priority(self.group_demotion(g), g.config.advskew, self.node_id)

    def _on_advert(self, g: GroupRuntime, a: Advert, now: float) -> list[Action]:
        theirs = self._priority(a.demotion, a.advskew, a.node_id)
        mine = self._my_priority(g)
        if g.state is State.MASTER:
            if a.type is AdvertType.BOWOUT or theirs > mine:
                return []
            cause = Cause.DEMOTED if a.demotion < mine[0] else Cause.PREEMPTED
            return self._become_backup(g, now, a, f"node {a.node_id} has better priority "
                                       f"(demotion {a.demotion}, advskew {a.advskew})", cause)
        if g.state is not State.BACKUP:
            return []
        if a.type is AdvertType.BOWOUT:
            if g.master_node in (None, a.node_id):
                g.bowout_from = a.node_id
                g.deadline = now + g.skew
            return []
        if self._worse_than_our_master(g, a.node_id, theirs):
            # A second master, worse than ours (a partition heals): it steps down
            # when it hears ours.  Preempting it would take the addresses from ours.
            return []
        if mine < theirs and (mine[0] < theirs[0] or g.config.preempt):
            by_demotion = mine[0] < theirs[0]
            why = "lower demotion" if by_demotion else "preempt"
            return self._become_master(g, now, f"{why}: node {a.node_id} advertises demotion "
                                       f"{a.demotion} advskew {a.advskew}",
                                       Cause.PEER_DEMOTED if by_demotion else Cause.PREEMPT,
                                       from_node=a.node_id)
        g.master_node = a.node_id
        g.master_demotion = a.demotion
        g.bowout_from = None
        self._arm_master_down(g, now, g.master_down_after(a.advbase_ms, a.advskew))
        return []

    def _worse_than_our_master(self, g: GroupRuntime, node_id: int, theirs: tuple[int, int, int]) -> bool:
        """Whether the master we follow (not bowed out) is better than this sender."""
        master = g.master_node
        if master in (None, node_id, self.node_id) or g.bowout_from is not None:
            return False
        heard = g.peers.get(master)
        if heard is None or heard["bowout"]:
            return False
        return self._priority(g.master_demotion, heard["advskew"], master) < theirs

    def _next_counter(self) -> int:
        self.counter += 1
        return self.counter

    def _advert_bytes(self, g: GroupRuntime, kind: AdvertType) -> bytes:
        c = g.config
        advert = Advert(kind, c.id, self.node_id, c.advbase_ms, c.advskew,
                        self.group_demotion(g), g.digest, self.keys.send_id,
                        self.epoch, self._next_counter())
        return encode_advert(advert, self.keys.send_key)

    def _advertise(self, g: GroupRuntime, kind: AdvertType = AdvertType.ADVERT) -> list[Action]:
        # Several copies, each with its own counter: a takeover needs all copies
        # of three adverts lost, which keeps a lossy link from flapping the group.
        copies = g.config.advert_copies
        g.sent += copies
        return [SendAdvert(g.config.name, self._advert_bytes(g, kind), kind is AdvertType.BOWOUT,
                           g.config) for _ in range(copies)]

    def _transition(self, g: GroupRuntime, new: State, now: float, reason: str,
                    cause: Cause) -> list[Action]:
        old = g.state
        g.state = new
        g.last_change = now
        g.last_reason = reason
        g.transitions += 1
        g.transitions_by[(new, cause)] += 1
        return [StateChanged(g.config.name, old, new, reason, cause)]

    def _notify(self, g: GroupRuntime) -> RunNotify:
        return RunNotify(g.config.name, g.state, 255 - g.config.advskew, g.config)

    def _leave_init(self, g: GroupRuntime, now: float, reason: str, cause: Cause) -> list[Action]:
        if g.faults:
            return self._to_fault(g, now, ", ".join(sorted(g.faults)))
        out = self._transition(g, State.BACKUP, now, reason, cause)
        g.master_node = None
        g.bowout_from = None
        self._arm_master_down(g, now, g.master_down)
        out += self._sync_set_fault(g, False, now)
        return out + [self._notify(g)]

    def _become_master(self, g: GroupRuntime, now: float, reason: str, cause: Cause,
                       from_node: int | None = None) -> list[Action]:
        c = g.config
        previous = from_node
        g.bowout_from = None
        out = self._transition(g, State.MASTER, now, reason, cause)
        out.append(PrepareTakeover(c.name, previous))
        out.append(AddAddresses(c.name, c.interface, c.addresses))
        if c.garp_count:
            out.append(Announce(c.name, c.interface, c.addresses, c.garp_count, c.garp_interval_ms))
        out += self._advertise(g)
        g.deadline = now + g.interval
        g.master_node = self.node_id
        out.append(self._notify(g))
        return out

    def _become_backup(self, g: GroupRuntime, now: float, a: Advert, reason: str,
                       cause: Cause) -> list[Action]:
        c = g.config
        out = self._transition(g, State.BACKUP, now, reason, cause)
        out.append(RemoveAddresses(c.name, c.interface, c.addresses))
        g.master_node = a.node_id
        g.master_demotion = a.demotion
        self._arm_master_down(g, now, g.master_down_after(a.advbase_ms, a.advskew))
        return out + [self._notify(g)]

    def _arm_master_down(self, g: GroupRuntime, now: float, wait: float) -> None:
        g.armed_down = wait
        g.deadline = None if self.deaf is not None else now + wait   # held (set_deaf)

    def _to_fault(self, g: GroupRuntime, now: float, reason: str) -> list[Action]:
        if g.state is State.FAULT:
            return []
        was_master = g.state is State.MASTER
        out = self._transition(g, State.FAULT, now, reason, Cause.FAULT)
        if was_master:
            out.append(RemoveAddresses(g.config.name, g.config.interface, g.config.addresses))
        g.deadline = None
        out += self._sync_set_fault(g, True, now)
        return out + [self._notify(g)]

    def _sync_set_fault(self, g: GroupRuntime, faulted: bool, now: float) -> list[Action]:
        if not g.config.sync_set:
            return []
        return self.set_demotion(g.config.sync_set, f"fault:{g.config.name}",
                                 FAULT_DEMOTION if faulted else 0, now,
                                 f"group {g.config.name} {'FAULT' if faulted else 'recovered'}")

    def _release(self, g: GroupRuntime, now: float, new: State, reason: str,
                 cause: Cause) -> list[Action]:
        """Leave a group: bow out if master, remove addresses."""
        out: list[Action] = []
        was_master = g.state is State.MASTER
        if was_master:
            out += self._advertise(g, AdvertType.BOWOUT)
        if g.state is not new:
            out += self._transition(g, new, now, reason, cause)
        if was_master:
            out.append(RemoveAddresses(g.config.name, g.config.interface, g.config.addresses))
            out.append(self._notify(g))
        g.faults.discard("send failed")
        out += self._sync_set_fault(g, False, now)
        return out

    def _reject(self, g: GroupRuntime | None, reason: str, detail: str, source: str) -> list[Action]:
        self.rejected[reason] += 1
        if g is not None:
            g.rejected[reason] += 1
        return [AdvertRejected(reason, detail, source)]


def _same_election(a: GroupConfig, b: GroupConfig) -> bool:
    """Whether a reload can keep the group's state (identity and what peers check)."""
    key = lambda c: (c.id, c.interface, c.advbase_ms,
                     sorted(str(ipaddress.ip_interface(x)) for x in c.addresses),
                     tuple(sorted(c.peers)))
    return key(a) == key(b)


def _normal_ip(text: str) -> str:
    """Canonical text of an address as the config stores peers (no %scope, lower case)."""
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return text
