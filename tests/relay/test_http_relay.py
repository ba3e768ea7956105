"""serve_http over real localhost TCP: a client (raw sockets, http.client),
the relay, and a backend run by the test that echoes what it received, so
that every action is checked on the wire."""

from __future__ import annotations

import hashlib
import http.client
import json
import datetime
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from functools import partial

import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshd.relay.http import HttpStats, serve_http
from meshd.relay.httpspec import HttpAction, HttpSpec
from meshd.relay.interface import Backend, NoBackend, SessionVars, Timeouts

LOCAL = "127.0.0.1"


# --- the backend ---------------------------------------------------------------

class EchoBackend:
    """An h11 server: answers each request with a JSON account of it.

    Paths: /chunked (a chunked answer), /close (Connection: close), /drop
    (answers, then closes without saying so), /big/N (N bytes), /status/N,
    /early-hints (a 103 first), /slow (never answers), /garbage (not HTTP).
    """

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn_id = self.connections
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                request, body = await self._read_request(stream, conn)
                if request is None:
                    return
                served += 1
                keep = await self._answer(stream, conn, request, body, conn_id, served)
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _read_request(self, stream, conn):
        request, body = None, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            else:
                return None, b""

    async def _answer(self, stream, conn, request, body, conn_id, served) -> bool:
        target = request.target.decode()
        account = {"method": request.method.decode(), "target": target,
                   "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                               for n, v in request.headers.raw_items()],
                   "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
                   "body": body[:200].decode("latin-1"), "conn": conn_id, "n": served}
        payload = json.dumps(account).encode()
        headers = [(b"Server", b"echo/1.0"), (b"X-Backend-Secret", b"s3cret"),
                   (b"Content-Type", b"application/json")]
        status, keep = 200, True
        if target == "/slow":
            await trio.sleep(30)
        if target == "/garbage":
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            return False
        if target.startswith("/status/"):
            status, payload = int(target.split("/")[2]), b""
        if target == "/fat-head":
            headers += [(b"X-Pad-%d" % i, b"p" * 1000) for i in range(20)]
        if target.startswith("/big/"):
            payload = b"x" * int(target.split("/")[2])
        if target == "/early-hints":
            await stream.send_all(conn.send(h11.InformationalResponse(
                status_code=103, headers=[(b"Link", b"</s.css>; rel=preload")])))
        if target == "/close":
            headers.append((b"Connection", b"close"))
            keep = False
        if target != "/chunked" and status not in (204, 304):
            headers.append((b"Content-Length", str(len(payload)).encode()))
        out = conn.send(h11.Response(status_code=status, headers=headers))
        if status not in (204, 304) and request.method != b"HEAD":
            if target == "/chunked":
                third = len(payload) // 3
                for piece in (payload[:third], payload[third:2 * third], payload[2 * third:]):
                    out += conn.send(h11.Data(data=piece))
            else:
                for i in range(0, len(payload), 65536):
                    out += conn.send(h11.Data(data=payload[i:i + 65536]))
        out += conn.send(h11.EndOfMessage())
        await stream.send_all(out)
        return keep and target != "/drop"


# --- the engine's side, as the test plays it ------------------------------------

@dataclass
class EchoUpstream:
    port: int
    no_backend: bool = False
    keys: list = field(default_factory=list)
    logs: list = field(default_factory=list)

    async def connect(self, hash_key: bytes | None = None):
        self.keys.append(hash_key)
        if self.no_backend:
            raise NoBackend("table web: no host up")
        with trio.fail_after(1):
            stream = await trio.open_tcp_stream(LOCAL, self.port)
        return stream, Backend("web1", LOCAL, self.port)

    def pick_datagram(self, hash_key: bytes | None = None) -> Backend:
        return Backend("web1", LOCAL, self.port)

    def log(self, event: str, level: str = "info", **fields) -> None:
        self.logs.append((event, level, fields))


@dataclass
class Relay:
    port: int
    upstream: EchoUpstream
    stats: HttpStats
    backend: EchoBackend
    clients: list = field(default_factory=list)

    async def connect(self) -> trio.SocketStream:
        """A client connection, closed when the test ends."""
        stream = await trio.open_tcp_stream(LOCAL, self.port)
        self.clients.append(stream)
        return stream


def closed_port() -> int:
    s = socket.socket()
    s.bind((LOCAL, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def relay_test(spec: HttpSpec = HttpSpec(), timeouts: Timeouts = Timeouts(idle_s=5.0),
               upstream_kw: dict | None = None, limit_s: float = 10.0,
               tls: ssl.SSLContext | None = None):
    """Run `body(relay)` (an async test) against a backend and a relay on localhost."""
    def wrap(body):
        def test():
            async def main():
                backend = EchoBackend()
                async with trio.open_nursery() as nursery:
                    (bl,) = await nursery.start(partial(trio.serve_tcp, backend.serve, 0, host=LOCAL))
                    backend.port = bl.socket.getsockname()[1]
                    kw = dict(upstream_kw or {})
                    port = closed_port() if kw.pop("port", None) == "closed" else backend.port
                    upstream = EchoUpstream(port, **kw)
                    stats = HttpStats()

                    async def session(stream: trio.SocketStream):
                        peer = stream.socket.getpeername()
                        here = stream.socket.getsockname()
                        vars_ = SessionVars(peer[0], peer[1], here[0], here[1], timeouts.idle_s)
                        client = stream if tls is None else trio.SSLStream(stream, tls, server_side=True)
                        await serve_http(client, spec, upstream, vars_, timeouts, stats)

                    (rl,) = await nursery.start(partial(trio.serve_tcp, session, 0, host=LOCAL))
                    relay = Relay(rl.socket.getsockname()[1], upstream, stats, backend)
                    try:
                        with trio.fail_after(limit_s):
                            await body(relay)
                    except BaseException:
                        print("relay logs:", upstream.logs, "stats:", stats.as_dict())
                        raise
                    finally:
                        for stream in relay.clients:
                            await trio.aclose_forcefully(stream)
                    assert not [e for e in upstream.logs if e[0] == "http_internal_error"], upstream.logs
                    nursery.cancel_scope.cancel()
            trio.run(main)
        test.__name__ = body.__name__
        return test
    return wrap


# --- a client -----------------------------------------------------------------

class RawClient:
    """A client on a plain socket stream; parses answers with an h11 CLIENT."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, relay: Relay) -> "RawClient":
        return cls(await relay.connect())

    async def request(self, method: str = "GET", target: str = "/", headers=(), body: bytes = b""):
        hdrs = [("Host", "www.example.com"), *headers]
        if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in hdrs):
            hdrs.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        return await self.response()

    async def response(self):
        response, body, informational = None, bytearray(), []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return Answer(response, bytes(body), informational)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def closed_by_peer(self) -> bool:
        with trio.fail_after(3):
            return await self.stream.receive_some(65536) == b""


@dataclass
class Answer:
    response: h11.Response
    body: bytes
    informational: list

    @property
    def status(self) -> int:
        return self.response.status_code

    def header(self, name: str) -> list[str]:
        return [v.decode() for n, v in self.response.headers if n == name.lower().encode()]

    def echo(self) -> dict:
        return json.loads(self.body)


def sent(echo: dict, name: str) -> list[str]:
    """Values of a header as the backend received it."""
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


def actions(*items) -> tuple[HttpAction, ...]:
    return tuple(HttpAction(*a) for a in items)


# --- the tests -----------------------------------------------------------------

ACTIONS_SPEC = HttpSpec(
    request=actions(("header", "change", "X-Relay", "$SERVER_ADDR:$SERVER_PORT"),
                    ("header", "append", "Via", "1.1 meshd"),
                    ("header", "remove", "X-Internal-*"),
                    ("cookie", "change", "theme", "dark"),
                    ("cookie", "remove", "tracking"),
                    ("query", "remove", "debug"),
                    ("query", "append", "from", "$REMOTE_ADDR"),
                    ("path", "append", "/v1*", ".json"),
                    ("url", "log", "*")),
    response=actions(("header", "remove", "Server"), ("header", "remove", "x-backend-*"),
                     ("header", "change", "X-Served-By", "relay")),
    forwarded_for=True, forwarded=True)


@relay_test(ACTIONS_SPEC)
async def test_request_and_response_actions_on_the_wire(relay):
    client = await RawClient.open(relay)
    answer = await client.request("GET", "/v1/items?debug=1&q=a%20b", headers=[
        ("X-Internal-Token", "t"), ("x-internal-user", "u"), ("Via", "1.0 cdn"),
        ("Cookie", "tracking=1; SID=x; theme=light"), ("X-Forwarded-For", "203.0.113.9")])
    assert answer.status == 200
    echo = answer.echo()
    assert echo["target"] == "/v1/items.json?q=a%20b&from=127.0.0.1"
    assert sent(echo, "X-Relay") == [f"127.0.0.1:{relay.port}"]
    assert sent(echo, "Via") == ["1.0 cdn, 1.1 meshd"]
    assert sent(echo, "X-Internal-Token") == [] and sent(echo, "X-Internal-User") == []
    assert sent(echo, "Cookie") == ["SID=x; theme=dark"]
    assert sent(echo, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert sent(echo, "Forwarded") == ["for=127.0.0.1;by=127.0.0.1;proto=http"]
    # response actions
    assert answer.header("Server") == [] and answer.header("X-Backend-Secret") == []
    assert answer.header("X-Served-By") == ["relay"]
    assert answer.header("Content-Type") == ["application/json"]
    # the log action is the last: it sees what the actions before it wrote
    assert ("http_log", "info", {"line": "request url *: www.example.com/v1/items.json?q=a%20b&from=127.0.0.1"}) \
        in relay.upstream.logs


@relay_test()
async def test_hop_by_hop_headers_are_not_forwarded(relay):
    client = await RawClient.open(relay)
    answer = await client.request(headers=[("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
                                           ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
                                           ("X-End", "2")])
    echo = answer.echo()
    for name in ("Connection", "X-Hop", "Keep-Alive", "TE"):
        assert sent(echo, name) == [], name
    assert sent(echo, "X-End") == ["2"]


@relay_test()
async def test_keep_alive_reuses_the_backend_connection(relay):
    def three_requests():
        conn = http.client.HTTPConnection(LOCAL, relay.port, timeout=5)
        seen = []
        for path in ("/a", "/b", "/c"):
            conn.request("GET", path)
            seen.append(json.loads(conn.getresponse().read()))
        conn.close()
        return seen
    seen = await trio.to_thread.run_sync(three_requests)
    assert [(e["target"], e["conn"], e["n"]) for e in seen] == [("/a", 1, 1), ("/b", 1, 2), ("/c", 1, 3)]
    assert relay.stats.backend_connects == 1 and relay.stats.backend_reuses == 2
    assert relay.stats.requests == 3 and relay.stats.responses == {"2xx": 3}


@relay_test(HttpSpec(request=actions(("cookie", "hash", "SID"))))
async def test_a_new_hash_value_gets_a_new_backend_connection(relay):
    client = await RawClient.open(relay)
    conns = []
    for sid in ("a", "a", "b", "b"):
        conns.append((await client.request(headers=[("Cookie", f"SID={sid}; x=1")])).echo()["conn"])
    assert relay.upstream.keys == [b"a", b"b"]
    assert conns == [1, 1, 2, 2]


@relay_test()
async def test_bodies_stream_both_ways(relay):
    client = await RawClient.open(relay)
    big = bytes(range(256)) * 4096             # 1 MiB
    echo = (await client.request("POST", "/up", body=big)).echo()
    assert (echo["body_len"], echo["body_sha256"]) == (len(big), hashlib.sha256(big).hexdigest())
    assert sent(echo, "Content-Length") == [str(len(big))]
    # chunked request body: h11 frames it chunked again towards the backend
    echo = (await client.request("POST", "/up", headers=[("Transfer-Encoding", "chunked")], body=big)).echo()
    assert echo["body_len"] == len(big) and sent(echo, "Transfer-Encoding") == ["chunked"]
    answer = await client.request("GET", "/big/3000000")
    assert len(answer.body) == 3000000 and answer.header("Content-Length") == ["3000000"]
    answer = await client.request("GET", "/chunked")
    assert answer.header("Transfer-Encoding") == ["chunked"] and answer.echo()["target"] == "/chunked"
    assert relay.stats.backend_connects == 1


@relay_test()
async def test_head_204_304_and_1xx_carry_no_body_and_keep_the_connection(relay):
    client = await RawClient.open(relay)
    answer = await client.request("HEAD", "/big/1000")
    assert answer.status == 200 and answer.body == b"" and answer.header("Content-Length") == ["1000"]
    for status in (204, 304):
        answer = await client.request("GET", f"/status/{status}")
        assert answer.status == status and answer.body == b""
    answer = await client.request("GET", "/early-hints")
    assert [i.status_code for i in answer.informational] == [103]
    assert answer.status == 200 and answer.echo()["n"] == 4
    assert relay.stats.backend_connects == 1


@relay_test(upstream_kw={"port": "closed"})
async def test_502_when_the_backend_refuses(relay):
    client = await RawClient.open(relay)
    answer = await client.request()
    assert answer.status == 502 and answer.header("Connection") == ["close"]
    assert relay.stats.backend_errors == 1
    assert await client.closed_by_peer()


@relay_test()
async def test_502_when_the_backend_answers_garbage(relay):
    client = await RawClient.open(relay)
    assert (await client.request("GET", "/garbage")).status == 502
    assert relay.stats.backend_errors == 1


@relay_test(upstream_kw={"no_backend": True})
async def test_503_when_no_backend_is_up(relay):
    client = await RawClient.open(relay)
    assert (await client.request()).status == 503
    assert relay.stats.no_backend == 1 and relay.stats.responses == {"5xx": 1}


@relay_test(timeouts=Timeouts(idle_s=0.2))
async def test_504_when_the_backend_stays_silent(relay):
    client = await RawClient.open(relay)
    started = trio.current_time()
    assert (await client.request("GET", "/slow")).status == 504
    assert 0.15 < trio.current_time() - started < 2
    assert relay.stats.timeouts == 1


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
], ids=["not-http", "bad-header-line", "headers-too-large", "too-many-headers", "body-too-large",
        "two-hosts"])
def test_bad_requests_are_answered_and_closed(raw, status):
    @relay_test(HttpSpec(max_headers=10, max_body_bytes=4096))
    async def check(relay):
        stream = await relay.connect()
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(3):
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 %d " % status), data[:80]
        assert relay.upstream.keys == []          # the backend was never asked
        assert relay.stats.bad_requests == 1
    check()


@relay_test(HttpSpec(max_body_bytes=100_000))
async def test_a_chunked_body_over_the_limit_is_cut_with_413(relay):
    client = await RawClient.open(relay)
    answer = await client.request("POST", "/", headers=[("Transfer-Encoding", "chunked")], body=b"z" * 200_000)
    assert answer.status == 413


@relay_test(HttpSpec(request=actions(("header", "expect", "Host", "www.example.com"))))
async def test_403_when_an_expect_refuses(relay):
    client = await RawClient.open(relay)
    assert (await client.request()).status == 200       # Host: www.example.com
    assert (await client.request()).status == 200
    stream = await relay.connect()
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    with trio.fail_after(3):
        data = await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 403 Forbidden")
    assert relay.stats.refused == 1 and len(relay.upstream.keys) == 1    # never asked for it


@relay_test(HttpSpec(request=actions(("path", "filter", "/admin*"))))
async def test_a_filter_closes_without_an_answer(relay):
    client = await RawClient.open(relay)
    assert (await client.request("GET", "/ok")).status == 200
    await client.stream.send_all(b"GET /%61dmin/x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await client.closed_by_peer()
    assert relay.stats.filtered == 1 and len(relay.upstream.keys) == 1


@relay_test(HttpSpec(response=actions(("header", "expect", "Content-Type", "text/*"))))
async def test_a_response_expect_refuses_with_502(relay):
    client = await RawClient.open(relay)
    assert (await client.request()).status == 502
    assert relay.stats.refused == 1


@relay_test()
async def test_expect_100_continue_is_answered_by_the_relay(relay):
    stream = await relay.connect()
    await stream.send_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    with trio.fail_after(2):
        first = await stream.receive_some(65536)
    assert first.startswith(b"HTTP/1.1 100 ")
    await stream.send_all(b"hello")
    client = RawClient(stream)
    client.conn.send(h11.Request(method="POST", target="/up", headers=[("Host", "a"), ("Content-Length", "5")]))
    client.conn.send(h11.Data(data=b"hello"))
    client.conn.send(h11.EndOfMessage())
    rest = first[first.index(b"\r\n\r\n") + 4:]
    if rest:
        client.conn.receive_data(rest)
    echo = (await client.response()).echo()
    assert echo["body"] == "hello" and sent(echo, "Expect") == []


@relay_test()
async def test_connection_close_from_the_client(relay):
    client = await RawClient.open(relay)
    answer = await client.request(headers=[("Connection", "close")])
    assert answer.status == 200 and answer.header("Connection") == ["close"]
    assert await client.closed_by_peer()


@relay_test(HttpSpec(keep_alive=False))
async def test_keep_alive_off_closes_after_one_request(relay):
    client = await RawClient.open(relay)
    answer = await client.request()
    assert answer.header("Connection") == ["close"]
    assert await client.closed_by_peer()


@relay_test()
async def test_backend_connection_close_then_a_new_connection(relay):
    client = await RawClient.open(relay)
    assert (await client.request("GET", "/close")).echo()["conn"] == 1
    answer = await client.request("GET", "/after")
    assert answer.echo()["conn"] == 2 and answer.header("Connection") == []
    assert relay.stats.backend_connects == 2


@relay_test()
async def test_a_kept_connection_the_backend_dropped_is_retried_once(relay):
    client = await RawClient.open(relay)
    assert (await client.request("GET", "/drop")).echo()["conn"] == 1
    await trio.sleep(0.05)      # the backend's close reaches the relay's socket
    answer = await client.request("GET", "/next")
    assert answer.status == 200 and answer.echo()["conn"] == 2
    assert relay.stats.backend_errors == 0


@relay_test()
async def test_http10_client_gets_a_host_towards_the_backend(relay):
    stream = await relay.connect()
    await stream.send_all(b"GET /old HTTP/1.0\r\n\r\n")
    data = b""
    with trio.fail_after(3):
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert sent(json.loads(body), "Host") == [f"{LOCAL}:{relay.backend.port}"]


@relay_test(timeouts=Timeouts(idle_s=0.2))
async def test_an_idle_client_is_closed(relay):
    client = await RawClient.open(relay)
    assert (await client.request()).status == 200
    started = time.monotonic()
    assert await client.closed_by_peer()
    assert 0.15 < time.monotonic() - started < 2
    assert relay.stats.timeouts == 1


@relay_test(timeouts=Timeouts(idle_s=5, session_s=0.3))
async def test_the_session_timeout_ends_a_busy_session(relay):
    client = await RawClient.open(relay)
    started = time.monotonic()
    with trio.fail_after(3):
        try:
            while True:
                await client.request()
                await trio.sleep(0.02)
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass
    assert 0.25 < time.monotonic() - started < 2
    assert relay.stats.timeouts == 1


def test_stats_as_dict_is_plain():
    stats = HttpStats()
    stats.count_response(204)
    d = stats.as_dict()
    assert d["responses_2xx"] == 1 and d["responses_5xx"] == 0
    assert all(type(v) is int for v in d.values()) and json.loads(json.dumps(d)) == d


def tls_contexts(directory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: the relay's context and a client's that trusts it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOCAL))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = directory / "relay.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(pem))
    client = ssl.create_default_context(cadata=cert.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def test_over_tls_the_forwarded_proto_is_https(tmp_path):
    server, client_ctx = tls_contexts(tmp_path)

    @relay_test(HttpSpec(forwarded=True), tls=server)
    async def check(relay):
        stream = trio.SSLStream(await relay.connect(), client_ctx, server_hostname=LOCAL)
        client = RawClient(stream)
        for _ in range(2):
            echo = (await client.request()).echo()
            assert sent(echo, "Forwarded") == ["for=127.0.0.1;by=127.0.0.1;proto=https"]
        assert relay.stats.backend_connects == 1
        await stream.aclose()
    check()


@relay_test()
async def test_an_upgrade_is_not_relayed_and_the_connection_goes_on(relay):
    client = await RawClient.open(relay)
    answer = await client.request(headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")])
    assert answer.status == 200 and sent(answer.echo(), "Upgrade") == []
    assert (await client.request("GET", "/again")).echo()["n"] == 2


@relay_test()
async def test_connect_is_refused(relay):
    stream = await relay.connect()
    await stream.send_all(b"CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\n\r\n")
    with trio.fail_after(3):
        data = await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 405 ")
    assert relay.upstream.keys == [] and relay.stats.bad_requests == 1


@relay_test()
async def test_a_response_head_over_the_limit_is_502(relay):
    client = await RawClient.open(relay)
    assert (await client.request("GET", "/fat-head")).status == 502
    assert relay.stats.backend_errors == 1


@relay_test(HttpSpec(request=actions(("header", "expect", "Host", "www.example.com"))))
async def test_a_refused_request_gets_no_100_continue(relay):
    stream = await relay.connect()
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 5\r\n"
                          b"Expect: 100-continue\r\n\r\n")
    with trio.fail_after(2):
        data = await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 403 ")


@relay_test()
async def test_garbage_on_a_kept_connection_is_not_sent_twice(relay):
    client = await RawClient.open(relay)
    assert (await client.request("GET", "/first")).status == 200
    assert (await client.request("GET", "/garbage")).status == 502
    assert relay.backend.connections == 1      # no retry: the backend did answer (badly)


@relay_test()
async def test_pipelined_requests_are_answered_in_order(relay):
    stream = await relay.connect()
    await stream.send_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    client = RawClient(stream)
    client.conn.send(h11.Request(method="GET", target="/one", headers=[("Host", "a")]))
    client.conn.send(h11.EndOfMessage())
    assert (await client.response()).echo()["target"] == "/one"
    client.conn.send(h11.Request(method="GET", target="/two", headers=[("Host", "a")]))
    client.conn.send(h11.EndOfMessage())
    assert (await client.response()).echo()["target"] == "/two"


@relay_test(HttpSpec(request=actions(("header", "remove", "*"), ("header", "change", "Host", "h")),
                     response=actions(("header", "remove", "*"))))
async def test_actions_cannot_unframe_a_message(relay):
    client = await RawClient.open(relay)
    for framing in ([], [("Transfer-Encoding", "chunked")]):
        answer = await client.request("POST", "/up", headers=framing, body=b"x" * 5000)
        assert answer.status == 200 and answer.echo()["body_len"] == 5000
        assert answer.header("Server") == [] and answer.header("Content-Length") != []


@relay_test(timeouts=Timeouts(idle_s=0.3))
async def test_a_head_trickled_byte_by_byte_gets_one_idle_timeout(relay):
    stream = await relay.connect()
    started = time.monotonic()
    with trio.fail_after(3):
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 100:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.05)
        except trio.BrokenResourceError:
            pass
        while await stream.receive_some(65536):
            pass
    assert time.monotonic() - started < 1.0
    assert relay.stats.timeouts == 1 and relay.upstream.keys == []
