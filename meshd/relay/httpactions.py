"""The HTTP relay's actions applied to one request or one response, sans I/O.

The handler (meshd/relay/http.py) hands over the message as plain values
(method, target, headers as (name bytes, value bytes) pairs in their order)
and gets back the message the actions made, a verdict, the value fed to the
table's hash and the lines to log.  Actions run in the order configured; the
first that refuses or closes ends the list (relayd's order, the slides'
"filter protocols before relaying").

How values are matched, so that a filter cannot be walked around:
- header names, cookie and query names are globs; header names and the url's
  host compare without case; values, paths and queries with case;
- a path is matched decoded and canonical (percent-decoding, `.`/`..` and
  repeated slashes resolved): `/admin*` also catches `/%61dmin` and
  `//x/../admin`; a query key or value is matched percent-decoded (`+` is a
  space);
- a url is `host/path` (host lowercased, port and final dot dropped), as
  relayd's url entity.
What is written is written as configured, after $VARIABLE expansion, with
CR, LF and NUL dropped (they would split a header) and, in a path or a query,
percent-encoded where the syntax needs it.

Malformed input never raises: a cookie pair without `=` is a name with an
empty value, a query pair without `=` a key with an empty value, bad
percent-escapes stay as they are, a header value that is not UTF-8 is matched
as Latin-1.

Must not: import h11 or trio, do I/O, keep state between messages.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable
from urllib.parse import quote, unquote, unquote_plus

from .httpspec import HttpAction
from .interface import SessionVars

Headers = tuple[tuple[bytes, bytes], ...]
# Longest value a log line quotes: a log action must not become a way to fill the log.
LOG_VALUE_MAX = 256
REFUSE_REQUEST_STATUS = 403
REFUSE_RESPONSE_STATUS = 502
_UNSAFE_IN_HEADER = re.compile(r"[\r\n\x00]")
_UNSAFE_IN_HEADER_BYTES = re.compile(rb"[\r\n\x00]")
# Characters a path or query value written by an action keeps as they are
# (RFC 3986 pchar, and `%` so that an escape the operator wrote survives).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = ":@!$'()*,/?-._~"


class Verdict(Enum):
    PASS = "pass"
    REFUSE = "refuse"        # answer `status` instead of relaying
    CLOSE = "close"          # a filter matched: close the client's connection


@dataclass(frozen=True)
class HttpRequest:
    method: bytes
    target: bytes
    headers: Headers


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Headers


@dataclass(frozen=True)
class RequestOutcome:
    verdict: Verdict
    request: HttpRequest           # as the actions left it (up to the deciding one)
    status: int | None = None      # REFUSE: the status to answer with
    hash_key: bytes | None = None  # values fed by hash actions (NUL-joined), None if none
    logs: tuple[str, ...] = ()
    reason: str = ""               # the action that refused or closed, for the log


@dataclass(frozen=True)
class ResponseOutcome:
    verdict: Verdict
    response: HttpResponse
    status: int | None = None
    logs: tuple[str, ...] = ()
    reason: str = ""


def apply_request(actions: Iterable[HttpAction], request: HttpRequest,
                  session: SessionVars) -> RequestOutcome:
    actions = tuple(actions)
    if not actions:
        return RequestOutcome(Verdict.PASS, request)
    msg = _Message(list(request.headers), request.target)
    for action in actions:
        verdict = _apply(action, msg, session, "request")
        if verdict is not Verdict.PASS:
            return RequestOutcome(verdict, msg.request(request.method),
                                  REFUSE_REQUEST_STATUS if verdict is Verdict.REFUSE else None,
                                  msg.hash_key(), tuple(msg.logs), describe_action(action))
    return RequestOutcome(Verdict.PASS, msg.request(request.method), None,
                          msg.hash_key(), tuple(msg.logs))


def apply_response(actions: Iterable[HttpAction], response: HttpResponse,
                   session: SessionVars) -> ResponseOutcome:
    actions = tuple(actions)
    if not actions:
        return ResponseOutcome(Verdict.PASS, response)
    msg = _Message(list(response.headers), None)
    for action in actions:
        verdict = _apply(action, msg, session, "response")
        if verdict is not Verdict.PASS:
            return ResponseOutcome(verdict, HttpResponse(response.status, tuple(msg.headers)),
                                   REFUSE_RESPONSE_STATUS if verdict is Verdict.REFUSE else None,
                                   tuple(msg.logs), describe_action(action))
    return ResponseOutcome(Verdict.PASS, HttpResponse(response.status, tuple(msg.headers)),
                           None, tuple(msg.logs))


def describe_action(action: HttpAction) -> str:
    """An action as the configuration wrote it, for log lines and errors."""
    value = "true" if action.value is None else f'"{action.value}"'
    return f'{{ {action.entity} = "{action.key}", {action.op} = {value} }}'


# --- matching --------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _glob(pattern: str, fold: bool) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern.lower() if fold else pattern), re.DOTALL)


def _matches(pattern: str, text: str, fold: bool = False) -> bool:
    return _glob(pattern, fold).match(text.lower() if fold else text) is not None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def canonical_path(raw: str) -> str:
    """The path a filter sees: decoded, dot segments and repeated slashes resolved."""
    decoded = unquote(raw, errors="replace")
    out: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    tail = "/" if decoded.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + tail


def canonical_host(raw: str) -> str:
    host = raw.strip().lower()
    if host.startswith("["):                      # [v6]:port
        end = host.find("]")
        host = host[:end + 1] if end > 0 else host
    else:
        host = host.partition(":")[0]
    return host.rstrip(".")


# --- the message being worked on ------------------------------------------

@dataclass
class _Message:
    headers: list[tuple[bytes, bytes]]
    target: bytes | None                  # None for a response
    logs: list[str] = field(default_factory=list)
    fed: list[bytes] = field(default_factory=list)
    _parts: tuple[str, str, str | None] | None = None   # (prefix, path, query or None)

    # The target split lazily: most requests see header actions only.
    def parts(self) -> tuple[str, str, str | None]:
        if self._parts is None:
            text = (self.target or b"").decode("latin-1")
            prefix = ""
            if "://" in text.partition("?")[0]:   # absolute-form: keep scheme://authority
                scheme, _, rest = text.partition("://")
                authority, slash, rest = rest.partition("/")
                prefix, text = f"{scheme}://{authority}", slash + rest
            path, question, query = text.partition("?")
            self._parts = (prefix, path, query if question else None)
        return self._parts

    def set_parts(self, path: str, query: str | None) -> None:
        prefix = self.parts()[0]
        self._parts = (prefix, path, query)
        self.target = (prefix + path + ("" if query is None else "?" + query)).encode("latin-1")

    def request(self, method: bytes) -> HttpRequest:
        return HttpRequest(method, self.target or b"", tuple(self.headers))

    def hash_key(self) -> bytes | None:
        return b"\x00".join(self.fed) if self.fed else None

    def header_values(self, name_glob: str) -> list[tuple[str, str]]:
        return [(_text(n), _text(v)) for n, v in self.headers if _matches(name_glob, _text(n), fold=True)]

    def host(self) -> str:
        prefix = self.parts()[0]
        if prefix:
            return canonical_host(prefix.partition("://")[2].rpartition("@")[2])
        for name, value in self.headers:
            if name.lower() == b"host":
                return canonical_host(_text(value))
        return ""

    def log(self, direction: str, entity: str, name: str, value: str) -> None:
        if len(value) > LOG_VALUE_MAX:
            value = value[:LOG_VALUE_MAX] + "..."
        self.logs.append(f"{direction} {entity} {name}: {value}")


def _clean(text: str) -> str:
    return _UNSAFE_IN_HEADER.sub("", text)


def _clean_bytes(value: bytes) -> bytes:
    # A header value an action rewrites keeps none of these either, even
    # from the input (h11 never passes them; these functions take any bytes).
    return _UNSAFE_IN_HEADER_BYTES.sub(b"", value)


def _apply(action: HttpAction, msg: _Message, session: SessionVars, direction: str) -> Verdict:
    value = None if action.value is None else session.expand(action.value)
    handler = _ENTITY_HANDLERS[action.entity]
    return handler(action, value, msg, direction)


def _judge(action: HttpAction, value: str | None, found: list[tuple[str, str]]) -> Verdict:
    """expect / filter over the (name, value) pairs the key matched."""
    hit = any(value is None or _matches(value, v) for _, v in found)
    if action.op == "expect":
        return Verdict.PASS if hit else Verdict.REFUSE
    return Verdict.CLOSE if hit else Verdict.PASS


READ_OPS = ("expect", "filter", "hash", "log")


def _read(action: HttpAction, value: str | None, msg: _Message, direction: str, entity: str,
          found: list[tuple[str, str]]) -> Verdict:
    """The ops that only read (expect, filter, hash, log), on the (name, value)
    pairs of the entity that the action's key matched."""
    op = action.op
    if op in ("expect", "filter"):
        return _judge(action, value, found)
    if op == "hash":
        msg.fed += [v.encode() for _, v in found]
    else:
        for name, v in found:
            msg.log(direction, entity, name, v)
    return Verdict.PASS


def _header(action: HttpAction, value: str | None, msg: _Message, direction: str) -> Verdict:
    op, key = action.op, action.key
    if op in READ_OPS:
        return _read(action, value, msg, direction, "header", msg.header_values(key))
    if op == "remove":
        msg.headers = [(n, v) for n, v in msg.headers if not _matches(key, _text(n), fold=True)]
    elif op == "append":
        written = _clean(value or "").encode()
        lowered = key.lower().encode()
        for i in range(len(msg.headers) - 1, -1, -1):
            name, old = msg.headers[i]
            if name.lower() == lowered:
                msg.headers[i] = (name, _clean_bytes(old) + b", " + written if old else written)
                break
        else:
            msg.headers.append((key.encode(), written))
    elif op == "change":
        written = _clean(value or "").encode()
        lowered = key.lower().encode()
        out: list[tuple[bytes, bytes]] = []
        placed = False
        for name, old in msg.headers:
            if name.lower() != lowered:
                out.append((name, old))
            elif not placed:
                out.append((name, written))
                placed = True
        if not placed:
            out.append((key.encode(), written))
        msg.headers = out
    return Verdict.PASS


def _cookie_pairs(msg: _Message) -> list[tuple[str, str | None]]:
    """(name, value) of every pair of every Cookie header; value None for a
    piece without `=` (kept as it came, matched as an empty value)."""
    pairs: list[tuple[str, str | None]] = []
    for name, raw in msg.headers:
        if name.lower() == b"cookie":
            for piece in _text(raw).split(";"):
                piece = piece.strip()
                if piece:
                    n, sep, v = piece.partition("=")
                    pairs.append((n.strip(), v.strip() if sep else None))
    return pairs


def _set_cookies(msg: _Message, pairs: list[tuple[str, str | None]]) -> None:
    """One Cookie header where the first was, or none when no pair is left."""
    text = _clean_bytes("; ".join(n if v is None else f"{n}={v}" for n, v in pairs).encode())
    out: list[tuple[bytes, bytes]] = []
    placed = False
    for name, raw in msg.headers:
        if name.lower() != b"cookie":
            out.append((name, raw))
        elif not placed and text:
            out.append((name, text))
            placed = True
        else:
            placed = True
    if not placed and text:
        out.append((b"Cookie", text))
    msg.headers = out


def _cookie(action: HttpAction, value: str | None, msg: _Message, direction: str) -> Verdict:
    op, key = action.op, action.key
    pairs = _cookie_pairs(msg)
    found = [(n, v or "") for n, v in pairs if _matches(key, n)]
    if op in READ_OPS:
        return _read(action, value, msg, direction, "cookie", found)
    if op == "remove":
        if found:
            _set_cookies(msg, [(n, v) for n, v in pairs if not _matches(key, n)])
    elif op == "append":
        _set_cookies(msg, pairs + [(key, _cookie_value(value))])
    elif op == "change":
        _set_cookies(msg, _replace_or_add(pairs, key, _cookie_value(value)))
    return Verdict.PASS


def _cookie_value(value: str | None) -> str:
    # A cookie value cannot hold the pair separators.
    return _clean(value or "").replace(";", "").replace(",", "")


def _replace_or_add(pairs: list[tuple[str, str | None]], key: str,
                    new: str) -> list[tuple[str, str | None]]:
    """Every pair named key gets the new value (the first stays, later ones go)."""
    out: list[tuple[str, str | None]] = []
    placed = False
    for n, v in pairs:
        if n != key:
            out.append((n, v))
        elif not placed:
            out.append((n, new))
            placed = True
    if not placed:
        out.append((key, new))
    return out


def _query_pairs(query: str | None) -> list[tuple[str, str, str]]:
    """(raw piece, decoded key, decoded value) for each `&`-separated piece."""
    if not query:
        return []
    out = []
    for piece in query.split("&"):
        if piece:
            k, _, v = piece.partition("=")
            out.append((piece, unquote_plus(k, errors="replace"), unquote_plus(v, errors="replace")))
    return out


def _query(action: HttpAction, value: str | None, msg: _Message, direction: str) -> Verdict:
    op, key = action.op, action.key
    _prefix, path, query = msg.parts()
    pairs = _query_pairs(query)
    found = [(k, v) for _, k, v in pairs if _matches(key, k)]
    if op in READ_OPS:
        return _read(action, value, msg, direction, "query", found)
    if op == "remove":
        if found:
            kept = [raw for raw, k, _ in pairs if not _matches(key, k)]
            msg.set_parts(path, "&".join(kept) if kept else None)
    else:
        written = quote(key, safe=_QUERY_SAFE) + "=" + quote(_clean(value or ""), safe=_QUERY_SAFE)
        raws = [raw for raw, _, _ in pairs]
        if op == "change":
            positions = [i for i, (_, k, _) in enumerate(pairs) if k == key]
            if positions:
                raws[positions[0]] = written
                raws = [r for i, r in enumerate(raws) if i not in positions[1:]]
            else:
                raws.append(written)
        else:
            raws.append(written)
        msg.set_parts(path, "&".join(raws))
    return Verdict.PASS


def _decoded_query(query: str | None) -> str:
    return "" if query is None else unquote_plus(query, errors="replace")


def _path(action: HttpAction, value: str | None, msg: _Message, direction: str) -> Verdict:
    op, key = action.op, action.key
    _prefix, path, query = msg.parts()
    canonical = canonical_path(path) if path.startswith("/") else path
    if op in ("append", "change"):
        if _matches(key, canonical):
            text = quote(_clean(value or ""), safe=_PATH_SAFE)
            msg.set_parts(path + text if op == "append" else text, query)
        return Verdict.PASS
    return _whole(action, value, msg, direction, "path", canonical, query)


def _url(action: HttpAction, value: str | None, msg: _Message, direction: str) -> Verdict:
    _prefix, path, query = msg.parts()
    canonical = canonical_path(path) if path.startswith("/") else path
    host = msg.host()
    host_glob, slash, path_glob = action.key.partition("/")
    # The host compares without case, the path with it; a key without a
    # path ("www.example.com") takes any path.
    hit = _matches(host_glob, host, fold=True) and (not slash or _matches("/" + path_glob, canonical))
    return _whole(action, value, msg, direction, "url", host + canonical, query, hit)


def _whole(action: HttpAction, value: str | None, msg: _Message, direction: str,
           entity: str, subject: str, query: str | None, key_hit: bool | None = None) -> Verdict:
    """path / url: the key globs the subject, the value (if any) globs the query."""
    if key_hit is None:
        key_hit = _matches(action.key, subject)
    hit = key_hit and (value is None or _matches(value, _decoded_query(query)))
    if action.op == "expect":
        return Verdict.PASS if hit else Verdict.REFUSE
    if action.op == "filter":
        return Verdict.CLOSE if hit else Verdict.PASS
    if hit and action.op == "hash":
        msg.fed.append(subject.encode())
    elif hit and action.op == "log":
        shown = subject if query is None else f"{subject}?{query}"
        msg.log(direction, entity, action.key, shown)
    return Verdict.PASS


_ENTITY_HANDLERS = {"header": _header, "cookie": _cookie, "query": _query,
                    "path": _path, "url": _url}
