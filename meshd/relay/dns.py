"""The DNS relay's id map (sans-I/O): what relayd's relay_dns does, and more.

Each query forwarded to a backend gets a new 16-bit id, drawn from the
CSPRNG (`secrets`) among the ids not in use towards that backend: a client
cannot choose or predict the id the backend sees, so it cannot make the
relay's queries collide, and an off-path host spoofing answers towards the
relay must guess it.  An answer is matched on (backend, id) and on its
question section (name, type, class, the name compared without case) against
the question sent; relayd matches the id only, so a spoofed answer that
guessed the id would be taken.  A match gets the client's id back and is
the client's; anything else is dropped and counted, and a mapping that a
wrong answer hit stays (a spoof must not cancel a real query).

Only the header and the question section are read, with every bound
checked: a malformed query or answer is dropped and counted by reason,
never raises (`DnsFormatError` is `parse_message`'s one error type, and the
core catches it).  The question must be one uncompressed name: it is the
first name of a message, so a compression pointer in it can only point into
the header or at itself.

The map holds at most `capacity` queries in flight.  When it is full a new
query is refused (dropped, counted "full"), never an old one evicted:
evicting the oldest would let a flood of queries (from spoofed sources too)
push every real query out before its answer came back, while refusing keeps
the work already sent and the flood loses only its own excess; the map
drains within one query timeout, and the refused client asks again as
resolvers do.  A mapping lives `timeout_s` (the relay's query timeout): then
`expire()` hands it back, for a SERVFAIL or a retry.

Must not: do I/O, read a clock (`now` comes in, and must not go back), or
pick a backend (the shell asks its Upstream).
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

HEADER = struct.Struct("!HHHHHH")      # id, flags, qdcount, ancount, nscount, arcount
HEADER_LEN = HEADER.size
QR = 0x8000
OPCODE_MASK = 0x7800
RD = 0x0100
CD = 0x0010
RCODE_SERVFAIL = 2
MAX_NAME_LEN = 255                      # RFC 1035 3.1, in wire form with the root label
UDP_MAX_QUERY = 4096                    # the EDNS payload resolvers offer; queries are far smaller
ID_DRAWS = 64                           # then a scan from a random id (the map is at most half full)


class DnsFormatError(Exception):
    """A message the relay does not take; `reason` is the counter's name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Question:
    name: bytes          # wire form, as it came (a resolver may mix case: DNS 0x20)
    qtype: int
    qclass: int

    def key(self) -> tuple[bytes, int, int]:
        # Label lengths are at most 63, below b"A": lowering the wire form
        # lowers the letters only.
        return self.name.lower(), self.qtype, self.qclass


@dataclass(frozen=True)
class Message:
    id: int
    flags: int
    question: Question
    question_end: int    # offset of the first byte after the question

    @property
    def is_response(self) -> bool:
        return bool(self.flags & QR)


def parse_message(data: bytes) -> Message:
    """The header and the one question of `data`; raises DnsFormatError."""
    if len(data) < HEADER_LEN:
        raise DnsFormatError("short-header", f"{len(data)} bytes")
    msg_id, flags, qdcount, _an, _ns, _ar = HEADER.unpack_from(data)
    if qdcount != 1:
        raise DnsFormatError("qdcount", f"{qdcount} questions")
    offset = HEADER_LEN
    while True:
        if offset >= len(data):
            raise DnsFormatError("truncated-name")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            raise DnsFormatError("compressed-question", f"pointer at offset {offset}")
        if length & 0xC0:
            raise DnsFormatError("bad-label", f"label type {length >> 6:#x} at offset {offset}")
        offset += 1 + length
        if offset - HEADER_LEN > MAX_NAME_LEN:
            raise DnsFormatError("long-name")
        if length == 0:
            break
    if offset + 4 > len(data):
        raise DnsFormatError("truncated-question")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    return Message(msg_id, flags, Question(bytes(data[HEADER_LEN:offset]), qtype, qclass), offset + 4)


@dataclass(frozen=True)
class Query:
    """A client's query the relay took: its bytes and what they say."""
    data: bytes
    message: Message

    def hash_key(self) -> bytes:
        """What a hash mode balances on when the relay balances per query:
        the name, so that one name stays on one backend's cache."""
        return self.message.question.key()[0]


def servfail(query: Query) -> bytes:
    """A SERVFAIL (rcode 2) for `query`: its id, opcode, RD and CD, and its question."""
    m = query.message
    flags = QR | (m.flags & (OPCODE_MASK | RD | CD)) | RCODE_SERVFAIL
    return HEADER.pack(m.id, flags, 1, 0, 0, 0) + query.data[HEADER_LEN:m.question_end]


@dataclass
class DnsStats:
    """Counters of one relay (all its listeners and connections), as the
    engine reports them (`as_dict()`)."""
    queries: int = 0                    # taken from clients
    forwarded: int = 0                  # sent to a backend (retries included)
    answers: int = 0                    # matched and sent back to a client
    retries: int = 0
    tcp_connections: int = 0
    servfail: dict[str, int] = field(default_factory=dict)          # no-backend, timeout, backend-lost
    dropped_queries: dict[str, int] = field(default_factory=dict)   # by reason
    dropped_answers: dict[str, int] = field(default_factory=dict)   # by reason
    send_errors: int = 0                # a datagram the kernel would not send

    def count(self, counter: dict[str, int], reason: str) -> None:
        counter[reason] = counter.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {"queries": self.queries, "forwarded": self.forwarded, "answers": self.answers,
                "retries": self.retries, "tcp_connections": self.tcp_connections,
                "servfail": dict(self.servfail), "dropped_queries": dict(self.dropped_queries),
                "dropped_answers": dict(self.dropped_answers), "send_errors": self.send_errors}


@dataclass(frozen=True)
class Reply:
    """Send `data` (an answer with the client's id back) to `client`."""
    client: Hashable
    data: bytes


@dataclass(frozen=True)
class Expired:
    """A query whose backend did not answer within the timeout."""
    client: Hashable
    query: Query
    backend: Hashable
    attempt: int         # 1 for the first sending, 2 for a retry


@dataclass
class _Pending:
    client: Hashable
    query: Query
    backend: Hashable
    deadline: float
    attempt: int


class DnsIdMap:
    """The queries in flight of one UDP listener or one TCP connection.

    `client` and `backend` are whatever the shell keys them by (an address
    tuple, a Backend); they are only compared and handed back.
    """

    def __init__(self, capacity: int, timeout_s: float, stats: DnsStats,
                 randbits: Callable[[int], int] = secrets.randbits):
        if not 1 <= capacity <= 32768:
            raise ValueError(f"capacity {capacity}: from 1 to 32768 (half the ids of a backend)")
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.stats = stats
        self._randbits = randbits
        # (backend, id) -> pending, oldest first: the timeout is the same for
        # all, so the oldest is the first to expire.
        self._pending: OrderedDict[tuple[Hashable, int], _Pending] = OrderedDict()
        self._ids: dict[Hashable, set[int]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def take_query(self, data: bytes, max_len: int = UDP_MAX_QUERY) -> Query | None:
        """A client's message as a Query; None (dropped and counted) when it
        is not one the relay takes."""
        if len(data) > max_len:
            self.stats.count(self.stats.dropped_queries, "too-large")
            return None
        try:
            message = parse_message(data)
        except DnsFormatError as e:
            self.stats.count(self.stats.dropped_queries, e.reason)
            return None
        if message.is_response:
            self.stats.count(self.stats.dropped_queries, "not-a-query")
            return None
        self.stats.queries += 1
        return Query(bytes(data), message)

    def forward(self, query: Query, client: Hashable, backend: Hashable, now: float,
                attempt: int = 1) -> bytes | None:
        """The bytes to send to `backend` for `query` (a fresh id), the
        mapping recorded; None (counted "full") when the map is full."""
        if len(self._pending) >= self.capacity:
            self.stats.count(self.stats.dropped_queries, "full")
            return None
        in_use = self._ids.setdefault(backend, set())
        new_id = self._free_id(in_use)
        in_use.add(new_id)
        self._pending[(backend, new_id)] = _Pending(client, query, backend, now + self.timeout_s, attempt)
        self.stats.forwarded += 1
        return new_id.to_bytes(2, "big") + query.data[2:]

    def take_answer(self, data: bytes, backend: Hashable, now: float) -> Reply | None:
        """The client's answer if `data` from `backend` answers a query in
        flight; None (dropped and counted) otherwise."""
        # A mapping lives until expire() forgets it: an answer a moment past
        # the deadline, before the timer ran, is still the real one.
        del now
        drop = self.stats.dropped_answers
        try:
            message = parse_message(data)
        except DnsFormatError as e:
            self.stats.count(drop, e.reason)
            return None
        if not message.is_response:
            self.stats.count(drop, "not-an-answer")
            return None
        in_use = self._ids.get(backend)
        if not in_use:
            self.stats.count(drop, "unexpected-source")
            return None
        key = (backend, message.id)
        pending = self._pending.get(key)
        if pending is None:
            self.stats.count(drop, "unknown-id")
            return None
        if message.question.key() != pending.query.message.question.key():
            self.stats.count(drop, "wrong-question")
            return None
        self._forget(key)
        self.stats.answers += 1
        return Reply(pending.client, pending.query.data[:2] + data[2:])

    def expire(self, now: float) -> list[Expired]:
        """The mappings whose time is up, forgotten."""
        out = []
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                break
            self._forget(key)
            out.append(Expired(pending.client, pending.query, pending.backend, pending.attempt))
        return out

    def forget_backend(self, backend: Hashable) -> list[Expired]:
        """Every query in flight to `backend` (its TCP connection is gone), forgotten."""
        out = []
        for key in [k for k in self._pending if k[0] == backend]:
            pending = self._pending[key]
            self._forget(key)
            out.append(Expired(pending.client, pending.query, pending.backend, pending.attempt))
        return out

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return next(iter(self._pending.values())).deadline

    def _forget(self, key: tuple[Hashable, int]) -> None:
        del self._pending[key]
        in_use = self._ids[key[0]]
        in_use.discard(key[1])
        if not in_use:
            del self._ids[key[0]]

    def _free_id(self, in_use: set[int]) -> int:
        for _ in range(ID_DRAWS):
            candidate = self._randbits(16)
            if candidate not in in_use:
                return candidate
        # Not reached with a map at most half full but by a broken randbits;
        # a scan from a random id keeps forward() bounded all the same.
        start = self._randbits(16)
        for step in range(65536):
            candidate = (start + step) & 0xFFFF
            if candidate not in in_use:
                return candidate
        raise AssertionError("more than 65536 queries in flight to one backend")
