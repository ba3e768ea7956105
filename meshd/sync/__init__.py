"""The conntrack state mesh (proto/sync.md): a sans-I/O core and its frame codec.

The package re-exports what the core's callers use (`from meshd.sync import
SyncCore, SendFrame, NEW`): SyncCore, its actions and event kinds, and
FrameError.  core.py's docstring says which module holds which rule; the
node core also imports `filters` (which events are replicated) and `digest`
(the buckets).  The trio shell is meshd/sync/shell.py, on the shells' floor.

Must not: import the shell or anything that does I/O: importing the package
loads the core, and the simulator runs it.
"""

from .actions import (DESTROY, NEW, UPDATE, Action, EventKind, ExternalChanged, FrameRejected,
                      PeerChanged, SendFrame, SyncState)
from .core import SyncCore
from .frames import FrameError

__all__ = ["SyncCore", "FrameError", "EventKind", "NEW", "UPDATE", "DESTROY", "Action",
           "SendFrame", "ExternalChanged", "SyncState", "PeerChanged", "FrameRejected"]
