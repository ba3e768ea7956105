"""The failover ordering across engines, and what a takeover leaves to do after it.

Owns, for a group that becomes MASTER (DESIGN.md, "The failover ordering"):

1. its replicated flows go into the kernel first (CommitFlows: the conntrack
   entries, then the helpers' expectations, which need their master), or, with
   commit = "continuous", what is still queued for the kernel is applied first
   (WaitApplied); every action of the group that follows (addresses,
   announcements, adverts, hooks, and anything later) is held until the shell
   reports it done (`committed`);
2. one takeover commit at a time: groups of a sync set take over together,
   and the second must see that the first committed the same origin's flows
   (then it commits nothing: TakeoverSkipped);
3. after the addresses have moved, the flows taken over become this node's
   (adoption): moved from the origin's external cache into the internal cache,
   one bucket per step, ADOPT_DELAY later (the takeover's other groups,
   announcements and adverts go first).  Only the origin's state as of the
   takeover is adopted (SyncCore.adoptable_bucket); with no known origin,
   every peer is a candidate, and one heard after the core's adoption grace
   is alive and keeps its flows (FlowsNotAdopted).

Must not: read a clock, touch the kernel, log.
"""

from __future__ import annotations

import ipaddress

from ..config import GroupConfig
from ..election.actions import PrepareTakeover
from ..kernel import ctnetlink as ct
from ..sync.actions import NEW
from ..sync.core import SyncCore
from ..sync.digest import NBUCKETS
from .actions import CommitFlows, FlowsAdopted, FlowsNotAdopted, TakeoverSkipped, WaitApplied

TAKEOVER_APPLY_WAIT = 1.0     # s a continuous-mode takeover waits for queued changes at most
ADOPT_DELAY = 0.5             # s after the addresses moved before the taken-over flows are adopted


class Takeovers:
    """The takeovers of one node's groups, for the state mesh `sync`.

    Args:
        sync: the node's SyncCore.
        commit: "takeover" or "continuous" ([sync] commit).
        scope: "all" or "group" ([sync] commit_scope).
    """

    def __init__(self, sync: SyncCore, commit: str, scope: str):
        self.sync = sync
        self.commit = commit
        self.scope = scope
        self.held: dict[str, list] = {}                   # group -> its actions waiting
        self._groups: dict[str, GroupConfig] = {}
        self._queue: list[PrepareTakeover] = []           # waiting for the commit in flight
        self._in_flight: tuple[str, list[int], bool] | None = None
        self._to_adopt: list[tuple[list[int], GroupConfig, bool]] = []
        self._runs: list[_Adoption] = []

    # ------------------------------------------------------------ the ordering

    def prepare(self, action: PrepareTakeover, group: GroupConfig, now: float) -> tuple[list, bool]:
        """A group becomes MASTER: (actions, whether its next actions are held)."""
        self._groups[action.group] = group
        if self._in_flight is not None:
            self.held[action.group] = []
            self._queue.append(action)
            return [], True
        out = self._begin(action, now)
        held = self._in_flight is not None and self._in_flight[0] == action.group
        if held:
            self.held[action.group] = []
        return out, held

    def hold(self, action) -> bool:
        """Hold `action` if its group waits for a commit (True: held)."""
        queue = self.held.get(getattr(action, "group", None))
        if queue is None:
            return False
        queue.append(action)
        return True

    def committed(self, group: str, now: float) -> list:
        """The shell finished the commit (or the wait) of `group`: what was held, in order."""
        if self._in_flight is None or self._in_flight[0] != group:
            raise ValueError(f"no takeover commit of group {group!r} is in flight")
        _, origins, unknown = self._in_flight
        self._in_flight = None
        self._to_adopt.append((origins, self._groups[group], unknown))
        out = self.held.pop(group)
        while self._queue and self._in_flight is None:
            nxt = self._queue.pop(0)
            out += self._begin(nxt, now)
            if self._in_flight is None:          # skipped: its actions go out now
                out += self.held.pop(nxt.group)
        return out

    def _begin(self, action: PrepareTakeover, now: float) -> list:
        peers = self.sync.peers
        origin = action.from_node if action.from_node in peers else None
        origins = [origin] if origin is not None else list(peers)
        if origin is not None and self.scope == "all" and self._already_adopted(origin):
            return [TakeoverSkipped(action.group, origin, "already committed for another group")]
        self._in_flight = (action.group, origins, origin is None)
        # Adopted as of now, when the commit takes its entries: what the origin
        # says during the commit is in neither the commit nor the adoption, and
        # a second group of the origin then commits again (_already_adopted).
        for o in origins:
            self.sync.adopt(o, now)
        if self.commit == "continuous":
            return [WaitApplied(action.group, TAKEOVER_APPLY_WAIT)]
        pairs = [kv for o in origins for kv in self.sync.dump_external(o)]
        is_expect = ct.is_expect_key
        expectations = [(k, a) for k, a in pairs if is_expect(k)]
        if expectations:
            pairs = [(k, a) for k, a in pairs if not is_expect(k)]
        if self.scope == "group":
            pairs = [(k, a) for k, a in pairs if touches(a, self._groups[action.group].addresses)]
            expectations = of_masters(expectations, {k for k, _a in pairs})
        return [CommitFlows(action.group, origin, tuple(a for _k, a in pairs), tuple(a for _k, a in expectations))]

    def _already_adopted(self, origin: int) -> bool:
        """Another group just committed this origin's flows, and it has said nothing since."""
        p = self.sync.peers[origin]
        return p.adopted and (p.last_heard is None or p.last_heard <= p.adopted_at)

    # ------------------------------------------------------------ adoption

    def addresses_added(self, now: float) -> None:
        """A group's addresses are up: adopt what the takeovers so far committed.

        Not before: moving 100k flows costs event-loop time that the takeover
        itself must not wait for.
        """
        if not self._to_adopt:
            return
        pending, self._to_adopt = self._to_adopt, []
        guessed = any(unknown for _o, _g, unknown in pending)
        # A guessed origin must have had the chance to be heard after the
        # core's adoption grace (a heartbeat or two) before its flows are taken.
        delay = max(ADOPT_DELAY, self.sync.adopt_grace_s + 2 * self.sync.heartbeat_s) if guessed \
            else ADOPT_DELAY
        self._runs.append(_Adoption(pending, now + delay))

    def next_deadline(self) -> float | None:
        return self._runs[0].at if self._runs else None

    def step(self, now: float) -> list:
        """One bucket of the adoption due; its last step reports FlowsAdopted."""
        if not self._runs or self._runs[0].at > now:
            return []
        run = self._runs[0]
        if run.started is None:
            run.started = now
        out: list = []
        while run.items:
            origins, group, unknown = run.items[0]
            if run.origin_index >= len(origins):
                run.items.pop(0)
                run.origin_index, run.bucket = 0, 0
                continue
            origin = origins[run.origin_index]
            peer = self.sync.peers.get(origin)
            if peer is None or run.bucket >= NBUCKETS:
                run.origin_index, run.bucket = run.origin_index + 1, 0
                continue
            if unknown and not peer.adopted:
                # Heard meanwhile (or before the first bucket): the rest stays its own.
                if run.bucket == 0:
                    out.append(FlowsNotAdopted(group.name, origin, "peer alive (heard after the takeover)"))
                run.origin_index, run.bucket = run.origin_index + 1, 0
                continue
            pairs = self.sync.adoptable_bucket(origin, run.bucket)
            run.bucket += 1
            if self.scope == "group":
                masters = [(k, a) for k, a in pairs if not ct.is_expect_key(k)]
                kept = [(k, a) for k, a in masters if touches(a, group.addresses)]
                pairs = kept + of_masters([(k, a) for k, a in pairs if ct.is_expect_key(k)],
                                          {k for k, _a in kept})
            get = self.sync.internal.get
            events = [(NEW, k, a) for k, a in pairs if get(k) is None]
            run.at = now                  # the next bucket at the next step
            if events:
                run.moved += len(events)
                out += self.sync.local_events(events, now)
            return out
        self._runs.pop(0)
        out.append(FlowsAdopted(run.moved, now - run.started))
        return out


class _Adoption:
    def __init__(self, items: list, at: float):
        self.items = list(items)
        self.at = at
        self.started: float | None = None
        self.origin_index = 0
        self.bucket = 0
        self.moved = 0


def of_masters(expectations: list, masters: set[bytes]) -> list:
    """The (key, attrs) of those expectations whose master is among `masters` (keys)."""
    out = []
    for k, a in expectations:
        try:
            if ct.expect_master_key(a) in masters:
                out.append((k, a))
        except ct.CtDecodeError:
            pass
    return out


def touches(attrs: bytes, addresses: tuple[str, ...]) -> bool:
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
