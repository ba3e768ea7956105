"""What the sync core asks its shell to do, and what it reports.

Actions are frozen dataclasses, as everywhere in meshd.  `SendFrame` is by far
the most frequent one (one per datagram), so it is slotted and carries only
what the shell needs: a destination and the sealed bytes.

Must not: hold behaviour (the core's parts emit these, the node core routes
them, the state mesh's shell carries them out), or grow SendFrame: it is the
hot path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(enum.IntEnum):
    """Kinds of local conntrack events (ctnetlink NEW / UPDATE / DESTROY)."""
    NEW = 1
    UPDATE = 2
    DESTROY = 3


NEW, UPDATE, DESTROY = EventKind.NEW, EventKind.UPDATE, EventKind.DESTROY


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send `data` as one UDP datagram to peer `peer`, or to all peers when None
    (one multicast datagram, or one unicast copy per peer)."""
    peer: int | None
    data: bytes


@dataclass(frozen=True, slots=True)
class ExternalChanged:
    """The external cache of `origin` changed (only emitted with report_external_changes).

    upserts: (key, attrs) now present; deletes: (key, attrs it had) now gone.
    With commit = "continuous" the node core says which of them reach the
    kernel (NodeCore.kernel_changes) and the shell's applier commits them.
    """
    origin: int
    upserts: tuple[tuple[bytes, bytes], ...]
    deletes: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class SyncState:
    """Whether this node holds every peer's state (startup / operator resync).

    The node core maps in_sync=False to a demotion, so a node never becomes
    master with half of its peers' flows (pfsync does the same with carp).
    """
    in_sync: bool
    reason: str


@dataclass(frozen=True, slots=True)
class PeerChanged:
    """A peer's lifecycle changed (sync/membership.py emits these, and sync/bulk.py the
    deadline's: "bulk retry", "out of sync", "in sync"); for the log."""
    peer: int
    state: str       # "first contact", "restarted", "absent", "back", "adoption ended",
                     # "added", "removed", "bulk retry", "out of sync", "in sync"
    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A datagram was dropped; `reason` is the stats counter name (proto/sync.md, section 9)."""
    reason: str
    detail: str
    peer: int | None
    count: int = 1           # refused together (the wire engine reports in batches)


@dataclass(frozen=True, slots=True)
class PeerAbout:
    """An authentic ABOUT from `peer` arrived (SyncCore.peer_about() has it):
    for the node core's split-brain rule, never a shell's."""
    peer: int


Action = SendFrame | ExternalChanged | SyncState | PeerChanged | FrameRejected | PeerAbout
