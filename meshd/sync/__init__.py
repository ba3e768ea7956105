"""The conntrack state mesh (proto/sync.md): a sans-I/O core and its frame codec."""

from .actions import (DESTROY, NEW, UPDATE, Action, EventKind, ExternalChanged, FrameRejected,
                      PeerChanged, SendFrame, SyncState)
from .core import SyncCore
from .frames import FrameError

__all__ = ["SyncCore", "FrameError", "EventKind", "NEW", "UPDATE", "DESTROY", "Action",
           "SendFrame", "ExternalChanged", "SyncState", "PeerChanged", "FrameRejected"]
