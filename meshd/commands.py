"""Operator commands as every engine sees them: their names, the error a
handler raises, and the checks of a request's arguments.

A request is a dict decoded from one line of the control socket
(meshd/control/protocol.py frames it); the daemon and the shells
(meshd/daemon.py, meshd/sync/shell.py, meshd/health/shell.py) answer it.
This module sits on the lowest floor, below both, so a shell can validate a
request without importing the control server (docs/architecture.md, "Floors").

Every bad request is answered with a message naming the command, the key,
what was expected and what was found -- the same style as configuration
errors.

Must not: know a socket, the framing or an engine, or import anything from
meshd: everything that answers a command imports this module.
"""

from __future__ import annotations

import json
from typing import Any

# Commands known to meshctl, in the order its help lists them.  The daemon's
# handler decides what it really implements; unknown_command() builds the
# answer for anything else.
COMMANDS: dict[str, str] = {
    "status": "show groups, election state, advert counters and demotion counters",
    "cluster": "every node this one hears: groups and states, sync, version, settings that differ",
    "discover": "what discovery heard on the sync link, and why each node was or was not taken as a peer",
    "demote": "add N (may be negative) to the operator's share of demotion counter NAME",
    "promote": "remove the operator's share of demotion counter NAME",
    "enable": "let GROUP take part in elections again",
    "disable": "take GROUP out of elections (bows out if master)",
    "reload": "re-read the configuration file and apply it, or refuse it naming what cannot change",
    "dump": "list the internal cache (this node's flows) or the external caches (the peers')",
    "flush": "empty the internal or external caches, or this node's kernel conntrack table",
    "commit": "inject the external cache (of one peer, or all) into the kernel now",
    "resync": "ask every peer for a full resend of its flows",
    "stats": "state mesh counters: events, frames, per-peer lag and loss, caches, last commit",
    "show": "health: `summary` (redirects, tables, hosts and their status), `hosts` (checks in detail), "
            "`relays` (listeners, sessions, per backend) or `sessions` (client, backend, age, bytes)",
    "host": "health: `enable` or `disable` a host NAME (disabled: drained, not checked)",
    "table": "health: `enable` or `disable` a table NAME",
    "redirect": "health: `enable` or `disable` a redirect NAME",
    "relay": "relays: `enable` or `disable` a relay NAME (disabled: drained, open sessions go on)",
}

_MISSING = object()


class ControlError(Exception):
    """A request that cannot be carried out; the message goes to the client as is.

    Raise it from a handler for anything the operator can fix (bad argument,
    unknown group).  The server answers {"ok": false, "error": message} and
    keeps the connection open.  Keyword arguments become members of that
    answer (`reload` lists what it refused in "refused").
    """

    def __init__(self, message: str, **fields: Any):
        self.message = message
        self.fields = fields
        super().__init__(message)


# --------------------------------------------------------------- validation


_KINDS = {
    int: "an integer", str: "a non-empty string", bool: "true or false",
    float: "a number", list: "a list", dict: "an object",
}


def describe(value: Any) -> str:
    """A short JSON-flavoured rendering of a found value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) < 60 else value[:57] + "...", ensure_ascii=False)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _matches(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str) and value != ""
    return isinstance(value, kind)


def require(request: dict, key: str, kind: type, *, default: Any = _MISSING,
            lo: float | None = None, hi: float | None = None) -> Any:
    """Fetch request[key], checking its JSON type (and range for numbers).

    Messages name the command: `demote: "by" must be an integer, found "x"`.
    bool is never accepted as an integer (JSON keeps them apart, Python does
    not).  A key that is absent or null takes `default` when one is given.
    """
    cmd = request.get("cmd", "request")
    value = request.get(key)
    expected = _KINDS.get(kind, kind.__name__)
    if kind in (int, float) and (lo is not None or hi is not None):
        if lo is not None and hi is not None:
            expected += f" from {lo} to {hi}"
        elif lo is not None:
            expected += f" of at least {lo}"
        else:
            expected += f" of at most {hi}"
    if value is None:
        if default is not _MISSING:
            return default
        raise ControlError(f'{cmd}: missing "{key}" ({expected})')
    if (not _matches(value, kind)
            or (lo is not None and value < lo) or (hi is not None and value > hi)):
        raise ControlError(f'{cmd}: "{key}" must be {expected}, found {describe(value)}')
    return value


def unknown_command(cmd: str) -> ControlError:
    """The error for a command the handler does not implement (raise the result)."""
    return ControlError(f"unknown command {describe(cmd)}; known commands: {', '.join(COMMANDS)}")
