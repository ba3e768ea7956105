"""No bytes from a client or a backend make serve_http raise: it answers,
closes and returns.  Memory streams (trio.testing), no sockets."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.relay.http import HttpStats, serve_http
from meshd.relay.httpspec import HttpAction, HttpSpec
from meshd.relay.interface import Backend, SessionVars, Timeouts

SESSION = SessionVars("192.0.2.7", 40000, "198.51.100.1", 80, 1.0)
SPEC = HttpSpec(request=(HttpAction("cookie", "hash", "SID"), HttpAction("path", "filter", "/x*"),
                         HttpAction("query", "change", "a", "b"), HttpAction("header", "log", "*")),
                response=(HttpAction("header", "remove", "Server"),),
                forwarded_for=True, forwarded=True, max_body_bytes=1000)
# Every header gone but the framing, both ways; no keep-alive.
BARE = HttpSpec(request=(HttpAction("header", "remove", "*"),),
                response=(HttpAction("header", "remove", "*"),), keep_alive=False)

REQUEST_PIECES = st.sampled_from([
    b"GET / HTTP/1.1\r\n", b"POST /a?a=1 HTTP/1.1\r\n", b"HEAD /x HTTP/1.0\r\n", b"GET /%zz HTTP/1.1\r\n",
    b"Host: a\r\n", b"Cookie: SID=1; x\r\n", b"Content-Length: 3\r\n", b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n", b"Connection: close\r\n",
    b"Connection: upgrade\r\nUpgrade: x\r\n", b"\r\n", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"zz\r\n",
    b"\x00\xff", b" ", b"CONNECT a:1 HTTP/1.1\r\n",
])
RESPONSE_PIECES = st.sampled_from([
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching\r\n",
    b"HTTP/1.0 204 No Content\r\n", b"HTTP/1.1 304 Not Modified\r\n", b"HTTP/1.1 999 X\r\n",
    b"Content-Length: 3\r\n", b"Content-Length: 99\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n", b"Server: s\r\n", b"\r\n", b"abc", b"3\r\nabc\r\n0\r\n\r\n",
    b"garbage", b"\x00",
])


class MemoryUpstream:
    def __init__(self, answer: bytes):
        self.answer = answer

    async def connect(self, hash_key=None):
        relay_end, backend_end = trio.testing.memory_stream_pair()

        async def backend():
            # Read what comes (the request), answer the scripted bytes, close.
            with trio.move_on_after(0.05):
                await backend_end.receive_some(65536)
            try:
                await backend_end.send_all(self.answer)
                await backend_end.aclose()
            except trio.BrokenResourceError:
                pass
        self.nursery.start_soon(backend)
        return relay_end, Backend("b", "10.0.0.1", 80)

    def pick_datagram(self, hash_key=None):
        return Backend("b", "10.0.0.1", 80)

    def log(self, event, level="info", **fields):
        # The handler's last resort hides its own bugs from the caller: not from this test.
        assert event != "http_internal_error", fields


def relay_once(request: bytes, answer: bytes, spec: HttpSpec = SPEC) -> HttpStats:
    stats = HttpStats()

    async def main():
        upstream = MemoryUpstream(answer)
        client_end, relay_end = trio.testing.memory_stream_pair()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                upstream.nursery = nursery

                async def client():
                    try:
                        await client_end.send_all(request)
                        with trio.move_on_after(0.3):
                            while await client_end.receive_some(65536):
                                pass
                    except trio.BrokenResourceError:
                        pass
                    await client_end.aclose()
                nursery.start_soon(client)
                await serve_http(relay_end, spec, upstream, SESSION, Timeouts(idle_s=0.2, session_s=1), stats)
    # Virtual time: the timeouts that end most of these sessions pass at once.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return stats


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REQUEST_PIECES, min_size=1, max_size=8), st.lists(RESPONSE_PIECES, max_size=8),
       st.sampled_from([SPEC, BARE]))
def test_no_client_or_backend_bytes_make_serve_http_raise(request_pieces, response_pieces, spec):
    stats = relay_once(b"".join(request_pieces), b"".join(response_pieces), spec)
    assert stats.requests >= 0


def test_a_good_exchange_over_memory_streams():
    # The fuzz harness itself relays a well-formed exchange (it would pass vacuously otherwise).
    stats = relay_once(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert stats.responses == {"2xx": 1} and stats.backend_connects == 1
