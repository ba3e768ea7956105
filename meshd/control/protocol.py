"""Control protocol shared by the meshd server side and meshctl.

The wire format is JSON Lines over a UNIX stream socket (proto/control.md):
one request object per line, one answer object per line.  JSON Lines because
it can be spoken by hand with `socat - UNIX:/run/meshd/meshd.sock`, needs no
length prefixes, and a stream of records (big dumps) is just more lines.

This module holds what both ends must agree on about the wire (limits,
framing, answer envelopes).  It never dispatches or validates a command: the
command names, `ControlError` and the argument checks live in meshd/commands.py,
below the services that answer them.

Must not: do I/O (the server and meshctl own the sockets), or import anything
from meshd but `commands`: meshctl and the server both import it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..commands import ControlError, describe

# Longest request line accepted, newline excluded.  Requests are tiny; the
# limit only bounds the memory a misbehaving client can make us buffer.
MAX_LINE = 64 * 1024

# Deepest nesting of arrays and objects accepted, the request object itself
# being level 1.  Requests are flat (depth 1 or 2); the bound is checked before
# json.loads, whose decoder recurses per level and raises RecursionError near
# 1000 levels -- a 64 KiB line holds 32768 of them.
MAX_DEPTH = 32

# A JSON string, or an unclosed one up to the end of the line: its brackets
# are text.  Unrolled ("normal* (special normal*)*") so long strings do not backtrack.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")

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


def nested_deeper_than(line: bytes, limit: int) -> bool:
    """Whether arrays and objects in a JSON text nest more than `limit` levels deep.

    A pre-scan, cheap next to parsing: a line with at most `limit` opening
    brackets cannot nest deeper and is not scanned; otherwise strings are cut
    out and the brackets left are counted, stopping once past the limit.
    Malformed text (unbalanced brackets) is judged by its opening brackets;
    json.loads reports what else is wrong with it.
    """
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub(b"", line)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif depth:
            depth -= 1
    return False


def decode_request(line: bytes) -> dict:
    """Parse one request line (newline already removed); ControlError names the problem.

    Bounded before parsing: at most MAX_LINE bytes and MAX_DEPTH levels.
    """
    if len(line) > MAX_LINE:
        raise ControlError(f"request line longer than {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ControlError(f"request is not valid UTF-8 (byte {e.start})") from None
    if nested_deeper_than(line, MAX_DEPTH):
        raise ControlError(f"request nested deeper than {MAX_DEPTH} levels")
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
