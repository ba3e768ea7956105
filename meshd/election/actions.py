"""What the election core returns: actions for the shells, and events to log.

For a group that becomes MASTER the core returns the failover ordering of
DESIGN.md: PrepareTakeover, AddAddresses, Announce (GARP/NA), SendAdvert,
RunNotify.  The node core (meshd/node/takeover.py) turns PrepareTakeover into
the commit (CommitFlows or WaitApplied) and holds the group's later actions
until that is done; the election shell carries out the rest, each group's in
order.  StateChanged, AdvertRejected and DemotionChanged are events: the
daemon logs them.

A StateChanged carries its reason twice: as words for the log
(`no advert for 304 ms (master down)`), which may hold node ids,
durations and interface names, and as a `Cause`, one of a fixed set, so
that counting transitions by cause (meshd/metrics/) keeps a bounded number
of series whatever the words say.

Must not: hold behaviour: these are frozen values, and every rule that emits
them lives in core.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..config import GroupConfig


class State(enum.Enum):
    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"
    DISABLED = "DISABLED"


class Cause(enum.Enum):
    """Why a group changed state, as a bounded set (docs/metrics.md has the table).

    From this node's side: `preempt` and `peer_demoted` take the master role
    from a worse master; `preempted` and `demoted` give it up to a better one
    (by advskew or node id, or because this node's demotion is higher).
    """
    STARTUP = "startup"              # INIT -> BACKUP (or FAULT) at start
    MASTER_DOWN = "master_down"      # BACKUP -> MASTER: no advert for master-down
    BOWOUT = "bowout"                # BACKUP -> MASTER: the master bowed out
    PREEMPT = "preempt"              # BACKUP -> MASTER: preempting a master with worse advskew/id
    PEER_DEMOTED = "peer_demoted"    # BACKUP -> MASTER: the master advertises a higher demotion
    PREEMPTED = "preempted"          # MASTER -> BACKUP: a better advskew or node id
    DEMOTED = "demoted"              # MASTER -> BACKUP: this node's demotion is higher
    FAULT = "fault"                  # -> FAULT: interface down, send failed, weight-0 track failed
    RECOVERED = "recovered"          # FAULT -> BACKUP: the fault cleared, or a send retried
    OPERATOR = "operator"            # meshctl enable / disable
    RELOAD = "reload"                # a group added, changed or removed by a reload
    SHUTDOWN = "shutdown"            # the bow-out at stop


@dataclass(frozen=True)
class SendAdvert:
    group: str
    data: bytes
    bowout: bool = False
    # The group's settings when the advert was made: a bow-out of a group that
    # a reload removed or moved must still leave on the old interface/peers.
    config: GroupConfig | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PrepareTakeover:
    """Step 1 of the failover ordering: commit replicated state for the group.

    The node core turns it into CommitFlows or WaitApplied (node/actions.py)
    and holds the group's actions that follow until the shell reports the
    commit done; without a state mesh there is nothing to commit and it is
    dropped.  `from_node` is the master being replaced, when known.
    """
    group: str
    from_node: int | None


@dataclass(frozen=True)
class AddAddresses:
    group: str
    interface: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class RemoveAddresses:
    group: str
    interface: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Announce:
    """Gratuitous ARP / unsolicited neighbour advertisements for the addresses."""
    group: str
    interface: str
    addresses: tuple[str, ...]
    count: int
    interval_ms: int


@dataclass(frozen=True)
class RunNotify:
    group: str
    state: State
    priority: int
    config: GroupConfig | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class StateChanged:
    group: str
    old: State
    new: State
    reason: str              # words, for the log
    cause: Cause             # the same, bounded, for counting


@dataclass(frozen=True)
class AdvertRejected:
    reason: str
    detail: str
    source: str
    count: int = 1           # refused together (the wire engine reports in batches)


@dataclass(frozen=True)
class DemotionChanged:
    name: str
    value: int
    reason: str


Action = (SendAdvert | PrepareTakeover | AddAddresses | RemoveAddresses | Announce
          | RunNotify | StateChanged | AdvertRejected | DemotionChanged)
