"""What the node core asks its shells to do, beyond the engines' own actions.

The node core returns the election's, the state mesh's and the health
checker's actions (meshd/election/actions.py, meshd/sync/actions.py,
meshd/health/actions.py) together with these.  The kernel work here is the
state mesh shell's to carry out (a takeover's CommitFlows or WaitApplied runs
on the group's executor in the election shell, which hands it to
SyncShell.commit_for_takeover); each one that the core waits for has an
input that reports it done (named in its docstring).  The others report
what happened, for the log (KernelResynced also ends the shell's wait for its
dump).

Must not: hold behaviour: node/takeover.py and node/flows.py emit these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommitFlows:
    """Step 1 of a takeover (commit = "takeover"): put these replicated flows
    into the kernel, then call NodeCore.takeover_committed(group, ...).  The
    group's addresses, announcements, adverts and hooks wait for it."""
    group: str
    from_node: int | None
    entries: tuple[bytes, ...]
    # The helpers' expectations of those flows (attrs): committed after every
    # entry, since the kernel creates one only for a master in its table.
    expectations: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class WaitApplied:
    """Step 1 of a takeover (commit = "continuous"): the flows are in the kernel
    already; wait until the changes still queued for it are applied (at most
    `limit_s`), then call NodeCore.takeover_committed(group, ...)."""
    group: str
    limit_s: float


@dataclass(frozen=True)
class TakeoverSkipped:
    """No commit for this takeover: another group (of the same sync set,
    usually) has just committed the same origin's flows.  For the log."""
    group: str
    from_node: int
    reason: str


@dataclass(frozen=True)
class DumpKernel:
    """Dump the kernel's conntrack table and hand it to NodeCore.kernel_table(...):
    the internal cache is rebuilt from it (start, overrun, filter change)."""
    reason: str


@dataclass(frozen=True)
class KernelResynced:
    """A dump was diffed into the internal cache (the changes went to the peers)."""
    reason: str
    entries: int            # kept by the filter (and not a peer's injected flow)
    kernel_entries: int     # in the dump
    seconds: float          # from the dump's arrival to the last bucket, on the node's clock


@dataclass(frozen=True)
class FlowsAdopted:
    """The flows taken over are now this node's (internal cache) and replicated."""
    entries: int
    seconds: float


@dataclass(frozen=True)
class FlowsNotAdopted:
    """A peer guessed to be the node replaced (none was known) was heard after
    the takeover: it is alive and its flows stay its own."""
    group: str
    peer: int
    reason: str


@dataclass(frozen=True)
class SplitBrain:
    """Two or more nodes claim MASTER of `group` (this one among them or not),
    for at least SPLIT_BRAIN_CONFIRM_S (node/cluster.py): `on`; `on` False
    when one master is left.  For the log and the counters."""
    group: str
    nodes: tuple[int, ...]
    on: bool
