"""The TCP relay: bytes both ways between a client and a backend, within the
relay's idle and session timeouts; and the stream wrapper that counts a
client's bytes for `show sessions`.

`serve_tcp` has the shape of every protocol handler (serve_http,
serve_dns_tcp): the engine calls it per session with the client's stream
(a trio.SSLStream when the relay terminates TLS).

Idle timeout: no byte either way for `idle_s` ends the session (one
deadline, pushed on by each read that returned bytes, in either
direction).  Session timeout: the whole session, when not 0.  A half-close
is passed on (the client's EOF becomes the backend's, and back) where the
stream can half-close; a TLS stream cannot, so its EOF ends that direction.

Must not: pick a backend (the Upstream does) or parse what it carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from .interface import NoBackend, SessionVars, Timeouts, Upstream

CHUNK = 64 << 10


@dataclass
class TcpStats:
    sessions: int = 0
    no_backend: int = 0
    connect_failed: int = 0
    idle_timeouts: int = 0
    session_timeouts: int = 0
    bytes_in: int = 0            # client -> backend
    bytes_out: int = 0           # backend -> client

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class CountingStream(trio.abc.HalfCloseableStream):
    """A client's stream with its bytes counted (`received`, `sent`)."""

    def __init__(self, inner: trio.abc.Stream):
        self.inner = inner
        self.received = 0
        self.sent = 0

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def socket(self):
        return getattr(self.inner, "socket", None)


async def serve_tcp(client: trio.abc.Stream, upstream: Upstream, session: SessionVars,
                    timeouts: Timeouts, stats: TcpStats) -> None:
    stats.sessions += 1
    try:
        backend_stream, _backend = await upstream.connect()
    except NoBackend as e:
        stats.no_backend += 1
        upstream.log("relay_no_backend", "warning", client=session.remote_addr, why=str(e))
        return
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        stats.connect_failed += 1
        return
    async with backend_stream:
        outcome = await splice(client, backend_stream, timeouts, stats)
    if outcome == "idle":
        stats.idle_timeouts += 1
    elif outcome == "session":
        stats.session_timeouts += 1


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, timeouts: Timeouts,
                 stats: TcpStats | None = None) -> str:
    """Copy a -> b and b -> a until both ends are done; "done", "idle",
    "session" (a timeout ended it) or "broken" (a reset, a TLS error)."""
    outcome = "done"
    idle = trio.CancelScope(deadline=trio.current_time() + timeouts.idle_s)

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, inbound: bool) -> None:
        nonlocal outcome
        try:
            while True:
                data = await src.receive_some(CHUNK)
                if not data:
                    break
                idle.deadline = trio.current_time() + timeouts.idle_s
                await dst.send_all(data)
                if stats is not None:
                    if inbound:
                        stats.bytes_in += len(data)
                    else:
                        stats.bytes_out += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            outcome = "broken"
            nursery.cancel_scope.cancel()
            return
        if isinstance(dst, trio.abc.HalfCloseableStream):
            try:
                await dst.send_eof()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        nursery.cancel_scope.cancel()         # cannot half-close: this ends the session

    session = trio.CancelScope()
    if timeouts.session_s > 0:
        session.deadline = trio.current_time() + timeouts.session_s
    with session:
        with idle:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, a, b, True)
                nursery.start_soon(pump, b, a, False)
    if idle.cancelled_caught:
        return "idle"
    if session.cancelled_caught:
        return "session"
    return outcome
