"""The TCP relay's splice and its timeouts, on trio memory streams and a mock clock;
the engine's messages checked against their own schemas."""

from __future__ import annotations

import tomllib

import trio
import trio.testing

from meshd.config import parse_config
from meshd.privsep.imsg import Decoder
from meshd.relay.interface import Backend, NoBackend, SessionVars, Timeouts
from meshd.relay.proto import FROM_RELAY, TO_RELAY, live_fields, relay_fields
from meshd.relay.tcp import CountingStream, TcpStats, serve_tcp, splice
from relayconf import NODE_TOML


def run(fn, *args):
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


async def pair():
    """(client end, relay's client side, relay's backend side, backend end)."""
    client, relay_client = trio.testing.memory_stream_pair()
    relay_backend, backend = trio.testing.memory_stream_pair()
    return client, relay_client, relay_backend, backend


def test_bytes_go_both_ways_and_a_half_close_is_passed_on():
    async def main():
        client, rc, rb, backend = await pair()
        stats = TcpStats()
        result = {}
        async with trio.open_nursery() as nursery:
            async def relay():
                result["outcome"] = await splice(rc, rb, Timeouts(idle_s=60), stats)
            nursery.start_soon(relay)
            await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
            await client.send_eof()                        # the client is done sending
            assert await backend.receive_some() == b"GET / HTTP/1.0\r\n\r\n"
            assert await backend.receive_some() == b""     # the EOF reached the backend
            await backend.send_all(b"HTTP/1.0 200 OK\r\n\r\nhello")
            await backend.send_eof()
            got = b""
            while chunk := await client.receive_some():
                got += chunk
            assert got == b"HTTP/1.0 200 OK\r\n\r\nhello"
        assert result["outcome"] == "done"
        assert (stats.bytes_in, stats.bytes_out) == (18, 24)
    run(main)


def test_idle_timeout_is_pushed_on_by_traffic_either_way():
    async def main():
        client, rc, rb, backend = await pair()
        result = {}
        async with trio.open_nursery() as nursery:
            async def relay():
                t0 = trio.current_time()
                result["outcome"] = await splice(rc, rb, Timeouts(idle_s=10))
                result["lasted"] = trio.current_time() - t0
            nursery.start_soon(relay)
            for _ in range(3):                 # a byte every 8 s keeps it open
                await trio.sleep(8)
                await backend.send_all(b"x")
                assert await client.receive_some() == b"x"
        assert result["outcome"] == "idle"
        assert 34 <= result["lasted"] <= 34.5      # 3 x 8 s, then 10 s of silence
    run(main)


def test_session_timeout_ends_a_busy_session():
    async def main():
        client, rc, rb, backend = await pair()
        result = {}
        async with trio.open_nursery() as nursery:
            async def relay():
                result["outcome"] = await splice(rc, rb, Timeouts(idle_s=10, session_s=20))
                nursery.cancel_scope.cancel()
            nursery.start_soon(relay)
            while True:
                await trio.sleep(1)
                await client.send_all(b"y")
                await backend.receive_some()
        assert result["outcome"] == "session"
    run(main)


class OneBackend:
    """An Upstream over a memory stream (or none)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.logged = []

    async def connect(self, hash_key=None):
        if self.stream is None:
            raise NoBackend("no host up in table web")
        return self.stream, Backend("web1", "10.1.0.11", 80)

    def pick_datagram(self, hash_key=None):
        raise NoBackend("unused")

    def log(self, event, level="info", **fields):
        self.logged.append(event)


def test_serve_tcp_counts_a_session_without_backend_and_closes_it():
    async def main():
        client, rc = trio.testing.memory_stream_pair()
        stats = TcpStats()
        upstream = OneBackend()
        counted = CountingStream(rc)
        session = SessionVars("192.0.2.7", 40000, "192.0.2.1", 8080, 60)
        await serve_tcp(counted, upstream, session, Timeouts(), stats)
        assert stats.as_dict()["no_backend"] == 1 and stats.sessions == 1
        assert upstream.logged == ["relay_no_backend"]
    run(main)


def test_counting_stream_counts_what_the_client_sent_and_got():
    async def main():
        client, rc, rb, backend = await pair()
        counted = CountingStream(rc)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tcp, counted, OneBackend(rb),
                               SessionVars("192.0.2.7", 1, "192.0.2.1", 2, 60), Timeouts(), TcpStats())
            await client.send_all(b"12345")
            assert await backend.receive_some() == b"12345"
            await backend.send_all(b"abc")
            assert await client.receive_some() == b"abc"
            await client.send_eof()
            await backend.send_eof()
        assert (counted.received, counted.sent) == (5, 3)
    run(main)


RELAY_TOML = NODE_TOML + """[[health.table]]
name = "web"
hosts = ["10.1.0.11"]
port = 80
check = { method = "tcp" }
[[health.relay]]
name = "www"
address = "192.0.2.1"
port = 443
table = "web"
mode = "source-hash"
tcp = { ip_minttl = 255 }
tls = { certificate = "/c.pem", key = "/k.pem", ciphers = "ECDHE+AESGCM" }
backend_tls = { verify = true, sni = "web.internal" }
"""


def test_a_configured_relay_passes_the_engine_schema_and_a_bad_one_is_refused():
    relay = parse_config(tomllib.loads(RELAY_TOML), "meshd.toml", read_secrets=False).health.relays[0]
    fields = relay_fields(relay, b"CERT", b"KEY", None, disabled=True)
    data = TO_RELAY.encode("relays", relays=[fields]) + TO_RELAY.encode(
        "live", **live_fields("web", (("web1", "10.1.0.11", 80, 1),)))
    (relays, live) = Decoder(TO_RELAY, 1 << 20).feed(data)
    item = relays.fields["relays"][0]
    assert (item["mode"], item["connect_s"], item["ip_minttl"], item["disabled"]) == ("source-hash", 5.0, 255, True)
    assert item["tls"]["cert_pem"] == b"CERT" and item["backend_tls"]["sni"] == "web.internal"
    assert live.fields["hosts"] == [{"host": "web1", "address": "10.1.0.11", "port": 80, "weight": 1}]
    # What the engine answers is checked in the daemon: a made-up field is dropped with its reason.
    import msgpack
    body = msgpack.packb(["answer", {"id": 1, "relays": [], "sessions": [{"id": 1}], "truncated": 0}])
    (rejected,) = Decoder(FROM_RELAY).feed(len(body).to_bytes(4, "big") + body)
    assert rejected.where.startswith("answer.sessions[0]") and "missing" in rejected.what
