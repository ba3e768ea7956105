"""Control protocol shared by the meshd server side and meshctl.

The wire format is JSON Lines over a UNIX stream socket (proto/control.md):
one request object per line, one answer object per line.  JSON Lines because
it can be spoken by hand with `socat - UNIX:/run/meshd/meshd.sock`, needs no
length prefixes, and a stream of records (big dumps) is just more lines.

This module holds what both ends must agree on (limits, framing, answer
envelopes) and the validation helpers command handlers use, so that every
bad request is answered with a message naming the command, the key, what was
expected and what was found -- the same style as configuration errors.
"""

from __future__ import annotations

import json
from typing import Any

# Longest request line accepted, newline excluded.  Requests are tiny; the
# limit only bounds the memory a misbehaving client can make us buffer.
MAX_LINE = 64 * 1024

# Commands known to meshctl, in the order its help lists them.  The daemon's
# handler decides what it really implements; unknown_command() builds the
# answer for anything else.
COMMANDS: dict[str, str] = {
    "status": "show groups, election state, advert counters and demotion counters",
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
    "show": "health: `summary` (redirects, tables, hosts and their status) or `hosts` (checks in detail)",
    "host": "health: `enable` or `disable` a host NAME (disabled: drained, not checked)",
    "table": "health: `enable` or `disable` a table NAME",
    "redirect": "health: `enable` or `disable` a redirect NAME",
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


# ------------------------------------------------------------------ framing


def encode(obj: dict) -> bytes:
    """One answer or request as a line.  Raises TypeError/ValueError if obj is not JSON.

    allow_nan=False: NaN/Infinity are not JSON and would break strict clients
    (jq, Go); better to fail loudly on the daemon side.
    """
    return json.dumps(obj, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8") + b"\n"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_request(line: bytes) -> dict:
    """Parse one request line (newline already removed); ControlError names the problem."""
    if len(line) > MAX_LINE:
        raise ControlError(f"request line longer than {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ControlError(f"request is not valid UTF-8 (byte {e.start})") from None
    try:
        request = json.loads(text, parse_constant=_no_constants)
    except ValueError as e:
        raise ControlError(f"request is not valid JSON: {e}") from None
    if not isinstance(request, dict):
        raise ControlError(f"request must be a JSON object, found {describe(request)}")
    if "cmd" not in request:
        raise ControlError('request has no "cmd" key')
    cmd = request["cmd"]
    if not isinstance(cmd, str) or not cmd:
        raise ControlError(f'"cmd" must be a non-empty string, found {describe(cmd)}')
    return request


def ok_answer(result: dict, *, more: bool | None = None) -> dict:
    """The success envelope.  "ok" (and "more") come first and cannot be overridden by result."""
    head: dict[str, Any] = {"ok": True}
    if more is not None:
        head["more"] = more
    return {**head, **{k: v for k, v in result.items() if k not in ("ok", "more")}}


def error_answer(message: str, fields: dict | None = None) -> dict:
    """The error envelope; `fields` (a ControlError's) cannot override "ok" or "error"."""
    extra = {k: v for k, v in (fields or {}).items() if k not in ("ok", "error", "more")}
    return {"ok": False, "error": message, **extra}


END_OF_STREAM = {"ok": True, "more": False}


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
