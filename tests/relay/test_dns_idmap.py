"""The DNS relay's id map (meshd/relay/dns.py): ids rewritten at random,
answers matched on backend, id and question, malformed input dropped and
counted, mappings bounded and expired.  No socket, no clock: time is passed in."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from dnswire import (CLASS_IN, TYPE_A, TYPE_AAAA, answer_a, encode_name, header, message_id,
                     question_of, query, rcode)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.relay.dns import (DnsFormatError, DnsIdMap, DnsStats, Expired, parse_message,
                             servfail)

CLIENT = ("192.0.2.10", 5353)
CLIENT2 = ("192.0.2.11", 5353)
NS1 = ("10.0.0.1", 53)
NS2 = ("10.0.0.2", 53)


def new_map(capacity: int = 64, timeout_s: float = 2.0, **kw) -> tuple[DnsIdMap, DnsStats]:
    stats = DnsStats()
    return DnsIdMap(capacity, timeout_s, stats, **kw), stats


def send(m: DnsIdMap, data: bytes, client=CLIENT, backend=NS1, now: float = 0.0) -> bytes:
    q = m.take_query(data)
    assert q is not None
    out = m.forward(q, client, backend, now)
    assert out is not None
    return out


# -- parsing ---------------------------------------------------------------

def test_parse_reads_header_and_question():
    m = parse_message(query(0x1234, "www.Example.org", TYPE_AAAA))
    assert m.id == 0x1234 and not m.is_response
    assert m.question.name == encode_name("www.Example.org")
    assert (m.question.qtype, m.question.qclass) == (TYPE_AAAA, CLASS_IN)
    assert m.question.key()[0] == encode_name("www.example.org")
    assert m.question_end == len(query(0x1234, "www.Example.org"))


def test_parse_root_name():
    m = parse_message(query(1, "."))
    assert m.question.name == b"\x00"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "short-header"),
    (b"\x00" * 11, "short-header"),
    (header(1, 0, qd=0), "qdcount"),
    (header(1, 0, qd=2) + encode_name("a") + b"\x00\x01\x00\x01" * 2, "qdcount"),
    (header(1, 0), "truncated-name"),
    (header(1, 0) + b"\x05abc", "truncated-name"),                       # label past the end
    (header(1, 0) + b"\x03abc", "truncated-name"),                       # no root label
    (header(1, 0) + b"\xc0\x0c\x00\x01\x00\x01", "compressed-question"),  # points at itself: a loop
    (header(1, 0) + b"\x01a\xc0\x00\x00\x01\x00\x01", "compressed-question"),
    (header(1, 0) + b"\x41abc\x00\x00\x01\x00\x01", "bad-label"),         # label type 01
    (header(1, 0) + b"\x81abc\x00\x00\x01\x00\x01", "bad-label"),         # label type 10
    (header(1, 0) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "long-name"),  # 257 bytes
    (header(1, 0) + encode_name("a.b") + b"\x00\x01\x00", "truncated-question"),
])
def test_malformed_messages_name_their_reason(data, reason):
    with pytest.raises(DnsFormatError) as e:
        parse_message(data)
    assert e.value.reason == reason


def test_longest_name_is_taken():
    # 3 labels of 63 and one of 61: 3*64 + 62 + root = 255 bytes.
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"b" * 61 + b"\x00"
    assert len(name) == 255
    m = parse_message(header(1, 0) + name + b"\x00\x01\x00\x01")
    assert m.question.name == name


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_in_the_core(data):
    m, stats = new_map()
    q = m.take_query(data)
    if q is not None:
        assert m.forward(q, CLIENT, NS1, 0.0) is not None
    assert m.take_answer(data, NS1, 0.0) is None or q is not None
    try:
        parse_message(data)
    except DnsFormatError:
        pass
    assert stats.queries + sum(stats.dropped_queries.values()) == 1


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.lists(st.integers(0, 255), max_size=80),
       st.binary(max_size=8))
def test_near_valid_questions_never_raise(head, name_bytes, tail):
    # Arbitrary bytes rarely get past the header; these have qdcount 1 and a
    # name of arbitrary label bytes, so the name walk is what gets exercised.
    data = head[:4] + b"\x00\x01" + head[6:] + bytes(name_bytes) + tail
    m, stats = new_map()
    q = m.take_query(data)
    if q is not None:
        out = m.forward(q, CLIENT, NS1, 0.0)
        reply = m.take_answer(out[:2] + bytes([out[2] | 0x80]) + out[3:], NS1, 0.0)
        assert reply is not None and reply.data[:2] == data[:2]
    else:
        assert sum(stats.dropped_queries.values()) == 1


# -- the id map ------------------------------------------------------------

def test_answer_goes_back_with_the_clients_id():
    m, stats = new_map()
    sent = send(m, query(0xBEEF, "www.example.org"))
    assert sent[2:] == query(0xBEEF, "www.example.org")[2:]
    backend_id = message_id(sent)
    reply = m.take_answer(answer_a(backend_id, "www.example.org", "10.1.0.1"), NS1, 0.5)
    assert reply is not None and reply.client == CLIENT
    assert reply.data == answer_a(0xBEEF, "www.example.org", "10.1.0.1")
    assert m.in_flight == 0
    assert (stats.queries, stats.forwarded, stats.answers) == (1, 1, 1)
    # The mapping is gone: the same answer again is dropped.
    assert m.take_answer(answer_a(backend_id, "www.example.org", "10.1.0.1"), NS1, 0.6) is None
    assert stats.dropped_answers == {"unexpected-source": 1}


def test_question_is_compared_without_case_and_the_answer_kept_as_sent():
    m, _ = new_map()
    backend_id = message_id(send(m, query(7, "WwW.ExAmple.ORG")))
    reply = m.take_answer(answer_a(backend_id, "www.example.org", "10.1.0.1"), NS1, 0.1)
    assert reply is not None
    assert question_of(reply.data)[0] == "www.example.org"


@pytest.mark.parametrize(("spoof", "reason"), [
    (lambda i: answer_a(i, "www.example.com", "6.6.6.6"), "wrong-question"),
    (lambda i: answer_a(i, "www.example.org", "6.6.6.6", qtype=TYPE_AAAA), "wrong-question"),
    (lambda i: answer_a(i ^ 1, "www.example.org", "6.6.6.6"), "unknown-id"),
    (lambda i: query(i, "www.example.org"), "not-an-answer"),
    (lambda i: answer_a(i, "www.example.org", "6.6.6.6")[:31], "truncated-question"),
])
def test_spoofed_answers_are_dropped_and_the_mapping_stays(spoof, reason):
    m, stats = new_map()
    backend_id = message_id(send(m, query(1, "www.example.org")))
    assert m.take_answer(spoof(backend_id), NS1, 0.1) is None
    assert stats.dropped_answers == {reason: 1}
    # The real answer still gets through.
    reply = m.take_answer(answer_a(backend_id, "www.example.org", "10.1.0.1"), NS1, 0.2)
    assert reply is not None and message_id(reply.data) == 1


def test_answer_from_another_source_is_dropped():
    m, stats = new_map()
    backend_id = message_id(send(m, query(1, "a.example"), backend=NS1))
    send(m, query(2, "b.example"), backend=NS2)
    assert m.take_answer(answer_a(backend_id, "a.example", "6.6.6.6"), ("10.0.0.9", 53), 0.1) is None
    assert m.take_answer(answer_a(backend_id, "a.example", "6.6.6.6"), ("10.0.0.1", 5300), 0.1) is None
    assert stats.dropped_answers == {"unexpected-source": 2}
    # NS2 has queries in flight, just not this one (unless ids collided).
    if backend_id not in m._ids[NS2]:
        assert m.take_answer(answer_a(backend_id, "a.example", "6.6.6.6"), NS2, 0.1) is None
        assert stats.dropped_answers["unknown-id"] == 1


def test_ids_are_not_predictable():
    m, _ = new_map(capacity=4096)
    ids = [message_id(send(m, query(100 + n, "www.example.org"))) for n in range(2000)]
    assert len(set(ids)) == len(ids)          # never one in use twice towards a backend
    steps = Counter((b - a) & 0xFFFF for a, b in zip(ids, ids[1:]))
    # Sequential or constant-stride ids give one step; random ones almost
    # never repeat a step among 65536 (about 30 repeats expected in 2000).
    assert steps.most_common(1)[0][1] < 8
    assert len({i & 0xFF for i in ids}) > 200 and len({i >> 8 for i in ids}) > 200
    # The client's own id says nothing of the backend's.
    assert sum(1 for n, i in enumerate(ids) if i == 100 + n) < 3


def test_an_id_in_use_is_never_drawn_twice():
    draws = iter([5, 5, 5, 9])
    m, _ = new_map(randbits=lambda bits: next(draws))
    assert message_id(send(m, query(1, "a"))) == 5
    assert message_id(send(m, query(2, "b"))) == 9


def test_a_broken_random_source_still_gives_a_free_id():
    m, _ = new_map(randbits=lambda bits: 42)
    ids = [message_id(send(m, query(n, "a"))) for n in range(3)]
    assert ids == [42, 43, 44]


def test_same_id_to_two_backends_is_two_mappings():
    m, _ = new_map(randbits=lambda bits: 42)
    send(m, query(1, "a"), backend=NS1)
    send(m, query(2, "b"), client=CLIENT2, backend=NS2)
    r2 = m.take_answer(answer_a(42, "b", "10.0.0.2"), NS2, 0.1)
    r1 = m.take_answer(answer_a(42, "a", "10.0.0.1"), NS1, 0.1)
    assert (r1.client, message_id(r1.data)) == (CLIENT, 1)
    assert (r2.client, message_id(r2.data)) == (CLIENT2, 2)


def test_full_map_refuses_new_queries_and_keeps_the_old():
    m, stats = new_map(capacity=3)
    ids = [message_id(send(m, query(n, f"n{n}"), now=n * 0.1)) for n in range(3)]
    q = m.take_query(query(9, "late"))
    assert m.forward(q, CLIENT, NS1, 0.5) is None
    assert stats.dropped_queries == {"full": 1}
    assert m.take_answer(answer_a(ids[0], "n0", "10.0.0.1"), NS1, 0.6) is not None
    assert m.forward(q, CLIENT, NS1, 0.7) is not None


def test_mappings_expire_after_the_timeout_oldest_first():
    m, stats = new_map(timeout_s=2.0)
    send(m, query(1, "a"), now=0.0)
    late_id = message_id(send(m, query(2, "b"), now=1.0))
    assert m.next_deadline() == 2.0
    assert m.expire(1.99) == []
    expired = m.expire(2.0)
    assert [(e.client, message_id(e.query.data), e.backend, e.attempt) for e in expired] == [(CLIENT, 1, NS1, 1)]
    assert m.next_deadline() == 3.0
    assert isinstance(m.expire(5.0)[0], Expired) and m.in_flight == 0 and m.next_deadline() is None
    # An answer after the timeout finds nothing.
    assert m.take_answer(answer_a(late_id, "b", "10.0.0.1"), NS1, 5.1) is None


def test_forget_backend_gives_back_its_queries_only():
    m, _ = new_map()
    send(m, query(1, "a"), backend=NS1)
    send(m, query(2, "b"), backend=NS2)
    send(m, query(3, "c"), backend=NS1)
    lost = m.forget_backend(NS1)
    assert sorted(message_id(e.query.data) for e in lost) == [1, 3]
    assert m.in_flight == 1


def test_servfail_keeps_id_question_and_flags():
    q = new_map()[0].take_query(query(0x4242, "Www.Example.org", TYPE_AAAA))
    data = servfail(q)
    assert message_id(data) == 0x4242 and rcode(data) == 2
    flags = struct.unpack_from("!H", data, 2)[0]
    assert flags & 0x8000 and flags & 0x0100          # an answer, RD copied
    assert question_of(data) == ("Www.Example.org", TYPE_AAAA, CLASS_IN)
    assert struct.unpack_from("!HHHH", data, 4) == (1, 0, 0, 0)
    # Never larger than the query: a SERVFAIL to a spoofed source amplifies nothing.
    assert len(data) <= len(q.data)
    edns = new_map()[0].take_query(query(1, "a.example") + b"\x00\x00\x29\x04\xd0" + b"\x00" * 6)
    assert len(servfail(edns)) < len(edns.data)


def test_queries_the_relay_does_not_take_are_counted():
    m, stats = new_map()
    assert m.take_query(answer_a(1, "a", "10.0.0.1")) is None
    assert m.take_query(query(1, "a") + b"\x00" * 5000) is None
    assert m.take_query(b"\x00\x01") is None
    assert stats.dropped_queries == {"not-a-query": 1, "too-large": 1, "short-header": 1}
    assert stats.as_dict()["dropped_queries"] == stats.dropped_queries and stats.queries == 0


def test_hash_key_is_the_lowered_name():
    q = new_map()[0].take_query(query(1, "WWW.example.org", TYPE_A))
    assert q.hash_key() == encode_name("www.example.org")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 80), st.booleans())
def test_a_mutated_answer_is_taken_only_if_id_and_question_still_match(flips, cut, truncate):
    m, stats = new_map()
    sent = send(m, query(77, "www.example.org"))
    real = bytearray(answer_a(message_id(sent), "www.example.org", "10.1.0.1"))
    for offset, value in flips:
        if offset < len(real):
            real[offset] = value
    data = bytes(real[:cut] if truncate else real)
    reply = m.take_answer(data, NS1, 0.1)
    if reply is None:
        assert sum(stats.dropped_answers.values()) == 1 and m.in_flight == 1
    else:
        parsed = parse_message(data)
        assert parsed.id == message_id(sent) and parsed.is_response
        assert parsed.question.key() == (encode_name("www.example.org"), TYPE_A, CLASS_IN)
        assert reply.data == (77).to_bytes(2, "big") + data[2:]
        assert m.in_flight == 0
