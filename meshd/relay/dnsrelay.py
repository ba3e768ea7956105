"""The DNS relay's trio handlers: UDP for a listener's lifetime, TCP per client.

The relay engine calls them (see meshd/relay/interface.py); the id map,
the parsing and the counters are meshd/relay/dns.py's, this module carries
bytes.

UDP (`serve_dns_udp`): one socket per address family towards all backends,
unconnected, opened at the first query to a backend of that family; each
query goes to `upstream.pick_datagram()`, with the query's name as the hash
key (balance "query": one name stays on one backend's cache) or the
client's address (balance "client").  Answers are read from those sockets,
matched in the listener's one id map, and sent to the client from the
listener's socket, so their source is the address the client asked (the
virtual address).  A query whose backend stays silent past the query
timeout is sent once more to another backend (retry = true), or answered
SERVFAIL with the client's id and question, as one with no backend up is.

TCP (`serve_dns_tcp`): RFC 1035 2-byte length framing, several queries per
connection, pipelined (RFC 7766): the ids are mapped per connection, so
answers coming back out of order find their client's id.  The backend
connection is opened at the first query (its name is the hash key, as for
UDP), kept for the client's connection, and opened again at the next query
if the backend closes it (its queries in flight get SERVFAIL).  At most
`tcp_pipeline` queries are in flight: the client is not read meanwhile,
TCP's flow control is the back-pressure.  After `tcp_max_queries` queries,
or the client's end of stream, the answers in flight are waited for (each
bounded by the query timeout) and the connection closed.

Must not: parse more of a message than dns.py does, raise on what a client
or a backend sends (it is dropped and counted), or pick a backend itself.
"""

from __future__ import annotations

import socket as stdsocket
import struct
from collections.abc import Callable, Hashable

import trio

from ..config.relay_dns import DnsSpec
from .dns import DnsIdMap, DnsStats, Expired, Query, servfail
from .interface import Backend, NoBackend, SessionVars, Timeouts, Upstream

__all__ = ["DnsStats", "serve_dns_tcp", "serve_dns_udp"]

RECV_SIZE = 65535                       # the largest datagram
RECV_BURST = 64                         # datagrams read per wake-up (then a checkpoint)
BACKEND_RCVBUF = 1 << 20                # a burst of answers is not lost to a small buffer
RETRY_PICKS = 3                         # tries at a backend other than the silent one
STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Expiry:
    """Runs `on_expired` for each mapping of `idmap` whose time is up."""

    def __init__(self, idmap: DnsIdMap, on_expired: Callable):
        self.idmap = idmap
        self.on_expired = on_expired
        self._wake = trio.Event()

    def poke(self) -> None:
        """A mapping was added (its deadline is after all others: same timeout)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            deadline = self.idmap.next_deadline()
            if deadline is None:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            await trio.sleep_until(deadline)
            for expired in self.idmap.expire(trio.current_time()):
                await self.on_expired(expired)


# -- UDP ---------------------------------------------------------------------


async def serve_dns_udp(sock: trio.socket.SocketType, spec: DnsSpec, upstream: Upstream,
                        timeouts: Timeouts, stats: DnsStats) -> None:
    """Relay the queries that reach `sock` (bound by the engine) until cancelled.

    `timeouts` is not used: a datagram exchange has no connection to time
    out; the query timeout of `spec` bounds each query.
    """
    del timeouts
    await _UdpRelay(sock, spec, upstream, stats).run()


class _Datagrams:
    """A UDP socket read in bursts and written without a checkpoint while
    the kernel takes the datagram (the hot path: one await per datagram
    costs more than the datagram)."""

    def __init__(self, sock: stdsocket.socket):
        sock.setblocking(False)
        self.sock = sock
        self.buffer = bytearray(RECV_SIZE)      # one buffer, not 64 KiB per datagram
        self.view = memoryview(self.buffer)
        self.send_lock = trio.StrictFIFOLock()  # one waiter for room at a time

    async def bursts(self, on_datagram: Callable, errors: Callable[[], None]) -> None:
        """Each datagram to `on_datagram(data, address)`, RECV_BURST per wake-up."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            for _ in range(RECV_BURST):
                try:
                    n, address = self.sock.recvfrom_into(self.buffer)
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionError:
                    # An ICMP error queued by an earlier send (ECONNREFUSED):
                    # it belongs to no query we can name; its query times out.
                    errors()
                    continue
                await on_datagram(bytes(self.view[:n]), address)

    async def sendto(self, data: bytes, address) -> None:
        """Raises OSError (a full buffer is waited for, not an error)."""
        try:
            self.sock.sendto(data, address)
            return
        except BlockingIOError:
            pass
        async with self.send_lock:
            while True:
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    self.sock.sendto(data, address)
                    return
                except BlockingIOError:
                    continue


class _UdpRelay:
    def __init__(self, sock: trio.socket.SocketType, spec: DnsSpec, upstream: Upstream,
                 stats: DnsStats):
        # A duplicate of the engine's socket (the same socket in the kernel),
        # read without trio's checkpoint per datagram; closed at the end.
        self.listener = _Datagrams(stdsocket.fromfd(sock.fileno(), sock.family, stdsocket.SOCK_DGRAM))
        self.spec = spec
        self.upstream = upstream
        self.stats = stats
        self.idmap = DnsIdMap(spec.max_in_flight, spec.query_timeout_s, stats)
        self.expiry = _Expiry(self.idmap, self._on_expired)
        self.backend_socks: dict[int, _Datagrams] = {}      # by address family
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self.expiry.run)
                await self.listener.bursts(self._on_query, self._count_error)
        finally:
            for d in (self.listener, *self.backend_socks.values()):
                d.sock.close()

    def _count_error(self) -> None:
        self.stats.send_errors += 1

    async def _on_query(self, data: bytes, client: Hashable) -> None:
        query = self.idmap.take_query(data)
        if query is None:
            return
        key = query.hash_key() if self.spec.balance == "query" else client[0].encode()
        try:
            backend = self.upstream.pick_datagram(key)
        except NoBackend:
            await self._servfail(client, query, "no-backend")
            return
        await self._forward(query, client, backend, attempt=1)

    async def _forward(self, query: Query, client: Hashable, backend: Backend, attempt: int) -> bool:
        address = (backend.address, backend.port)
        out = self.idmap.forward(query, client, address, trio.current_time(), attempt)
        if out is None:
            return False
        self.expiry.poke()
        try:
            await self._backend_socket(backend).sendto(out, address)
        except OSError:
            # The mapping stays: its timeout answers the client (or retries).
            self.stats.send_errors += 1
        else:
            self.upstream.datagram_sent(backend)
        return True

    def _backend_socket(self, backend: Backend) -> _Datagrams:
        family = stdsocket.AF_INET6 if ":" in backend.address else stdsocket.AF_INET
        datagrams = self.backend_socks.get(family)
        if datagrams is None:
            sock = stdsocket.socket(family, stdsocket.SOCK_DGRAM)
            try:
                sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, BACKEND_RCVBUF)
            except OSError:
                pass    # the kernel's rmem_max caps it; the default is still correct
            datagrams = self.backend_socks[family] = _Datagrams(sock)
            self.nursery.start_soon(datagrams.bursts, self._on_answer, self._count_error)
        return datagrams

    async def _on_answer(self, data: bytes, source: tuple) -> None:
        reply = self.idmap.take_answer(data, (source[0], source[1]), trio.current_time())
        if reply is not None:
            await self._to_client(reply.client, reply.data)

    async def _on_expired(self, expired: Expired) -> None:
        if self.spec.retry and expired.attempt == 1:
            backend = self._pick_other(expired)
            if backend is not None:
                self.stats.retries += 1
                if await self._forward(expired.query, expired.client, backend, attempt=2):
                    return
        await self._servfail(expired.client, expired.query, "timeout")

    def _pick_other(self, expired: Expired) -> Backend | None:
        """Another backend than the silent one, if the mode gives one: a hash
        mode gives the same backend for the same key, so the key is varied."""
        base = (expired.query.hash_key() if self.spec.balance == "query"
                else str(expired.client[0]).encode())
        backend = None
        for n in range(RETRY_PICKS):
            try:
                backend = self.upstream.pick_datagram(base + b"#retry%d" % n)
            except NoBackend:
                return None
            if (backend.address, backend.port) != expired.backend:
                return backend
        return backend      # only the silent one is up: one more try at it

    async def _servfail(self, client: Hashable, query: Query, reason: str) -> None:
        self.stats.count(self.stats.servfail, reason)
        await self._to_client(client, servfail(query))

    async def _to_client(self, client: Hashable, data: bytes) -> None:
        try:
            await self.listener.sendto(data, client)
        except OSError:
            self.stats.send_errors += 1


# -- TCP ---------------------------------------------------------------------


class _FrameTooLarge(Exception):
    pass


class _FrameReader:
    """RFC 1035 4.2.2 messages from a stream: a 2-byte length, then the
    message; handed on in batches (all that one read completed), so that a
    pipelined burst costs one write the other way, not one per message."""

    def __init__(self, stream: trio.abc.Stream, max_len: int):
        self.stream = stream
        self.max_len = max_len
        self.buffer = bytearray()

    async def receive_batch(self) -> list[bytes] | None:
        """The messages complete in the buffer (at least one, reading for
        it); None at the end of the stream (a partial message at the end is
        dropped with it); raises _FrameTooLarge when the next one is."""
        while True:
            batch = self._complete()
            if batch:
                return batch
            chunk = await self.stream.receive_some(RECV_SIZE)
            if not chunk:
                return None
            self.buffer += chunk

    def _complete(self) -> list[bytes]:
        buf, offset, out = self.buffer, 0, []
        while len(buf) - offset >= 2:
            length = struct.unpack_from("!H", buf, offset)[0]
            if length > self.max_len:
                if out:
                    break           # these first; the error at the next call
                raise _FrameTooLarge(length)
            if len(buf) - offset < 2 + length:
                break
            out.append(bytes(buf[offset + 2:offset + 2 + length]))
            offset += 2 + length
        del buf[:offset]
        return out


def _framed(messages: list[bytes]) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


async def serve_dns_tcp(client: trio.abc.Stream, spec: DnsSpec, upstream: Upstream,
                        session: SessionVars, timeouts: Timeouts, stats: DnsStats) -> None:
    """Relay one client's TCP connection until it ends, the limits of `spec`
    are reached, or `timeouts` (idle, session) end it; closes `client`."""
    stats.tcp_connections += 1
    relay = _TcpRelay(client, spec, upstream, session, timeouts, stats)
    try:
        with trio.move_on_after(timeouts.session_s or float("inf")):
            await relay.run()
    finally:
        await relay.close()


class _TcpRelay:
    CLIENT = "client"       # the one client of the connection's id map

    def __init__(self, client: trio.abc.Stream, spec: DnsSpec, upstream: Upstream,
                 session: SessionVars, timeouts: Timeouts, stats: DnsStats):
        self.client = client
        self.spec = spec
        self.upstream = upstream
        self.session = session
        self.timeouts = timeouts
        self.stats = stats
        self.idmap = DnsIdMap(spec.tcp_pipeline, spec.query_timeout_s, stats)
        self.expiry = _Expiry(self.idmap, self._on_expired)
        self.client_lock = trio.StrictFIFOLock()
        self.backend: trio.abc.Stream | None = None
        self.backend_key: tuple[Backend, int] | None = None   # a new key per connection
        self.connections = 0
        # Queries forwarded and not written yet, and the stream they are for
        # (only _read_client writes to the backend).
        self.to_backend: list[bytes] = []
        self.to_backend_stream: trio.abc.Stream | None = None
        # Queries taken and not yet answered (an answer or a SERVFAIL written):
        # what the pipeline bound counts, and what the end waits for.
        self.unanswered = 0
        self.room = trio.Event()         # set when one is answered
        self.last_activity = trio.current_time()
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.expiry.run)
            nursery.start_soon(self._idle_watch)
            await self._read_client()
            nursery.cancel_scope.cancel()

    async def close(self) -> None:
        if self.backend is not None:
            await trio.aclose_forcefully(self.backend)
        await trio.aclose_forcefully(self.client)

    async def _read_client(self) -> None:
        reader = _FrameReader(self.client, self.spec.tcp_max_message)
        taken = 0
        while taken < self.spec.tcp_max_queries:
            try:
                batch = await reader.receive_batch()
            except _FrameTooLarge:
                # The rest of the stream cannot be framed without reading it.
                self.stats.count(self.stats.dropped_queries, "too-large")
                break
            except STREAM_GONE:
                return
            if batch is None:
                break
            self.last_activity = trio.current_time()
            for data in batch:
                if taken >= self.spec.tcp_max_queries:
                    break           # what came after the last one is not read
                query = self.idmap.take_query(data, max_len=self.spec.tcp_max_message)
                if query is None:
                    continue
                taken += 1
                self.unanswered += 1
                await self._forward(query)
                if self.unanswered >= self.spec.tcp_pipeline:
                    await self._flush_to_backend()
                    while self.unanswered >= self.spec.tcp_pipeline:
                        await self._one_answered()
            await self._flush_to_backend()
        while self.unanswered:
            await self._one_answered()

    async def _one_answered(self) -> None:
        self.room = trio.Event()
        await self.room.wait()

    def _answered(self) -> None:
        self.unanswered -= 1
        self.room.set()

    async def _forward(self, query: Query) -> None:
        if self.backend is None and not await self._connect(query):
            return
        out = self.idmap.forward(query, self.CLIENT, self.backend_key, trio.current_time())
        if out is None:
            # Not reached: the map holds tcp_pipeline, no more are unanswered.
            await self._servfail(query, "full")
            return
        self.expiry.poke()
        if self.to_backend_stream is not self.backend:
            # Those were for a stream that is gone: its reader answers them SERVFAIL.
            self.to_backend, self.to_backend_stream = [], self.backend
        self.to_backend.append(out)

    async def _flush_to_backend(self) -> None:
        stream, messages = self.to_backend_stream, self.to_backend
        if not messages:
            return
        self.to_backend = []
        try:
            await stream.send_all(_framed(messages))
        except STREAM_GONE:
            # Its reader sees the stream closed and answers what was in flight;
            # the next query connects again.
            if self.backend is stream:
                self.backend = None
            await trio.aclose_forcefully(stream)

    async def _connect(self, query: Query) -> bool:
        key = query.hash_key() if self.spec.balance == "query" else self.session.remote_addr.encode()
        attempts = 2 if self.spec.retry else 1
        for attempt in range(attempts):
            try:
                stream, backend = await self.upstream.connect(key if attempt == 0 else key + b"#retry")
            except NoBackend:
                await self._servfail(query, "no-backend")
                return False
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
                self.upstream.log("dns backend connect failed", level="warning", error=str(e))
                continue
            self.connections += 1
            self.backend, self.backend_key = stream, (backend, self.connections)
            self.nursery.start_soon(self._read_backend, stream, self.backend_key)
            return True
        await self._servfail(query, "connect")
        return False

    async def _read_backend(self, stream: trio.abc.Stream, key: tuple[Backend, int]) -> None:
        reader = _FrameReader(stream, 65535)
        try:
            while True:
                batch = await reader.receive_batch()
                if batch is None:
                    break
                now = self.last_activity = trio.current_time()
                replies = [r for r in (self.idmap.take_answer(data, key, now) for data in batch)
                           if r is not None]
                if replies:
                    await self._to_client([r.data for r in replies])
                    for _ in replies:
                        self._answered()
        except STREAM_GONE:
            pass
        if self.backend is stream:
            self.backend = None
            await trio.aclose_forcefully(stream)
        lost = self.idmap.forget_backend(key)
        if lost:
            self.upstream.log("dns backend closed with queries in flight", level="warning",
                              backend=key[0].host, queries=len(lost))
        for expired in lost:
            await self._servfail(expired.query, "backend-lost")

    async def _on_expired(self, expired: Expired) -> None:
        await self._servfail(expired.query, "timeout")

    async def _servfail(self, query: Query, reason: str) -> None:
        self.stats.count(self.stats.servfail, reason)
        await self._to_client([servfail(query)])
        self._answered()

    async def _to_client(self, messages: list[bytes]) -> None:
        try:
            async with self.client_lock:
                await self.client.send_all(_framed(messages))
        except STREAM_GONE:
            self.nursery.cancel_scope.cancel()     # the client is gone: nothing to answer

    async def _idle_watch(self) -> None:
        while True:
            deadline = self.last_activity + self.timeouts.idle_s
            if trio.current_time() >= deadline:
                self.nursery.cancel_scope.cancel()
                return
            await trio.sleep_until(deadline)
