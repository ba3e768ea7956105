"""The relay engine's runtime in this process (no child): a failed backend is
passed over for the next one, a handler's bug ends its session and not the
engine, a relay whose TLS does not load is refused alone."""

from __future__ import annotations

import socket
import tomllib

import trio

from meshd.config import parse_config
from meshd.relay import engine as relay_engine
from meshd.relay.proto import TO_RELAY, relay_fields
from relayconf import NODE_TOML

TOML = NODE_TOML + """[[health.table]]
name = "web"
hosts = ["127.0.0.1"]
port = 80
check = { method = "tcp" }
[[health.relay]]
name = "www"
address = "127.0.0.1"
port = PORT
table = "web"
connect_timeout_ms = 500
"""


class Channel:
    def __init__(self):
        self.sent = []

    def send_nowait(self, mtype, **fields):
        # What the engine sends must pass its own schema, as the real Channel checks.
        from meshd.relay.proto import FROM_RELAY
        FROM_RELAY.encode(mtype, **fields)
        self.sent.append((mtype, fields))
        return True


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def relay_message(port: int, **changes) -> dict:
    relay = parse_config(tomllib.loads(TOML.replace("PORT", str(port))), "meshd.toml",
                         read_secrets=False).health.relays[0]
    fields = relay_fields(relay)
    fields.update(changes)
    TO_RELAY.encode("relays", relays=[fields])
    return fields


class Message:
    def __init__(self, mtype, **fields):
        self.type, self.fields = mtype, fields


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]              # closed again: nothing listens there


async def serve_one_reply(task_status=trio.TASK_STATUS_IGNORED):
    async def handle(stream):
        async with stream:
            await stream.send_all(b"hello")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def read_all(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = b""
    with trio.fail_after(5):
        async with stream:
            try:
                while chunk := await stream.receive_some():
                    got += chunk
            except trio.BrokenResourceError:
                pass
    return got


def test_a_dead_backend_is_passed_over_and_a_handler_bug_ends_only_its_session():
    async def main():
        lsock = listener()
        port = lsock.getsockname()[1]
        log = []
        async with trio.open_nursery() as nursery:
            live = await nursery.start(serve_one_reply)
            dead = dead_port()
            channel = Channel()
            eng = relay_engine.RelayEngine(nursery, channel, lambda *a, **k: log.append((a, k)), [lsock])
            eng.handle(Message("relays", relays=[relay_message(port)]))
            # Two hosts up: the first refuses connections.
            eng.handle(Message("live", table="web", hosts=[
                {"host": "dead", "address": "127.0.0.1", "port": dead, "weight": 1},
                {"host": "live", "address": "127.0.0.1", "port": live, "weight": 1}]))
            for _ in range(4):
                assert await read_all(port) == b"hello"
            rt = eng.relays["www"]
            counts = {b.host: (c.total, c.failed) for b, c in rt.balancer.counts.items()}
            assert counts["live"][0] == 4 and counts["dead"] == (0, 1)     # held after its failure

            # A handler that raises: that session ends, the engine and the next session go on.
            real = rt.handler

            async def broken(*args):
                raise RuntimeError("a bug in a protocol handler")
            rt.handler = broken
            assert await read_all(port) == b""
            rt.handler = real
            assert await read_all(port) == b"hello"
            assert rt.errors == 1
            assert any(a[0] == "relay_session_error" for a, _ in log)
            eng.handle(Message("query", id=7, what="relays"))
            (mtype, answer), = channel.sent[-1:]
            assert mtype == "answer" and answer["relays"][0]["errors"] >= 2    # the bug + the failed connect
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_a_relay_whose_tls_does_not_load_is_refused_alone():
    async def main():
        a, b = listener(), listener()
        log = []
        async with trio.open_nursery() as nursery:
            eng = relay_engine.RelayEngine(nursery, Channel(), lambda *x, **k: log.append((x, k)), [a, b])
            good = relay_message(a.getsockname()[1])
            bad = relay_message(b.getsockname()[1], name="bad",
                                tls={"cert_pem": b"not a certificate", "key_pem": b"nor a key",
                                     "ciphers": None, "min_version": "TLSv1.2", "session_cache": True})
            eng.handle(Message("relays", relays=[good, bad]))
            assert set(eng.relays) == {"www"}
            assert any(x[0] == "relay_refused" and k["relay"] == "bad" for x, k in log)
            # A set without www stops it.
            eng.handle(Message("relays", relays=[]))
            assert eng.relays == {}
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_counters_by_reason_are_shown_one_row_per_reason():
    from meshd.relay.dns import DnsStats
    from meshd.relay.http import HttpStats
    dns = DnsStats(queries=5, answers=3)
    dns.count(dns.servfail, "no-backend")
    dns.count(dns.servfail, "no-backend")
    dns.count(dns.dropped_queries, "qdcount")
    rows = {r["name"]: r["value"] for r in relay_engine.counter_rows(dns.as_dict())}
    assert rows["queries"] == 5 and rows["answers"] == 3
    assert rows["servfail.no-backend"] == 2 and rows["dropped_queries.qdcount"] == 1
    assert not [n for n in rows if n in ("servfail", "dropped_queries", "dropped_answers")]
    http = HttpStats()
    http.count_response(200)
    http.count_response(403)
    http.count_response(204)
    rows = {r["name"]: r["value"] for r in relay_engine.counter_rows(http.as_dict())}
    assert rows["responses_2xx"] == 2 and rows["responses_4xx"] == 1 and rows["requests"] == 0
