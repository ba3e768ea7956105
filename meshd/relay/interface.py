"""What a protocol handler (http.py, dns.py) gets from the relay engine.

The engine accepts a client, builds these, and calls the handler of the
relay's protocol; the handler never picks a backend or opens a socket to
one itself: it asks its `Upstream`, which applies the relay's balancing mode,
the health of its tables (the same HealthCore as the L3 redirects), the
backup table, connect timeout and backend TLS.

Must not: do I/O or import trio at module level beyond type names (these
are the types both sides code against).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import trio


class NoBackend(Exception):
    """No host of the relay's tables (main, then backup) is up, or the relay
    is disabled (draining): the handler answers as its protocol does (HTTP
    503, DNS SERVFAIL, TCP close) and counts it."""


@dataclass(frozen=True)
class Backend:
    host: str               # the host's name in the health table
    address: str            # canonical IPv4 / IPv6 text
    port: int


@dataclass(frozen=True)
class SessionVars:
    """relayd's macros for header values: $REMOTE_ADDR, $REMOTE_PORT,
    $SERVER_ADDR, $SERVER_PORT, $TIMEOUT (the session's idle timeout, s)."""
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    timeout_s: float

    def expand(self, text: str) -> str:
        return (text.replace("$REMOTE_ADDR", self.remote_addr)
                    .replace("$REMOTE_PORT", str(self.remote_port))
                    .replace("$SERVER_ADDR", self.server_addr)
                    .replace("$SERVER_PORT", str(self.server_port))
                    .replace("$TIMEOUT", f"{self.timeout_s:g}"))


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0      # to a backend
    idle_s: float = 600.0       # no byte either way
    session_s: float = 0.0      # whole session; 0 = no limit


class Upstream(Protocol):
    """The engine's side of one client session."""

    async def connect(self, hash_key: bytes | None = None) -> tuple[trio.abc.Stream, Backend]:
        """A stream to a backend chosen by the relay's mode: `hash_key` is the
        value fed by the protocol (an HTTP `hash` action) for mode "hash";
        "source-hash" uses the client's address; "roundrobin" and
        "loadbalance" (least sessions) ignore it. TLS towards the backend is
        already done if configured. Raises NoBackend, or OSError / trio.TooSlowError
        when the chosen backend does not answer (the engine has counted it)."""
        ...

    def pick_datagram(self, hash_key: bytes | None = None) -> Backend:
        """A backend for one datagram exchange (DNS over UDP): same choice as
        connect(), no connection. Raises NoBackend."""
        ...

    def datagram_sent(self, backend: Backend) -> None:
        """A query went to this backend by datagram: counted in its total
        (`meshctl show relays`), as a connect() counts a session."""
        ...

    def log(self, event: str, level: str = "info", **fields) -> None:
        """The relay's log (a `log` action, errors): bounded by the engine."""
        ...
