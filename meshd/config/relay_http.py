"""The `http` sub-table of a `[[health.relay]]`: the request and response
actions, forwarding headers, limits and keep-alive, as an `HttpSpec`.

An action is a table of two keys, the entity and the op, read as one
sentence: `{ header = "Host", expect = "www.example.com" }`,
`{ cookie = "SID", hash = true }`, `{ path = "/admin*", filter = true }`.
docs/relays.md lists every form with its relayd.conf equivalent.

Must not: open a socket or a file, or know how a relay listens or balances
(meshd/config/relay.py calls this for the sub-table and owns the rest).
"""

from __future__ import annotations

import re
from typing import Any

from ..relay.httpspec import (DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, ENTITIES, OPS,
                              REQUEST_OPS, RESPONSE_OPS, WRITING_OPS, HttpAction, HttpSpec)
from .reader import Reader, describe

HTTP_KEYS = {"request", "response", "forwarded_for", "forwarded", "keep_alive",
             "max_header_bytes", "max_headers", "max_body_bytes"}
VARIABLES = ("$REMOTE_ADDR", "$REMOTE_PORT", "$SERVER_ADDR", "$SERVER_PORT", "$TIMEOUT")
_VARIABLE_RE = re.compile(r"\$[A-Za-z_]+")
# RFC 9110 token characters: what a header name written by an action may hold.
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_GLOB_CHARS = set("*?[")
# Written by h11 from the message's own framing, whatever an action says.
FRAMING_HEADERS = ("content-length", "transfer-encoding")
# Bytes that would end a header line or a request target early.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def parse_http(r: Reader, data: Any, path: str) -> HttpSpec | None:
    """The relay's `http` sub-table (None when absent: the defaults)."""
    if data is None:
        return HttpSpec()
    problems_before = len(r.problems)
    t = r.table(data, path, HTTP_KEYS)
    request = _actions(r, t, path, "request", REQUEST_OPS)
    response = _actions(r, t, path, "response", RESPONSE_OPS)
    kw: dict[str, Any] = {
        "forwarded_for": r.get(t, path, "forwarded_for", "bool", default=False),
        "forwarded": r.get(t, path, "forwarded", "bool", default=False),
        "keep_alive": r.get(t, path, "keep_alive", "bool", default=True),
        "max_header_bytes": r.get(t, path, "max_header_bytes", "int",
                                  default=DEFAULT_MAX_HEADER_BYTES, lo=1024, hi=1024 * 1024),
        "max_headers": r.get(t, path, "max_headers", "int", default=DEFAULT_MAX_HEADERS,
                             lo=1, hi=10_000),
        "max_body_bytes": r.get(t, path, "max_body_bytes", "int", default=0, lo=0),
    }
    if len(r.problems) > problems_before:
        return None
    return HttpSpec(request=request, response=response, **kw)


def _actions(r: Reader, t: dict, path: str, direction: str,
             allowed: dict[str, tuple[str, ...]]) -> tuple[HttpAction, ...]:
    items = r.get(t, path, direction, "list", default=[])
    actions = []
    for i, item in enumerate(items or []):
        action = _action(r, item, f"{path}.{direction}[{i}]", direction, allowed)
        if action is not None:
            actions.append(action)
    return tuple(actions)


def _action(r: Reader, item: Any, where: str, direction: str,
            allowed: dict[str, tuple[str, ...]]) -> HttpAction | None:
    example = '{ header = "X-Foo", append = "bar" }'
    if not isinstance(item, dict):
        r.problem(where, f"expected an action table like {example}, found {describe(item)}")
        return None
    entities = [k for k in item if k in ENTITIES]
    ops = [k for k in item if k in OPS]
    for key in item:
        if key not in ENTITIES and key not in OPS:
            r.problem(f"{where}.{key}", f"unknown key (an action is one of {', '.join(ENTITIES)} "
                      f"and one of {', '.join(OPS)})")
    if len(entities) != 1 or len(ops) != 1:
        which = "entity" if len(entities) != 1 else "op"
        names = ENTITIES if which == "entity" else OPS
        found = ", ".join(entities if which == "entity" else ops) or "none"
        r.problem(where, f"expected exactly one {which} ({', '.join(names)}), found {found}"
                  f" (an action reads like {example})")
        return None
    entity, op = entities[0], ops[0]
    if entity not in allowed:
        r.problem(f"{where}.{entity}", f"not in a {direction} (a {direction} has "
                  f"{', '.join(allowed)})")
        return None
    if op not in allowed[entity]:
        r.problem(f"{where}.{op}", f"not an op of {entity} in a {direction} "
                  f"(only {', '.join(allowed[entity])})")
        return None
    key = item[entity]
    if not isinstance(key, str) or key == "":
        r.problem(f"{where}.{entity}", f"expected a non-empty string, found {describe(key)}")
        return None
    if not _key_ok(r, f"{where}.{entity}", entity, op, key):
        return None
    value = _value(r, f"{where}.{op}", op, item[op])
    if value is ...:
        return None
    return HttpAction(entity, op, key, value)


def _key_ok(r: Reader, where: str, entity: str, op: str, key: str) -> bool:
    if _CONTROL_RE.search(key):
        r.problem(where, f"control characters are not allowed, found {describe(key)}")
        return False
    writes = op in WRITING_OPS or op == "remove"
    if entity in ("header", "cookie", "query") and op in WRITING_OPS and _GLOB_CHARS & set(key):
        r.problem(where, f"{op} names the {entity} it writes: a name, not a glob, found {describe(key)}")
        return False
    if entity == "header" and writes and not _TOKEN_RE.match(key.replace("*", "a").replace("?", "a")):
        r.problem(where, f"expected a header name (letters, digits, !#$%&'*+.^_`|~-), found {describe(key)}")
        return False
    if entity == "header" and writes and key.lower() in FRAMING_HEADERS:
        r.problem(where, f"the relay frames each message itself: {key} cannot be written or removed")
        return False
    if entity == "cookie" and any(c in key for c in "=; ,"):
        r.problem(where, f"a cookie name holds no '=', ';', ',' or space, found {describe(key)}")
        return False
    if entity == "path" and not key.startswith(("/", "*")):
        r.problem(where, f"expected a path glob starting with '/' or '*', found {describe(key)}")
        return False
    return True


def _value(r: Reader, where: str, op: str, value: Any) -> str | None | Any:
    """The action's value: text (append, change), a glob or None (expect,
    filter), None (remove, hash, log); `...` when it is wrong."""
    if op in WRITING_OPS:
        if op == "append" and value == "":
            r.problem(where, "expected the text to append, found an empty string")
            return ...
        if not isinstance(value, str):
            r.problem(where, f"expected the text to write (a string, $VARIABLES allowed), "
                      f"found {describe(value)}")
            return ...
        return value if _text_ok(r, where, value) else ...
    if op in ("expect", "filter"):
        if value is True:
            return None
        if isinstance(value, str) and value != "":
            return value if _text_ok(r, where, value) else ...
        r.problem(where, f"expected true (the key is enough) or a glob the value must match, "
                  f"found {describe(value)}")
        return ...
    if value is not True:
        r.problem(where, f"expected true, found {describe(value)} (leave the action out instead)")
        return ...
    return None


def _text_ok(r: Reader, where: str, text: str) -> bool:
    if _CONTROL_RE.search(text):
        r.problem(where, f"control characters are not allowed, found {describe(text)}")
        return False
    for variable in _VARIABLE_RE.findall(text):
        if not any(variable.startswith(known) for known in VARIABLES):
            r.problem(where, f"unknown variable {variable} (known: {', '.join(VARIABLES)})")
            return False
    return True
