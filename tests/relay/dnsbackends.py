"""What the DNS relay's socket tests run against: small DNS servers over
real localhost sockets, and a test Upstream (meshd/relay/interface.py)
over them, standing in for the relay engine.

A `LocalDnsServer` answers A records for the names it is given, over UDP
and TCP (on two ports of 127.0.0.1), and records the ids it sees.  It can
be told to be slow, silent, or to answer first with a wrong id, a wrong
question or from another port (the spoofs), then with the real answer.
"""

from __future__ import annotations

import socket as stdsocket
import struct
from dataclasses import dataclass, field

import trio
from dnswire import answer_a, frame, message_id, question_of

from meshd.relay.interface import Backend, NoBackend

SPOOF_ADDRESS = "6.6.6.6"       # what a spoofed answer says


@dataclass
class LocalDnsServer:
    name: str
    records: dict[str, str]                    # name -> IPv4 address
    mode: str = "ok"                           # ok, silent, wrong-id, wrong-question, wrong-source
    delay_s: float = 0.0                       # before answering (all names)
    name_delay_s: dict[str, float] = field(default_factory=dict)   # per name, TCP and UDP
    seen: list[tuple[int, str]] = field(default_factory=list)      # (id, name) of each query
    udp_port: int = 0
    tcp_port: int = 0
    tcp_connections: int = 0
    close_tcp_after: int | None = None        # close a TCP connection after this many queries
    junk_answers: dict[str, list[bytes]] = field(default_factory=dict)   # UDP, by name: before the answer
    in_progress: int = 0                      # TCP queries being answered now
    max_in_progress: int = 0

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.udp = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        await self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        self.other = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        await self.other.bind(("127.0.0.1", 0))
        listeners = await nursery.start(trio.serve_tcp, self._serve_tcp_client, 0)
        self.tcp_port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(self._serve_udp)

    def answers(self, query: bytes) -> list[bytes]:
        """What this server sends back for `query`, in order."""
        msg_id, (name, qtype, _qclass) = message_id(query), question_of(query)
        self.seen.append((msg_id, name))
        if self.mode == "silent":
            return []
        real = answer_a(msg_id, name, self.records.get(name, "0.0.0.0"), qtype=qtype)
        if self.mode == "wrong-id":
            return [answer_a(msg_id ^ 0x0101, name, SPOOF_ADDRESS, qtype=qtype), real]
        if self.mode == "wrong-source":       # right id and question, from another port
            return [answer_a(msg_id, name, SPOOF_ADDRESS, qtype=qtype), real]
        if self.mode == "wrong-question":
            return [answer_a(msg_id, "evil." + name, SPOOF_ADDRESS, qtype=qtype), real]
        return [real]

    async def _serve_udp(self) -> None:
        while True:
            data, peer = await self.udp.recvfrom(65535)
            self._nursery.start_soon(self._answer_udp, data, peer)     # slow ones overlap

    async def _answer_udp(self, data: bytes, peer) -> None:
        try:
            name = question_of(data)[0]
        except (IndexError, UnicodeDecodeError, struct.error):
            return      # a name this test server cannot spell (the relay took it)
        await trio.sleep(self.delay_s + self.name_delay_s.get(name, 0.0))
        for junk in self.junk_answers.get(name, ()):
            await self.udp.sendto(junk, peer)
        for n, out in enumerate(self.answers(data)):
            spoof_from_elsewhere = self.mode == "wrong-source" and n == 0
            await (self.other if spoof_from_elsewhere else self.udp).sendto(out, peer)

    async def _serve_tcp_client(self, stream: trio.SocketStream) -> None:
        self.tcp_connections += 1
        buffer, count = b"", 0
        lock = trio.Lock()
        async with trio.open_nursery() as nursery:
            async for chunk in stream:
                buffer += chunk
                while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack_from("!H", buffer)[0]:
                    length = struct.unpack_from("!H", buffer)[0]
                    query, buffer = buffer[2:2 + length], buffer[2 + length:]
                    count += 1
                    nursery.start_soon(self._answer_tcp, stream, lock, query)
                    if self.close_tcp_after is not None and count >= self.close_tcp_after:
                        await trio.sleep(0.05)
                        await stream.aclose()
                        nursery.cancel_scope.cancel()
                        return

    async def _answer_tcp(self, stream: trio.SocketStream, lock: trio.Lock, query: bytes) -> None:
        try:
            name = question_of(query)[0]
        except (IndexError, UnicodeDecodeError, struct.error):
            return
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            await trio.sleep(self.delay_s + self.name_delay_s.get(name, 0.0))
        finally:
            self.in_progress -= 1
        for out in self.answers(query):
            async with lock:
                try:
                    await stream.send_all(frame(out))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


async def start_servers(nursery: trio.Nursery, *servers: LocalDnsServer) -> None:
    for server in servers:
        await server.start(nursery)


class LocalUpstream:
    """The engine's side, for tests: round-robin over the servers that are
    up, UDP port for datagrams and TCP port for streams."""

    def __init__(self, *servers: LocalDnsServer, connect_s: float = 1.0):
        self.servers = list(servers)
        self.down: set[str] = set()
        self.connect_s = connect_s
        self.next = 0
        self.hash_keys: list[bytes | None] = []
        self.sent: dict[str, int] = {}         # datagram_sent() per backend name
        self.address = "127.0.0.1"         # where the servers' UDP sockets are
        self.logs: list[tuple[str, str, dict]] = []

    def _pick(self) -> LocalDnsServer:
        up = [s for s in self.servers if s.name not in self.down]
        if not up:
            raise NoBackend("no backend up")
        server = up[self.next % len(up)]
        self.next += 1
        return server

    def pick_datagram(self, hash_key: bytes | None = None) -> Backend:
        self.hash_keys.append(hash_key)
        server = self._pick()
        return Backend(server.name, self.address, server.udp_port)

    def datagram_sent(self, backend: Backend) -> None:
        self.sent[backend.host] = self.sent.get(backend.host, 0) + 1

    async def connect(self, hash_key: bytes | None = None) -> tuple[trio.abc.Stream, Backend]:
        self.hash_keys.append(hash_key)
        server = self._pick()
        with trio.fail_after(self.connect_s):
            stream = await trio.open_tcp_stream("127.0.0.1", server.tcp_port)
        return stream, Backend(server.name, "127.0.0.1", server.tcp_port)

    def log(self, event: str, level: str = "info", **fields) -> None:
        self.logs.append((event, level, fields))
