"""The HTTP relay's rules about headers that are not actions: which ones
belong to one hop, which frame a message, how forwarding is recorded.

Headers are (name bytes, value bytes) pairs; names from h11's parser are
lowercase (`Headers`), those of `raw_items()` and of the actions as written,
so every comparison here lowers the name unless it says otherwise.

Must not: import h11 or trio, do I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

HeaderList = list[tuple[bytes, bytes]]
# Headers that describe one hop, not the message (RFC 9110 7.6.1), and
# Expect (the relay answers 100 Continue itself).  The framing headers stay:
# h11 frames each side from them.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"trailer", b"upgrade", b"expect"})
FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def end_to_end(raw: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The headers without the hop-by-hop ones and those the Connection header names."""
    raw = tuple(raw)
    named = set()
    for name, value in raw:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    drop = HOP_BY_HOP | named
    return tuple((n, v) for n, v in raw if n.lower() not in drop)


def framed_as(headers: Iterable[tuple[bytes, bytes]], parsed: Iterable[tuple[bytes, bytes]]) -> HeaderList:
    """The headers the actions left, with the framing of the message as h11
    parsed it (`parsed`: lowercase names): an action (`{ header = "*",
    remove = true }`) must not change how many body bytes h11 sends."""
    out = [(n, v) for n, v in headers if n.lower() not in FRAMING]
    out += [(n, v) for n, v in parsed if n in FRAMING]
    return out


def head_bytes(first_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """About the size of a message head on the wire (each line's ": " and CRLF counted)."""
    return len(first_line) + sum(len(n) + len(v) + 4 for n, v in headers)


def content_length(parsed: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in parsed:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def has_chunked_body(parsed: Iterable[tuple[bytes, bytes]]) -> bool:
    # h11 accepts no other transfer coding, so the header means chunked.
    return any(name == b"transfer-encoding" for name, _ in parsed)


def append_header(headers: HeaderList, name: bytes, value: bytes) -> None:
    """Extend the last occurrence (`a, b`) or add the header."""
    lowered = name.lower()
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0].lower() == lowered:
            headers[i] = (headers[i][0], headers[i][1] + b", " + value)
            return
    headers.append((name, value))


def forwarded_element(remote_addr: str, server_addr: str, tls: bool) -> str:
    """One RFC 7239 element: `for=...;by=...;proto=http|https`."""
    return f"for={_node(remote_addr)};by={_node(server_addr)};proto={'https' if tls else 'http'}"


def _node(address: str) -> str:
    """An RFC 7239 node: IPv6 in quotes and brackets; anything not an address quoted."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f'"[{address}]"'
    except ValueError:
        return f'"{address}"'
    return address


def authority(address: str, port: int) -> str:
    """host:port for a Host header, IPv6 in brackets."""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"
