"""What an HTTP relay does to the messages it carries: the contract between
the relay's `http` sub-table (meshd/config/relay_http.py), the sans-I/O
actions (meshd/relay/httpactions.py) and the trio handler (meshd/relay/http.py).

An action is one of relayd's protocol actions on one entity:

    entity  header | cookie | query | path | url
    op      append | change | remove | expect | filter | hash | log

`key` names the entity (a header, cookie or query name; for path and url,
the path or host/path itself) and is a glob (fnmatch) wherever the action
only looks; `value` is the value to write (append, change) or a glob the
value must match (expect, filter; None: any value, the key is enough).

Must not: import anything from meshd: it sits on the lowest floor so that the
configuration and the handler can share it (tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

ENTITIES = ("header", "cookie", "query", "path", "url")
OPS = ("append", "change", "remove", "expect", "filter", "hash", "log")
# What each entity allows, by direction: a response has no path, query or
# url, and its cookies are Set-Cookie lines (left to header actions).
REQUEST_OPS: dict[str, tuple[str, ...]] = {
    "header": OPS,
    "cookie": OPS,
    "query": OPS,
    "path": ("append", "change", "expect", "filter", "hash", "log"),
    "url": ("expect", "filter", "hash", "log"),
}
RESPONSE_OPS: dict[str, tuple[str, ...]] = {
    "header": ("append", "change", "remove", "expect", "filter", "log"),
}
# The ops that write `value` (it is text with $VARIABLES, never a glob).
WRITING_OPS = ("append", "change")

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_HEADERS = 100


@dataclass(frozen=True)
class HttpAction:
    entity: str                  # one of ENTITIES
    op: str                      # one of OPS
    key: str                     # name or glob (path, url: the path or host/path glob)
    value: str | None = None     # append/change: the text; expect/filter: a glob (None: any)


@dataclass(frozen=True)
class HttpSpec:
    request: tuple[HttpAction, ...] = ()
    response: tuple[HttpAction, ...] = ()
    forwarded_for: bool = False          # append the client's address to X-Forwarded-For
    forwarded: bool = False              # append an RFC 7239 Forwarded element
    keep_alive: bool = True              # False: one request per client connection
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES   # request line / status line and headers
    max_headers: int = DEFAULT_MAX_HEADERS             # header lines of one message
    max_body_bytes: int = 0              # request body; 0 = no limit (bodies are streamed)
