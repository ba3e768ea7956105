"""What the health core asks its shell to do, and what it reports.

The shell carries the actions out in the order the core returns them.  For a
redirect that loses a dead host, SetBackends comes before DeleteStates, so no
new connection reaches the host once its old ones are deleted.

Must not: hold behaviour (the health core decides, the health shell carries
out), or name nftables, sockets or processes: a backend is (address, port,
weight), a check a CheckTarget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checkspec import CheckTarget

Backend = tuple[str, int, int]       # (address, port, weight)


@dataclass(frozen=True)
class StartCheck:
    """Run one check of `target` and report it with check_done(check_id, ...).

    `check_id` names this run only (ids are never reused), so a result that
    arrives after the core gave up on the run cannot be taken for a later one.
    """
    check_id: int
    target: CheckTarget


@dataclass(frozen=True)
class CancelCheck:
    """Stop run `check_id`: its check left the configuration (a reload).  The core
    has already forgotten the run, so a result that still arrives is ignored."""
    check_id: int


@dataclass(frozen=True)
class SetBackends:
    """The hosts that new connections to `redirect` go to, in table order.

    Empty: nothing is up (or the redirect is disabled).  `using_backup`: the
    hosts are those of the redirect's backup table.
    """
    redirect: str
    backends: tuple[Backend, ...]
    using_backup: bool


@dataclass(frozen=True)
class DeleteStates:
    """A host of `redirect` went down and the redirect has delete_dead_states:
    delete the conntrack entries that forward to it (a disabled host drains instead)."""
    redirect: str
    address: str
    port: int


@dataclass(frozen=True)
class Demote:
    """Raise (on) or release the demotion counter `counter`.

    One action per change of the counter as a whole: it is on while at least
    one enabled redirect naming it has no host to forward to.
    """
    counter: str
    on: bool
    reason: str


@dataclass(frozen=True)
class Log:
    """A line for the event log: `message` is for people, `fields` for grep and jq."""
    event: str
    fields: dict[str, Any]
    message: str
    level: str = "info"


Action = StartCheck | CancelCheck | SetBackends | DeleteStates | Demote | Log
