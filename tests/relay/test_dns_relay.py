"""The DNS relay's trio handlers (meshd/relay/dnsrelay.py) over real
localhost sockets, without root: test DNS servers as backends, a test
Upstream in place of the relay engine, a client of the test's own."""

from __future__ import annotations

import socket as stdsocket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
from dnsbackends import SPOOF_ADDRESS, LocalDnsServer, LocalUpstream, start_servers
from dnswire import a_address, encode_name, frame, header, message_id, query, question_of, rcode

from meshd.config.relay_dns import DnsSpec
from meshd.relay.dnsrelay import DnsStats, serve_dns_tcp, serve_dns_udp
from meshd.relay.interface import SessionVars, Timeouts

RECORDS = {"www.example.org": "10.1.0.1", "mail.example.org": "10.1.0.2",
           "a.test": "10.2.0.1", "b.test": "10.2.0.2", "slow.test": "10.2.0.3"}


class Relay:
    """One DNS relay on 127.0.0.1: a UDP listener and a TCP listener, as the
    engine would run them."""

    def __init__(self, spec: DnsSpec, upstream: LocalUpstream, timeouts: Timeouts = Timeouts()):
        self.spec, self.upstream, self.timeouts = spec, upstream, timeouts
        self.stats = DnsStats()

    async def start(self, nursery: trio.Nursery) -> None:
        self.udp = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        await self.udp.bind(("127.0.0.1", 0))
        self.udp_address = self.udp.getsockname()
        nursery.start_soon(serve_dns_udp, self.udp, self.spec, self.upstream, self.timeouts, self.stats)
        listeners = await nursery.start(trio.serve_tcp, self._serve_tcp, 0)
        self.tcp_port = listeners[0].socket.getsockname()[1]

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        host, port = stream.socket.getpeername()[:2]
        session = SessionVars(host, port, "127.0.0.1", self.tcp_port, self.timeouts.idle_s)
        await serve_dns_tcp(stream, self.spec, self.upstream, session, self.timeouts, self.stats)


def run(test: Callable[[trio.Nursery], Awaitable[None]], limit_s: float = 5.0) -> None:
    async def main():
        with trio.fail_after(limit_s):
            async with trio.open_nursery() as nursery:
                await test(nursery)
                nursery.cancel_scope.cancel()
    trio.run(main)


async def setup(nursery, *servers: LocalDnsServer, spec: DnsSpec = DnsSpec(),
                timeouts: Timeouts = Timeouts()) -> Relay:
    await start_servers(nursery, *servers)
    relay = Relay(spec, LocalUpstream(*servers), timeouts)
    await relay.start(nursery)
    return relay


class UdpClient:
    def __init__(self):
        self.sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)

    async def ask(self, relay: Relay, data: bytes, wait_s: float = 2.0) -> tuple[bytes, tuple]:
        await self.sock.sendto(data, relay.udp_address)
        return await self.receive(wait_s)

    async def receive(self, wait_s: float = 2.0) -> tuple[bytes, tuple]:
        with trio.fail_after(wait_s):
            return await self.sock.recvfrom(65535)


async def tcp_connect(relay: Relay) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", relay.tcp_port)


async def tcp_receive(stream: trio.SocketStream, count: int) -> list[bytes]:
    """`count` framed messages (fewer if the stream ends first)."""
    buffer, out = b"", []
    while len(out) < count:
        while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack_from("!H", buffer)[0]:
            length = struct.unpack_from("!H", buffer)[0]
            out.append(buffer[2:2 + length])
            buffer = buffer[2 + length:]
        if len(out) >= count:
            break
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break           # reset: the relay closed with a query of ours unread
        if not chunk:
            break
        buffer += chunk
    return out


def servers(*modes: str) -> list[LocalDnsServer]:
    return [LocalDnsServer(f"ns{n + 1}", RECORDS, mode=mode) for n, mode in enumerate(modes)]


# -- UDP ---------------------------------------------------------------------


def test_udp_answers_reach_the_client_with_its_id_and_the_backends_see_random_ids():
    ns1, ns2 = servers("ok", "ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, ns2)
        client = UdpClient()
        for n in range(20):
            data, source = await client.ask(relay, query(1000 + n, "www.example.org"))
            assert message_id(data) == 1000 + n
            assert a_address(data) == "10.1.0.1" and rcode(data) == 0
            assert source == relay.udp_address          # from the listener: its address
        backend_ids = [i for i, _ in ns1.seen + ns2.seen]
        assert len(ns1.seen) == len(ns2.seen) == 10     # the test upstream's round robin
        assert sum(1 for i in backend_ids if 1000 <= i < 1020) <= 1
        ns1_ids = [i for i, _ in ns1.seen]
        assert len({(b - a) & 0xFFFF for a, b in zip(ns1_ids, ns1_ids[1:])}) > 5
        assert relay.upstream.hash_keys[0] == encode_name("www.example.org")
        assert (relay.stats.queries, relay.stats.answers, relay.stats.forwarded) == (20, 20, 20)
        assert sorted(relay.upstream.sent.values()) == [10, 10]     # each query in its backend's total
    run(test)


def test_udp_two_clients_with_the_same_id_get_their_own_answers():
    ns1, = servers("ok")
    ns1.name_delay_s = {"www.example.org": 0.1}

    async def test(nursery):
        relay = await setup(nursery, ns1)
        c1, c2 = UdpClient(), UdpClient()
        await c1.sock.sendto(query(7, "www.example.org"), relay.udp_address)
        await c2.sock.sendto(query(7, "mail.example.org"), relay.udp_address)
        (d2, _), (d1, _) = await c2.receive(), await c1.receive()
        assert (message_id(d1), a_address(d1)) == (7, "10.1.0.1")
        assert (message_id(d2), a_address(d2)) == (7, "10.1.0.2")
    run(test)


@pytest.mark.parametrize(("mode", "reason"), [("wrong-id", "unknown-id"),
                                               ("wrong-question", "wrong-question"),
                                               ("wrong-source", "unexpected-source")])
def test_udp_spoofed_answers_are_dropped_and_the_real_one_gets_through(mode, reason):
    ns1, = servers(mode)

    async def test(nursery):
        relay = await setup(nursery, ns1)
        data, _ = await UdpClient().ask(relay, query(0x2222, "www.example.org"))
        assert message_id(data) == 0x2222 and a_address(data) == "10.1.0.1"
        assert question_of(data)[0] == "www.example.org"
        await trio.sleep(0.02)
        assert relay.stats.dropped_answers == {reason: 1}
        assert relay.stats.answers == 1
    run(test)


def test_udp_silent_backend_gives_servfail_within_the_timeout():
    ns1, = servers("silent")

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(query_timeout_ms=200))
        start = trio.current_time()
        data, _ = await UdpClient().ask(relay, query(0x3333, "www.example.org", 28))
        elapsed = trio.current_time() - start
        assert 0.19 <= elapsed < 1.0, elapsed
        assert message_id(data) == 0x3333 and rcode(data) == 2
        assert question_of(data) == ("www.example.org", 28, 1)
        assert relay.stats.servfail == {"timeout": 1}
    run(test)


def test_udp_retry_goes_to_the_other_backend():
    silent, ok = servers("silent", "ok")

    async def test(nursery):
        relay = await setup(nursery, silent, ok, spec=DnsSpec(query_timeout_ms=200, retry=True))
        start = trio.current_time()
        data, _ = await UdpClient().ask(relay, query(0x4444, "www.example.org"))
        elapsed = trio.current_time() - start
        assert message_id(data) == 0x4444 and a_address(data) == "10.1.0.1" and rcode(data) == 0
        assert 0.19 <= elapsed < 1.0, elapsed
        assert len(silent.seen) == len(ok.seen) == 1
        assert relay.stats.retries == 1 and relay.stats.servfail == {}
    run(test)


def test_udp_retry_that_times_out_too_gives_servfail():
    silent1, silent2 = servers("silent", "silent")

    async def test(nursery):
        relay = await setup(nursery, silent1, silent2, spec=DnsSpec(query_timeout_ms=150, retry=True))
        start = trio.current_time()
        data, _ = await UdpClient().ask(relay, query(5, "www.example.org"))
        assert rcode(data) == 2 and 0.29 <= trio.current_time() - start < 1.2
        assert len(silent1.seen) == len(silent2.seen) == 1
        assert relay.stats.servfail == {"timeout": 1}
    run(test)


def test_udp_no_backend_gives_servfail_at_once():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1)
        relay.upstream.down.add("ns1")
        start = trio.current_time()
        data, _ = await UdpClient().ask(relay, query(6, "www.example.org"))
        assert rcode(data) == 2 and message_id(data) == 6
        assert trio.current_time() - start < 1.0       # the query timeout is 2 s
        assert relay.stats.servfail == {"no-backend": 1} and ns1.seen == []
    run(test)


MALFORMED = [b"", b"\x01\x02\x03", header(1, 0, qd=0),
             header(1, 0) + b"\xc0\x0c\x00\x01\x00\x01",          # a pointer loop in the question
             header(1, 0) + b"\x41abc\x00\x00\x01\x00\x01",       # a bad label type
             header(1, 0) + b"\x05abc",                           # a label past the end
             header(1, 0x8000) + encode_name("x") + b"\x00\x01\x00\x01"]   # an answer


def test_udp_malformed_queries_are_dropped_and_counted_and_others_served():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1)
        bad, good = UdpClient(), UdpClient()
        for n in range(10):
            for junk in MALFORMED:
                await bad.sock.sendto(junk, relay.udp_address)
            data, _ = await good.ask(relay, query(n, "mail.example.org"))
            assert message_id(data) == n and a_address(data) == "10.1.0.2"
        assert relay.stats.dropped_queries == {"short-header": 20, "qdcount": 10,
                                               "compressed-question": 10, "bad-label": 10,
                                               "truncated-name": 10, "not-a-query": 10}
        assert relay.stats.answers == 10 and len(ns1.seen) == 10
    run(test)


def test_udp_balance_per_client_hashes_on_the_clients_address():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(balance="client"))
        await UdpClient().ask(relay, query(1, "www.example.org"))
        assert relay.upstream.hash_keys == [b"127.0.0.1"]
    run(test)


def test_udp_full_map_refuses_new_queries():
    ns1, = servers("ok")
    ns1.delay_s = 0.2

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(max_in_flight=3))
        client = UdpClient()
        for n in range(5):
            await client.sock.sendto(query(n, "www.example.org"), relay.udp_address)
        ids = sorted([message_id((await client.receive())[0]) for _ in range(3)])
        assert ids == [0, 1, 2]
        assert relay.stats.dropped_queries == {"full": 2}
        # Room again once answered.
        data, _ = await client.ask(relay, query(9, "www.example.org"))
        assert message_id(data) == 9
    run(test)


# -- TCP ---------------------------------------------------------------------


def test_tcp_pipelined_queries_answered_out_of_order_with_the_clients_ids():
    ns1, = servers("ok")
    ns1.name_delay_s = {"slow.test": 0.15}

    async def test(nursery):
        relay = await setup(nursery, ns1)
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(1, "slow.test")) + frame(query(2, "a.test"))
                              + frame(query(3, "b.test")))
        answers = await tcp_receive(stream, 3)
        by_id = {message_id(a): (question_of(a)[0], a_address(a)) for a in answers}
        assert by_id == {1: ("slow.test", "10.2.0.3"), 2: ("a.test", "10.2.0.1"),
                         3: ("b.test", "10.2.0.2")}
        assert message_id(answers[-1]) == 1                  # the slow one came last
        assert ns1.tcp_connections == 1 and len(ns1.seen) == 3
        assert sum(1 for i, _ in ns1.seen if i in (1, 2, 3)) <= 1
        assert relay.upstream.hash_keys == [encode_name("slow.test")]
        await stream.aclose()
    run(test)


def test_tcp_pipeline_bound_holds_the_client_back():
    ns1, = servers("ok")
    ns1.delay_s = 0.05

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(tcp_pipeline=2))
        stream = await tcp_connect(relay)
        await stream.send_all(b"".join(frame(query(n, "a.test")) for n in range(6)))
        answers = await tcp_receive(stream, 6)
        assert sorted(message_id(a) for a in answers) == list(range(6))
        assert ns1.max_in_progress == 2
    run(test)


def test_tcp_silent_backend_gives_servfail_within_the_timeout():
    ns1, = servers("silent")

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(query_timeout_ms=200))
        stream = await tcp_connect(relay)
        start = trio.current_time()
        await stream.send_all(frame(query(0x5555, "www.example.org")))
        [data] = await tcp_receive(stream, 1)
        assert 0.19 <= trio.current_time() - start < 1.0
        assert message_id(data) == 0x5555 and rcode(data) == 2
        assert relay.stats.servfail == {"timeout": 1}
    run(test)


def test_tcp_spoofed_answers_are_dropped():
    ns1, = servers("wrong-question")

    async def test(nursery):
        relay = await setup(nursery, ns1)
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(9, "www.example.org")))
        [data] = await tcp_receive(stream, 1)
        assert a_address(data) == "10.1.0.1" and message_id(data) == 9
        assert relay.stats.dropped_answers == {"wrong-question": 1}
    run(test)


def test_tcp_no_backend_gives_servfail():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1)
        relay.upstream.down.add("ns1")
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(4, "a.test")))
        [data] = await tcp_receive(stream, 1)
        assert rcode(data) == 2 and message_id(data) == 4
        assert relay.stats.servfail == {"no-backend": 1}
    run(test)


def test_tcp_malformed_message_is_dropped_and_the_connection_goes_on():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1)
        stream = await tcp_connect(relay)
        await stream.send_all(b"".join(frame(junk) for junk in MALFORMED) + frame(query(8, "b.test")))
        [data] = await tcp_receive(stream, 1)
        assert message_id(data) == 8 and a_address(data) == "10.2.0.2"
        assert sum(relay.stats.dropped_queries.values()) == len(MALFORMED)
    run(test)


def test_tcp_oversized_message_closes_the_connection():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(tcp_max_message=100))
        stream = await tcp_connect(relay)
        await stream.send_all(struct.pack("!H", 200) + b"\x00" * 200)
        assert await tcp_receive(stream, 1) == []
        assert relay.stats.dropped_queries == {"too-large": 1} and ns1.seen == []
    run(test)


def test_tcp_max_queries_answers_then_closes():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(tcp_max_queries=2))
        stream = await tcp_connect(relay)
        await stream.send_all(b"".join(frame(query(n, "a.test")) for n in range(3)))
        answers = await tcp_receive(stream, 3)
        assert sorted(message_id(a) for a in answers) == [0, 1]
    run(test)


def test_tcp_backend_closing_gives_servfail_then_the_next_query_reconnects():
    ns1, = servers("silent")
    ns1.close_tcp_after = 1

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(query_timeout_ms=2000))
        stream = await tcp_connect(relay)
        start = trio.current_time()
        await stream.send_all(frame(query(1, "a.test")))
        [data] = await tcp_receive(stream, 1)
        assert rcode(data) == 2 and trio.current_time() - start < 1.5    # not the 2 s timeout
        assert relay.stats.servfail == {"backend-lost": 1}
        ns1.mode, ns1.close_tcp_after = "ok", None
        await stream.send_all(frame(query(2, "b.test")))
        [data] = await tcp_receive(stream, 1)
        assert message_id(data) == 2 and a_address(data) == "10.2.0.2"
        assert ns1.tcp_connections == 2
    run(test)


def test_tcp_idle_connection_is_closed():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, timeouts=Timeouts(idle_s=0.2))
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(1, "a.test")))
        assert len(await tcp_receive(stream, 1)) == 1
        start = trio.current_time()
        assert await tcp_receive(stream, 1) == []
        assert 0.15 <= trio.current_time() - start < 1.0
    run(test)


def test_stats_as_dict_is_plain():
    stats = DnsStats()
    stats.count(stats.servfail, "timeout")
    d = stats.as_dict()
    assert d["servfail"] == {"timeout": 1} and d["queries"] == 0
    d["servfail"]["timeout"] = 5
    assert stats.servfail == {"timeout": 1}
    assert SPOOF_ADDRESS not in str(d)


def test_tcp_client_end_of_stream_waits_for_the_answers_in_flight():
    ns1, = servers("ok")
    ns1.delay_s = 0.1

    async def test(nursery):
        relay = await setup(nursery, ns1)
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(1, "a.test")) + frame(query(2, "b.test")))
        await stream.send_eof()
        answers = await tcp_receive(stream, 3)
        assert sorted(message_id(a) for a in answers) == [1, 2]      # then the end
    run(test)


def closed_port() -> int:
    s = stdsocket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("retry", [False, True])
def test_tcp_connect_refused_gives_servfail_or_the_other_backend(retry):
    dead, ok = servers("ok", "ok")

    async def test(nursery):
        relay = await setup(nursery, dead, ok, spec=DnsSpec(retry=retry))
        dead.tcp_port = closed_port()
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(3, "a.test")))
        [data] = await tcp_receive(stream, 1)
        assert message_id(data) == 3
        if retry:
            assert a_address(data) == "10.2.0.1" and relay.stats.servfail == {}
            assert len(relay.upstream.hash_keys) == 2
        else:
            assert rcode(data) == 2 and relay.stats.servfail == {"connect": 1}
        assert relay.upstream.logs[0][0] == "dns backend connect failed"
    run(test)


def test_udp_ipv6_backend():
    if not stdsocket.has_ipv6:
        pytest.skip("no IPv6")
    ns1, = servers("ok")

    async def test(nursery):
        await start_servers(nursery)
        sock = trio.socket.socket(stdsocket.AF_INET6, stdsocket.SOCK_DGRAM)
        try:
            await sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1")
        ns1.udp, ns1._nursery = sock, nursery
        ns1.udp_port = sock.getsockname()[1]
        nursery.start_soon(ns1._serve_udp)
        upstream = LocalUpstream(ns1)
        upstream.address = "::1"
        relay = Relay(DnsSpec(), upstream)
        await relay.start(nursery)
        data, _ = await UdpClient().ask(relay, query(0x6666, "www.example.org"))
        assert message_id(data) == 0x6666 and a_address(data) == "10.1.0.1"
        assert len(ns1.seen) == 1 and relay.stats.dropped_answers == {}
    run(test)


def test_udp_late_answer_after_the_servfail_is_dropped():
    ns1, = servers("ok")
    ns1.delay_s = 0.3

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(query_timeout_ms=150))
        client = UdpClient()
        data, _ = await client.ask(relay, query(11, "www.example.org"))
        assert rcode(data) == 2
        with trio.move_on_after(0.3):
            await client.receive()
            raise AssertionError("a second answer to one query")
        # Nothing else in flight to ns1: its source is no longer expected.
        assert relay.stats.dropped_answers == {"unexpected-source": 1}
    run(test)


def open_fds() -> int:
    import os
    return len(os.listdir("/proc/self/fd"))


def test_udp_handler_closes_its_sockets_when_cancelled():
    ns1, = servers("ok")

    async def test(nursery):
        await start_servers(nursery, ns1)
        before = open_fds()
        sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        relay = Relay(DnsSpec(), LocalUpstream(ns1))
        relay.udp, relay.udp_address = sock, sock.getsockname()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(serve_dns_udp, sock, relay.spec, relay.upstream, Timeouts(), relay.stats)
                data, _ = await UdpClient().ask(relay, query(1, "www.example.org"))
                assert message_id(data) == 1
                assert open_fds() >= before + 3      # the listener, its duplicate, the backend socket
                scope.cancel()
        sock.close()
        assert open_fds() <= before + 1              # the client's socket, not yet collected
    run(test)


def test_tcp_session_timeout_ends_a_busy_connection():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, timeouts=Timeouts(session_s=0.3))
        stream = await tcp_connect(relay)
        start, answered = trio.current_time(), 0
        while True:
            try:
                await stream.send_all(frame(query(answered, "a.test")))
            except trio.BrokenResourceError:
                break
            if not await tcp_receive(stream, 1):
                break
            answered += 1
            await trio.sleep(0.02)
        assert 0.25 <= trio.current_time() - start < 1.0 and answered > 5
    run(test)


def test_random_bytes_from_clients_and_backends_never_stop_the_relay():
    import random
    rng = random.Random(15)
    junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(40))) for _ in range(300)]
    # Some with qdcount 1 and a plausible start, so that the name walk is reached.
    junk += [b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00" + j for j in junk[:100]]
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1)
        bad, good = UdpClient(), UdpClient()
        for j in junk:
            await bad.sock.sendto(j, relay.udp_address)
        ns1.junk_answers = {"a.test": junk}    # from the backend's own port, before the answer
        data, _ = await good.ask(relay, query(1, "a.test"))
        assert message_id(data) == 1 and a_address(data) == "10.2.0.1"
        ns1.junk_answers = {}
        stream = await tcp_connect(relay)
        await stream.send_all(b"".join(frame(j) for j in junk) + frame(query(2, "b.test")))
        [data] = await tcp_receive(stream, 1)
        assert message_id(data) == 2
        data, _ = await good.ask(relay, query(3, "a.test"))
        assert message_id(data) == 3
        dropped = sum(relay.stats.dropped_queries.values())
        assert dropped + relay.stats.queries == 2 * len(junk) + 3
        # Junk that parsed as a query was forwarded too; the test server's
        # answers to its odd names may not echo them, and are dropped as well.
        extra = relay.stats.forwarded - 3
        assert len(junk) <= sum(relay.stats.dropped_answers.values()) <= len(junk) + extra
    run(test)


def test_tcp_queries_before_an_oversized_one_are_answered_then_the_connection_closes():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(tcp_max_message=100))
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(1, "a.test")) + frame(query(2, "b.test"))
                              + struct.pack("!H", 200) + b"\x00" * 200)
        answers = await tcp_receive(stream, 3)
        assert sorted(message_id(a) for a in answers) == [1, 2]
        assert relay.stats.dropped_queries == {"too-large": 1}
    run(test)


def test_tcp_balance_per_client_connects_on_the_clients_address():
    ns1, = servers("ok")

    async def test(nursery):
        relay = await setup(nursery, ns1, spec=DnsSpec(balance="client"))
        stream = await tcp_connect(relay)
        await stream.send_all(frame(query(1, "a.test")) + frame(query(2, "b.test")))
        assert len(await tcp_receive(stream, 2)) == 2
        assert relay.upstream.hash_keys == [b"127.0.0.1"]      # one connect for the connection
    run(test)


def test_udp_ipv6_listener_answers_from_its_address():
    ns1, = servers("ok")

    async def test(nursery):
        await start_servers(nursery, ns1)
        sock = trio.socket.socket(stdsocket.AF_INET6, stdsocket.SOCK_DGRAM)
        try:
            await sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1")
        stats = DnsStats()
        nursery.start_soon(serve_dns_udp, sock, DnsSpec(balance="client"), LocalUpstream(ns1),
                           Timeouts(), stats)
        client = trio.socket.socket(stdsocket.AF_INET6, stdsocket.SOCK_DGRAM)
        await client.sendto(query(0x7777, "www.example.org"), sock.getsockname())
        with trio.fail_after(2):
            data, source = await client.recvfrom(65535)
        assert message_id(data) == 0x7777 and a_address(data) == "10.1.0.1"
        assert source[:2] == sock.getsockname()[:2]
        assert stats.answers == 1
    run(test)
