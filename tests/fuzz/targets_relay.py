"""Fuzz target for the relays' parsers: what clients and backends send a
DNS relay.

* `dns_idmap`: a DnsIdMap (meshd/relay/dns.py) with queries in flight to
  two backends, fed a mutated query (from seeds of several shapes: names
  with many labels, 63-byte labels, the root, mixed case, EDNS) through
  take_query, or a mutated answer to one of the queries in flight,
  sometimes from another source, through take_answer.  Nothing may raise;
  each input is counted once (taken, or dropped under one reason); a query
  is taken only if it is one query with one question; an answer only if it
  is a response from the backend the query went to, with its id and its
  question (name without case, type, class), and that mapping is then
  gone, while a refused answer leaves every mapping in place.

Must not: open a socket or read a clock (the map is given `now`).
"""

from __future__ import annotations

import random
import struct

from meshd.relay.dns import DnsIdMap, DnsStats, parse_message

from .mutate import mutate_bytes
from .targets_wire import Finding, Tally

HEADER_FIELDS = [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2), (10, 2)]
BACKENDS = [("10.0.0.1", 53), ("10.0.0.2", 53)]
ELSEWHERE = [("10.0.0.1", 5353), ("10.0.0.9", 53)]


def _name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".") if label) + b"\x00"


def _query(msg_id: int, name: str, qtype: int = 1, extra: bytes = b"", arcount: int = 0) -> bytes:
    return (struct.pack("!HHHHHH", msg_id, 0x0100, 1, 0, 0, arcount) + _name(name)
            + struct.pack("!HH", qtype, 1) + extra)


OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)        # an EDNS OPT record, no options
QUERY_SEEDS = [
    _query(1, "www.example.org"), _query(2, "WwW.ExAmPlE.oRg", 28), _query(3, "."),
    _query(4, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p", 16), _query(5, ".".join(["x" * 63] * 3) + ".y", 1),
    _query(6, "mail.example.org", 15, OPT, arcount=1), _query(0xFFFF, "_sip._tcp.example.org", 33),
]


def _answer(forwarded: bytes) -> bytes:
    """The backend's answer to a forwarded query: QR set, one A record pointing at the question."""
    flags = struct.unpack_from("!H", forwarded, 2)[0] | 0x8080
    message = parse_message(forwarded)
    head = forwarded[:2] + struct.pack("!HHHHH", flags, 1, 1, 0, 0)
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + b"\x0a\x01\x00\x01"
    return head + forwarded[12:message.question_end] + record


def _counted(stats: DnsStats) -> int:
    return (stats.queries + sum(stats.dropped_queries.values()) + stats.answers
            + sum(stats.dropped_answers.values()))


def dns_idmap(_world, rng: random.Random, tally: Tally) -> None:
    stats = DnsStats()
    idmap = DnsIdMap(64, 2.0, stats, randbits=rng.getrandbits)      # the ids follow the seed
    sent: dict[tuple, tuple] = {}           # (backend, id) -> the question's key
    answers: list[tuple[tuple, bytes]] = []
    for seed in rng.sample(QUERY_SEEDS, rng.randint(1, len(QUERY_SEEDS))):
        query = idmap.take_query(seed)
        backend = rng.choice(BACKENDS)
        out = idmap.forward(query, ("192.0.2.1", 4000), backend, 0.0)
        sent[(backend, struct.unpack_from("!H", out)[0])] = query.message.question.key()
        answers.append((backend, _answer(out)))
    if rng.random() < 0.4:
        _mutated_query(idmap, stats, rng, tally)
    else:
        _mutated_answer(idmap, stats, sent, answers, rng, tally)


def _mutated_query(idmap: DnsIdMap, stats: DnsStats, rng: random.Random, tally: Tally) -> None:
    how, data = mutate_bytes(rng.choice(QUERY_SEEDS), rng, QUERY_SEEDS, HEADER_FIELDS)
    tally.count(f"query {how}")
    before = _counted(stats)
    try:
        query = idmap.take_query(data)
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("dns_idmap", "exception", repr(e), data))
        return
    if _counted(stats) != before + 1:
        tally.findings.append(Finding("dns_idmap", "wrong answer", "a query not counted once", data))
    for reason in stats.dropped_queries:
        tally.reasons[("query", reason)] = tally.reasons.get(("query", reason), 0) + 1
    if query is not None:
        qdcount = struct.unpack_from("!H", data, 4)[0]
        if data[2] & 0x80 or qdcount != 1 or query.data != data:
            tally.findings.append(Finding("dns_idmap", "accepted", f"a {how} that is not one query", data))


def _mutated_answer(idmap: DnsIdMap, stats: DnsStats, sent: dict, answers: list,
                    rng: random.Random, tally: Tally) -> None:
    backend, seed = rng.choice(answers)
    how, data = mutate_bytes(seed, rng, [a for _, a in answers], HEADER_FIELDS)
    source = backend
    if rng.random() < 0.1:
        how, data, source = "elsewhere", seed, rng.choice(ELSEWHERE)
    tally.count(f"answer {how}")
    before, in_flight = _counted(stats), idmap.in_flight
    try:
        reply = idmap.take_answer(data, source, 0.1)
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("dns_idmap", "exception", repr(e), data))
        return
    if _counted(stats) != before + 1:
        tally.findings.append(Finding("dns_idmap", "wrong answer", "an answer not counted once", data))
    for reason in stats.dropped_answers:
        tally.reasons[("answer", reason)] = tally.reasons.get(("answer", reason), 0) + 1
    if reply is None:
        if idmap.in_flight != in_flight:
            tally.findings.append(Finding("dns_idmap", "state changed", f"a refused {how}", data))
        return
    message = parse_message(data)       # it was taken, so it parses
    key = (source, message.id)
    if not message.is_response or sent.get(key) != message.question.key():
        tally.findings.append(Finding("dns_idmap", "accepted", f"a {how} that answers nothing sent", data))
    elif idmap.in_flight != in_flight - 1 or reply.data[2:] != data[2:]:
        tally.findings.append(Finding("dns_idmap", "wrong answer", "the mapping kept or the answer changed", data))


TARGETS = {"dns_idmap": dns_idmap}
