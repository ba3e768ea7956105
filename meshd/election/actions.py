"""What the election core asks its shell to do, and what it reports.

The shell carries out actions in the order the core returns them; for a group
that becomes MASTER that order is the failover ordering of DESIGN.md:
PrepareTakeover (conntrack commit), AddAddresses, Announce (GARP/NA),
SendAdvert, RunNotify.
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

    The shell must finish it before carrying out the actions that follow.
    `from_node` is the master being replaced, when known.
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
    reason: str


@dataclass(frozen=True)
class AdvertRejected:
    reason: str
    detail: str
    source: str


@dataclass(frozen=True)
class DemotionChanged:
    name: str
    value: int
    reason: str


Action = (SendAdvert | PrepareTakeover | AddAddresses | RemoveAddresses | Announce
          | RunNotify | StateChanged | AdvertRejected | DemotionChanged)
