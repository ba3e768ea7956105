"""The HTTP/1.1 relay handler: one client session, h11 on both sides.

The engine calls `serve_http` for each accepted client (the stream may be a
trio.SSLStream when the relay terminates TLS).  Per request: parse it (h11,
SERVER role), run the request actions (meshd/relay/httpactions.py), add
X-Forwarded-For / Forwarded, get a backend from the Upstream with the value
the actions fed to the hash, forward the request and stream its body (h11,
CLIENT role), run the response actions on the answer and stream it back.
Keep-alive on both sides: the client's next request goes to the same backend
connection when the hash value it feeds is the one the connection was
chosen with, otherwise to a new one.

What the client gets when the relay answers itself: 400 (431) for a request
h11 cannot parse or that is too large, 403 when an `expect` refuses, 413 over
max_body_bytes, 502 when the backend fails or a response `expect` refuses,
503 when no backend is up (NoBackend), 504 when the backend does not answer
within the idle timeout; a `filter` closes the connection without an answer.
Each of these closes the client's connection.

Why the request body is sent before the response is read (not both at
once): it keeps one task per session; a backend that answers before reading
a large body waits, at worst, for the idle timeout.  `Expect: 100-continue`
is answered by the relay itself (and not forwarded), so a client that waits
for it does not stall on that order.

Must not: pick a backend or open a socket itself (the Upstream does), raise
out of serve_http for anything a client or a backend sends (it counts it,
answers or closes, and returns), buffer a body, or read a clock but trio's.
"""

from __future__ import annotations

from http import HTTPStatus

import h11
import trio

from .httpactions import HttpRequest, HttpResponse, Verdict, apply_request, apply_response
from .httpheaders import (append_header, authority, content_length, end_to_end, forwarded_element,
                          framed_as, has_chunked_body, head_bytes)
from .httpspec import HttpSpec
from .interface import Backend, NoBackend, SessionVars, Timeouts, Upstream

RECEIVE_SIZE = 64 * 1024
# How long an error answer may take to leave before the connection closes.
ANSWER_GRACE_S = 1.0
LINGER_BYTES = 64 * 1024


class HttpStats:
    """The relay's HTTP counters, summed over its sessions (the engine owns one per relay)."""

    def __init__(self) -> None:
        self.requests = 0
        self.responses: dict[str, int] = {}      # by status class: "2xx", "5xx", ...
        self.refused = 0            # an expect action answered 403 (request) or 502 (response)
        self.filtered = 0           # a filter action closed the connection
        self.bad_requests = 0       # h11 could not parse it, over a limit, or CONNECT
        self.no_backend = 0         # 503
        self.backend_errors = 0     # 502: connect failed, or the backend broke the exchange
        self.timeouts = 0           # idle or session timeout
        self.backend_connects = 0
        self.backend_reuses = 0     # requests sent on a kept-alive backend connection

    def count_response(self, status: int) -> None:
        key = f"{status // 100}xx"
        self.responses[key] = self.responses.get(key, 0) + 1

    def as_dict(self) -> dict[str, int]:
        """Flat name -> integer (what the engine's counters carry); the five
        response classes always there, so the set of names does not change."""
        classes = {f"responses_{c}xx": self.responses.get(f"{c}xx", 0) for c in range(1, 6)}
        return {"requests": self.requests, **classes, "refused": self.refused, "filtered": self.filtered,
                "bad_requests": self.bad_requests, "no_backend": self.no_backend,
                "backend_errors": self.backend_errors, "timeouts": self.timeouts,
                "backend_connects": self.backend_connects, "backend_reuses": self.backend_reuses}


async def serve_http(client: trio.abc.Stream, spec: HttpSpec, upstream: Upstream,
                     session: SessionVars, timeouts: Timeouts, stats: HttpStats) -> None:
    """Relay HTTP requests from `client` until it closes, a timeout ends the
    session, or the relay answers with an error; closes the client's stream
    and the backend's before returning."""
    relay = _Session(client, spec, upstream, session, timeouts, stats)
    try:
        with trio.move_on_after(timeouts.session_s if timeouts.session_s > 0 else float("inf")) as scope:
            await relay.run()
        if scope.cancelled_caught:
            stats.timeouts += 1
            upstream.log("http_session_timeout", level="info", client=session.remote_addr)
    finally:
        await relay.close()


class _ClientGone(Exception):
    """The client closed or broke the connection, or was idle too long: nothing to answer."""


class _BackendFailed(Exception):
    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


class _Answered(Exception):
    """The relay answered the client itself; the session ends."""


class _Session:
    def __init__(self, client: trio.abc.Stream, spec: HttpSpec, upstream: Upstream,
                 session: SessionVars, timeouts: Timeouts, stats: HttpStats):
        self.client = client
        self.spec = spec
        self.upstream = upstream
        self.vars = session
        self.timeouts = timeouts
        self.stats = stats
        self.front = h11.Connection(h11.SERVER, max_incomplete_event_size=spec.max_header_bytes)
        self.back: h11.Connection | None = None
        self.backend_stream: trio.abc.Stream | None = None
        self.backend: Backend | None = None
        self.backend_key: bytes | None = None
        self.tls = isinstance(client, trio.SSLStream)
        self.answer_bytes = 0           # from the backend, for the request in flight
        self.idle = trio.CancelScope()
        self.waiting_on = "client"
        self.reading_head = False

    async def run(self) -> None:
        while True:
            # One scope per request whose deadline each read and write moves
            # on (a fail_after per I/O call costs a tenth of the relay's time).
            with trio.CancelScope() as self.idle:
                try:
                    request = await self._next_request()
                    if request is None:
                        return
                    await self._exchange(request)
                except (_ClientGone, _Answered):
                    return
                except h11.LocalProtocolError as e:
                    # A message h11 will not write: a bug of the relay's, not the
                    # peers'; this session ends, the relay goes on, the log says why.
                    self.upstream.log("http_internal_error", level="error", error=str(e),
                                      client=self.vars.remote_addr)
                    return
            if self.idle.cancelled_caught:
                await self._idle_timeout()
                return
            if self.front.our_state is not h11.DONE or self.front.their_state is not h11.DONE:
                return      # one side asked to close (Connection: close, HTTP/1.0, keep_alive off)
            self.front.start_next_cycle()

    def _touch(self, waiting_on: str) -> None:
        """Before a read or a write: the idle timeout starts again."""
        self.waiting_on = waiting_on
        self.idle.deadline = trio.current_time() + self.timeouts.idle_s

    async def _idle_timeout(self) -> None:
        self.stats.timeouts += 1
        if self.waiting_on == "backend" and self.front.our_state is h11.SEND_RESPONSE:
            await self._drop_backend()
            try:
                await self._answer(504, "backend did not answer within the idle timeout")
            except _Answered:
                pass

    async def close(self) -> None:
        await self._drop_backend()
        await trio.aclose_forcefully(self.client)

    # --- the client side --------------------------------------------------

    async def _receive_front(self) -> None:
        if not self.reading_head:
            self._touch("client")
        try:
            data = await self.client.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _ClientGone from None
        try:
            self.front.receive_data(data)
        except h11.RemoteProtocolError:
            raise _ClientGone from None     # data after a close: nobody is listening

    async def _front_event(self, pending: bytearray | None = None):
        """The client's next event, reading as needed; a malformed request is
        answered.  `pending` (bytes for the backend) goes out before a read
        from the client, so that one read costs one send at most."""
        while True:
            try:
                event = self.front.next_event()
            except h11.RemoteProtocolError as e:
                self.stats.bad_requests += 1
                await self._answer(e.error_status_hint, f"bad request: {e}")
                raise   # not reached: _answer ends the session
            if event is h11.NEED_DATA:
                if pending:
                    await self._send_back(bytes(pending))
                    pending.clear()
                await self._receive_front()
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                raise _ClientGone
            return event

    async def _next_request(self) -> h11.Request | None:
        # The whole head within one idle timeout, not one per byte: a client
        # that trickles a byte at a time holds no session for long.
        self._touch("client")
        self.reading_head = True
        try:
            event = await self._front_event()
        except _ClientGone:
            return None
        finally:
            self.reading_head = False
        if not isinstance(event, h11.Request):
            raise _ClientGone
        self.stats.requests += 1
        if event.method == b"CONNECT":
            # A reverse proxy is no tunnel to wherever the client names.
            self.stats.bad_requests += 1
            await self._answer(405, "CONNECT is not relayed")
        if sum(1 for name, _ in event.headers if name == b"host") > 1:
            # RFC 9112 3.2; and a filter on the first would not see the backend's pick.
            self.stats.bad_requests += 1
            await self._answer(400, "more than one Host header")
        # h11's limit only holds for a head that arrives in pieces; a whole one
        # that fits one read is parsed whatever its size.
        size = head_bytes(event.target, event.headers)
        if size > self.spec.max_header_bytes:
            self.stats.bad_requests += 1
            await self._answer(431, f"request head of {size} bytes over {self.spec.max_header_bytes}")
        if len(event.headers) > self.spec.max_headers:
            self.stats.bad_requests += 1
            await self._answer(431, f"more than {self.spec.max_headers} headers")
        length = content_length(event.headers)
        if self.spec.max_body_bytes and length is not None and length > self.spec.max_body_bytes:
            self.stats.bad_requests += 1
            await self._answer(413, f"body of {length} bytes over {self.spec.max_body_bytes}")
        return event

    async def _send_front(self, data: bytes) -> None:
        if not data:
            return
        self._touch("client")
        try:
            await self.client.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _ClientGone from None

    async def _answer(self, status: int, why: str) -> None:
        """Answer the client with an error of the relay's own and end the session."""
        self.idle.deadline = float("inf")     # the answer has a grace of its own
        self.stats.count_response(status)
        self.upstream.log("http_answer", level="info", status=status, reason=why,
                          client=self.vars.remote_addr)
        if self.front.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            phrase = _phrase(status)
            body = f"{status} {phrase}\n".encode()
            headers = [(b"Content-Type", b"text/plain"), (b"Content-Length", str(len(body)).encode()),
                       (b"Connection", b"close")]
            try:
                data = (self.front.send(h11.Response(status_code=status, headers=headers,
                                                     reason=phrase.encode()))
                        + self.front.send(h11.Data(data=body)) + self.front.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                data = b""
            with trio.move_on_after(ANSWER_GRACE_S):
                try:
                    await self.client.send_all(data)
                    await self._linger()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        raise _Answered

    async def _linger(self) -> None:
        """Half-close and read what the client still sends, so that closing
        with unread data (an RST) does not destroy the answer in flight."""
        send_eof = getattr(self.client, "send_eof", None)
        if send_eof is None:
            return
        await send_eof()
        read = 0
        while read < LINGER_BYTES:
            data = await self.client.receive_some(RECEIVE_SIZE)
            if not data:
                return
            read += len(data)

    # --- one exchange ------------------------------------------------------

    async def _exchange(self, event: h11.Request) -> None:
        request = HttpRequest(event.method, event.target, end_to_end(event.headers.raw_items()))
        outcome = apply_request(self.spec.request, request, self.vars)
        if self._logged_and_filtered(outcome):
            raise _ClientGone
        if outcome.verdict is Verdict.REFUSE:
            self.stats.refused += 1
            await self._answer(outcome.status or 403, f"refused by {outcome.reason}")
        if self.front.they_are_waiting_for_100_continue:
            await self._send_front(self.front.send(h11.InformationalResponse(status_code=100, headers=[])))
        headers = self._forwarding(framed_as(outcome.request.headers, event.headers))
        try:
            await self._forward(event, outcome.request, headers, outcome.hash_key)
        except _BackendFailed as e:
            await self._drop_backend()
            if e.status == 503:
                self.stats.no_backend += 1
            else:
                self.stats.backend_errors += 1
            await self._answer(e.status, str(e))

    def _logged_and_filtered(self, outcome) -> bool:
        """The actions' log lines written; whether a `filter` closes the connection."""
        for line in outcome.logs:
            self.upstream.log("http_log", line=line)
        if outcome.verdict is not Verdict.CLOSE:
            return False
        self.stats.filtered += 1
        self.upstream.log("http_filter", level="warning", action=outcome.reason, client=self.vars.remote_addr)
        return True

    def _forwarding(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if self.spec.forwarded_for:
            append_header(headers, b"X-Forwarded-For", self.vars.remote_addr.encode())
        if self.spec.forwarded:
            element = forwarded_element(self.vars.remote_addr, self.vars.server_addr, self.tls)
            append_header(headers, b"Forwarded", element.encode())
        return headers

    async def _forward(self, event: h11.Request, request: HttpRequest,
                       headers: list[tuple[bytes, bytes]], hash_key: bytes | None) -> None:
        reused = await self._backend_for(hash_key)
        if not any(n.lower() == b"host" for n, _ in headers) and self.backend is not None:
            headers.append((b"Host", authority(self.backend.address, self.backend.port).encode()))
        bodiless = content_length(event.headers) in (None, 0) and not has_chunked_body(event.headers)
        try:
            await self._send_request(request, headers)
            await self._relay_response()
        except _BackendFailed as e:
            # A kept-alive connection the backend closed meanwhile: once more on a
            # new one, if the backend sent nothing back and there is no body to replay.
            if not (e.status == 502 and reused and bodiless and self.answer_bytes == 0):
                raise
            await self._drop_backend()
            await self._backend_for(hash_key)
            await self._send_request(request, headers)
            await self._relay_response()
        back = self.back
        if back is not None and back.our_state is h11.DONE and back.their_state is h11.DONE:
            back.start_next_cycle()
        else:
            await self._drop_backend()

    # --- the backend side --------------------------------------------------

    async def _backend_for(self, hash_key: bytes | None) -> bool:
        """Make sure a backend connection chosen for `hash_key` is open; whether it was kept."""
        if self.back is not None and self.backend_key == hash_key:
            self.stats.backend_reuses += 1
            return True
        await self._drop_backend()
        self.idle.deadline = float("inf")     # the Upstream applies the connect timeout
        try:
            stream, backend = await self.upstream.connect(hash_key)
        except NoBackend as e:
            raise _BackendFailed(503, f"no backend: {e}") from None
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
            raise _BackendFailed(502, f"backend connect failed: {e!r}") from None
        self.stats.backend_connects += 1
        self.backend_stream, self.backend, self.backend_key = stream, backend, hash_key
        self.back = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.spec.max_header_bytes)
        return False

    async def _drop_backend(self) -> None:
        stream, self.backend_stream, self.back = self.backend_stream, None, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _send_back(self, data: bytes) -> None:
        assert self.backend_stream is not None
        self._touch("backend")
        try:
            await self.backend_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise _BackendFailed(502, f"backend send failed: {e!r}") from None

    async def _receive_back(self) -> None:
        assert self.backend_stream is not None and self.back is not None
        self._touch("backend")
        try:
            data = await self.backend_stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise _BackendFailed(502, f"backend receive failed: {e!r}") from None
        self.answer_bytes += len(data)
        self.back.receive_data(data)

    async def _send_request(self, request: HttpRequest, headers: list[tuple[bytes, bytes]]) -> None:
        """The request line and headers, then the body as it arrives, batching
        what h11 has parsed into one send per read."""
        back = self.back
        assert back is not None
        self.answer_bytes = 0
        try:
            out = back.send(h11.Request(method=request.method, target=request.target, headers=headers))
        except h11.LocalProtocolError as e:
            raise _BackendFailed(502, f"request cannot be forwarded: {e}") from None
        if self.front.their_state is h11.DONE:
            # A retry: the request (bodiless) has been read already.
            await self._send_back(out + back.send(h11.EndOfMessage()))
            return
        out = bytearray(out)
        body = 0
        while True:
            event = await self._front_event(out)
            if isinstance(event, h11.Data):
                body += len(event.data)
                if self.spec.max_body_bytes and body > self.spec.max_body_bytes:
                    self.stats.bad_requests += 1
                    await self._drop_backend()
                    await self._answer(413, f"body over {self.spec.max_body_bytes} bytes")
                out += back.send(event)
                if len(out) >= RECEIVE_SIZE:
                    await self._send_back(bytes(out))
                    out.clear()
            elif isinstance(event, h11.EndOfMessage):
                out += back.send(h11.EndOfMessage(headers=end_to_end(event.headers.raw_items())))
                await self._send_back(bytes(out))
                return

    async def _relay_response(self) -> None:
        back = self.back
        assert back is not None
        out = b""
        started = False
        while True:
            try:
                event = back.next_event()
            except h11.RemoteProtocolError as e:
                if not started:
                    raise _BackendFailed(502, f"bad response from the backend: {e}") from None
                raise _ClientGone from None     # half an answer went out: only closing is left
            if event is h11.NEED_DATA:
                if out:
                    await self._send_front(out)
                    out = b""
                try:
                    await self._receive_back()
                except _BackendFailed:
                    if started:
                        raise _ClientGone from None
                    raise
                continue
            if isinstance(event, h11.ConnectionClosed):
                if not started:
                    raise _BackendFailed(502, "backend closed without an answer")
                raise _ClientGone
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise _BackendFailed(502, "backend switched protocols (upgrades are not relayed)")
                out += self.front.send(h11.InformationalResponse(
                    status_code=event.status_code, headers=end_to_end(event.headers.raw_items()),
                    reason=event.reason))
            elif isinstance(event, h11.Response):
                out += await self._response_head(event)
                started = True
            elif isinstance(event, h11.Data):
                out += self.front.send(event)
            elif isinstance(event, h11.EndOfMessage):
                out += self.front.send(h11.EndOfMessage(headers=end_to_end(event.headers.raw_items())))
                await self._send_front(out)
                return

    async def _response_head(self, event: h11.Response) -> bytes:
        if head_bytes(event.reason, event.headers) > self.spec.max_header_bytes:
            raise _BackendFailed(502, f"response head over {self.spec.max_header_bytes} bytes")
        response = HttpResponse(event.status_code, end_to_end(event.headers.raw_items()))
        outcome = apply_response(self.spec.response, response, self.vars)
        if self._logged_and_filtered(outcome):
            await self._drop_backend()
            raise _ClientGone
        if outcome.verdict is Verdict.REFUSE:
            self.stats.refused += 1
            await self._drop_backend()
            await self._answer(outcome.status or 502, f"response refused by {outcome.reason}")
        headers = framed_as(outcome.response.headers, event.headers)
        if not self.spec.keep_alive:
            headers.append((b"Connection", b"close"))
        self.stats.count_response(event.status_code)
        return self.front.send(h11.Response(status_code=event.status_code, headers=headers,
                                            reason=event.reason))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
