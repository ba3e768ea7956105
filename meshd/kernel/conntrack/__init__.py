"""Conntrack I/O: the event reader (trio), the table dump and the committer (threads).

Each part owns its own NETLINK_NETFILTER socket, in a room of its own; a room
imports only sockets.py from this package, none imports another part:

    sockets     opening a socket with its buffers; options and errno names
                the parts share
    reader      CtEventReader subscribes to the NEW/UPDATE/DESTROY groups (and
                the expectations' EXP_NEW/EXP_DESTROY) and
                puts one list of CtEvents per burst on a trio memory channel,
                or an Overrun marker when the kernel dropped events (ENOBUFS):
                the consumer then dumps and diffs. It never crashes on what
                the kernel sends.
    dump        dump_table() reads the whole table, dump_expectations() every
                expectation (blocking; run them in a thread).
    committer   CtCommitter injects entries in batches from a worker thread.
                Its portid is known, so the reader can skip the events of our
                own injections (the kernel stamps events caused by a
                ctnetlink request with the requester's portid).

Callers import the package, `from meshd.kernel import conntrack as kct`, and
use `kct.CtEventReader`, `kct.dump_table`, ...: every public name of the
rooms is re-exported here, and callers look them up on the package when they
call, so a test that replaces `kct.dump_table` reaches them. A private name
is imported from the room that owns it.

Sockets belong to the network namespace they were created in: create these
objects in the namespace whose table they serve. Subscribing to the event
groups and SO_*BUFFORCE need CAP_NET_ADMIN.

Measured on the 2-core lab VM, kernel 6.18 (tests/lab/test_conntrack_lab.py
prints them; the VM's timing varies by about 30% from run to run):
commit of 100k TCP entries 0.6-0.8 s (125-160k/s; conntrackd: 1.12 s), of
100k SNAT entries about the same; event reader 50k events in 0.23 s (about
215k/s end to end); dump of 200k entries 1.3 s (the conntrack tool: 1.15 s).

Must not: hold code of its own (only the re-exports), or decide what is
replicated, committed or deleted: the node core and the shells do.
"""

from .committer import CommitResult, CtCommitter
from .dump import CtDumpError, dump_expectations, dump_table
from .reader import (
    DEFAULT_RCVBUF,
    GROUPS_ALL,
    GROUPS_CONNTRACK,
    GROUPS_EXPECT,
    SO_ATTACH_FILTER,
    SO_DETACH_FILTER,
    CtEventReader,
    Overrun,
)
from .sockets import (
    NETLINK_CAP_ACK,
    NETLINK_NO_ENOBUFS,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_NETLINK,
    Log,
    errno_name,
    set_buffer,
)

__all__ = [
    "DEFAULT_RCVBUF",
    "GROUPS_ALL",
    "GROUPS_CONNTRACK",
    "GROUPS_EXPECT",
    "NETLINK_CAP_ACK",
    "NETLINK_NO_ENOBUFS",
    "SOL_NETLINK",
    "SO_ATTACH_FILTER",
    "SO_DETACH_FILTER",
    "SO_RCVBUFFORCE",
    "SO_SNDBUFFORCE",
    "CommitResult",
    "CtCommitter",
    "CtDumpError",
    "CtEventReader",
    "Log",
    "Overrun",
    "dump_expectations",
    "dump_table",
    "errno_name",
    "set_buffer",
]
