"""The engine's `Upstream` (meshd/relay/interface.py): one client session's
way to a backend, for every protocol handler.

`connect` asks the relay's balancer (meshd/relay/balance.py) for a backend,
connects within the relay's connect timeout, sets the `tcp` options, and
does the TLS handshake towards the backend when `backend_tls` is set.  A
backend that does not answer is counted (`connect_failed`: passed over for
a moment) and the next candidate tried, up to CONNECT_TRIES backends; the
last error is raised.  Every backend connected is counted open until the
session ends (`release`), for loadbalance and `show relays`.

Must not: pick a backend itself (the balancer does), or read from the client.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from dataclasses import dataclass, field

import trio

from .interface import Backend, NoBackend
from .sockopts import set_tcp_options

CONNECT_TRIES = 3
LOG_BURST = 20               # log lines a relay may write per LOG_WINDOW_S
LOG_WINDOW_S = 10.0


@dataclass
class RelayLog:
    """A relay's log, bounded: a flood of clients cannot flood the daemon's journal."""
    relay: str
    sink: object                                # ChildLog-like: sink(event, level, **fields)
    recent: deque = field(default_factory=deque)
    dropped: int = 0

    def __call__(self, event: str, level: str = "info", **fields) -> None:
        now = trio.current_time()
        while self.recent and self.recent[0] < now - LOG_WINDOW_S:
            self.recent.popleft()
        if len(self.recent) >= LOG_BURST:
            self.dropped += 1
            return
        self.recent.append(now)
        if self.dropped:
            fields["dropped_before"] = self.dropped
            self.dropped = 0
        self.sink(event, level, relay=self.relay, **fields)


class RelayUpstream:
    """Args:
        relay: the engine's runtime of the relay (its balancer, tcp options,
            timeouts, backend TLS context, log and counters).
        client: the client's address (source-hash).
        session: the session's registry entry (its backend is shown by `show sessions`).
    """

    def __init__(self, relay, client: str, session=None):
        self.relay = relay
        self.client = client
        self.session = session
        self.connected: list[Backend] = []

    async def connect(self, hash_key: bytes | None = None) -> tuple[trio.abc.Stream, Backend]:
        tried: set[Backend] = set()
        error: BaseException | None = None
        balancer = self.relay.balancer
        for _ in range(CONNECT_TRIES):
            backend = balancer.pick(trio.current_time(), self.client, hash_key)
            if backend in tried:
                break                    # nothing else to try: every other one is held
            tried.add(backend)
            try:
                stream = await self._open(backend)
            except (OSError, trio.TooSlowError, ssl.SSLError, trio.BrokenResourceError) as e:
                error = e
                balancer.connect_failed(backend, trio.current_time())
                self.relay.connect_errors += 1
                self.log("relay_connect_failed", "warning", backend=f"{backend.address}:{backend.port}",
                         error=_why(e))
                continue
            balancer.opened(backend)
            self.connected.append(backend)
            if self.session is not None:
                self.session.backend = backend
            return stream, backend
        if error is None:
            raise NoBackend(balancer.why_none())
        raise error

    def pick_datagram(self, hash_key: bytes | None = None) -> Backend:
        return self.relay.balancer.pick(trio.current_time(), self.client, hash_key)

    def datagram_sent(self, backend: Backend) -> None:
        self.relay.balancer.datagram_sent(backend)

    def log(self, event: str, level: str = "info", **fields) -> None:
        self.relay.log(event, level, **fields)

    def release(self) -> None:
        """The session ended: its backends' open counts go down."""
        for backend in self.connected:
            self.relay.balancer.closed(backend)
        self.connected.clear()

    async def _open(self, backend: Backend) -> trio.abc.Stream:
        cfg = self.relay.config
        with trio.fail_after(cfg["connect_s"]):
            stream = await trio.open_tcp_stream(backend.address, backend.port)
            try:
                set_tcp_options(stream.socket, self.relay.tcp, ":" in backend.address)
                if self.relay.backend_ssl is not None:
                    sni = (cfg["backend_tls"] or {}).get("sni")
                    tls = trio.SSLStream(stream, self.relay.backend_ssl,
                                         server_hostname=sni or backend.address)
                    await tls.do_handshake()
                    return tls
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return stream


def _why(e: BaseException) -> str:
    if isinstance(e, trio.TooSlowError):
        return "connect timeout"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, socket.gaierror):
        return str(e)
    return f"{type(e).__name__}: {e}"
