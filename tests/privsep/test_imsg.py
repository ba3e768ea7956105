"""imsg framing and validation: every kind of bad input is a Rejected (or, for
a lying length, a broken decoder), never an exception."""

from __future__ import annotations

import random
import struct

import msgpack
import pytest

from meshd.health.checkspec import CheckOutcome, CheckSpec, CheckTarget
from meshd.health.engineproto import (
    FROM_ENGINE,
    TO_ENGINE,
    outcome_fields,
    target_fields,
    target_from,
)
from meshd.privsep.imsg import (
    HEADER,
    Decoder,
    Field,
    FramingError,
    Message,
    Rejected,
    Schema,
)

SCHEMA = Schema({
    "ping": {"id": Field("int", lo=0, hi=1000), "note": Field("str", optional=True, max_len=8)},
    "blob": {"data": Field("bytes", max_len=4), "ratio": Field("float", lo=0, hi=1),
             "flag": Field("bool"), "pair": Field("pair", lo=1, hi=9),
             "inner": Field("struct", struct={"x": Field("int")})},
})


def frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def one(obj) -> Message | Rejected:
    got = Decoder(SCHEMA).feed(frame(obj))
    assert len(got) == 1
    return got[0]


def test_valid_messages_round_trip_in_pieces():
    data = SCHEMA.encode("ping", id=7, note="hi") + SCHEMA.encode(
        "blob", data=b"ab", ratio=0.5, flag=True, pair=[2, 3], inner={"x": -1})
    d = Decoder(SCHEMA)
    got = []
    for i in range(len(data)):            # one byte at a time
        got += d.feed(data[i:i + 1])
    assert got == [Message("ping", {"id": 7, "note": "hi"}),
                   Message("blob", {"data": b"ab", "ratio": 0.5, "flag": True, "pair": [2, 3],
                                    "inner": {"x": -1}})]
    assert d.pending == 0 and d.received == 2 and d.rejected == 0


@pytest.mark.parametrize("obj, where, what", [
    ("ping", "message", "expected [type, fields]"),
    (["ping"], "message", "expected [type, fields]"),
    ([1, {}], "message", "type: expected a string"),
    (["pong", {}], "pong", "unknown message type"),
    (["ping", []], "ping", "expected a map of fields"),
    (["ping", {}], "ping.id", "missing"),
    (["ping", {"id": 1, "extra": 2}], "ping", "unknown field extra"),
    (["ping", {"id": "1"}], "ping.id", "expected int, found a string"),
    (["ping", {"id": True}], "ping.id", "expected int, found a boolean"),
    (["ping", {"id": 1.0}], "ping.id", "expected int, found a float"),
    (["ping", {"id": None}], "ping.id", "expected a value, found nil"),
    (["ping", {"id": 1001}], "ping.id", "out of range"),
    (["ping", {"id": -1}], "ping.id", "out of range"),
    (["ping", {"id": 1, "note": "x" * 9}], "ping.note", "longer than 8"),
    (["ping", {"id": 1, "note": b"bytes"}], "ping.note", "expected str, found bytes"),
    (["blob", {"data": "ab", "ratio": 0, "flag": True, "pair": [1, 1], "inner": {"x": 1}}],
     "blob.data", "expected bytes"),
    (["blob", {"data": b"ab", "ratio": float("nan"), "flag": True, "pair": [1, 1], "inner": {"x": 1}}],
     "blob.ratio", "expected float"),
    (["blob", {"data": b"ab", "ratio": 2, "flag": True, "pair": [1, 1], "inner": {"x": 1}}],
     "blob.ratio", "out of range"),
    (["blob", {"data": b"ab", "ratio": 0, "flag": 1, "pair": [1, 1], "inner": {"x": 1}}],
     "blob.flag", "expected bool, found an integer"),
    (["blob", {"data": b"ab", "ratio": 0, "flag": True, "pair": [1, 2, 3], "inner": {"x": 1}}],
     "blob.pair", "expected two integers"),
    (["blob", {"data": b"ab", "ratio": 0, "flag": True, "pair": [1, 10], "inner": {"x": 1}}],
     "blob.pair", "out of range"),
    (["blob", {"data": b"ab", "ratio": 0, "flag": True, "pair": [1, 1], "inner": {"x": "1"}}],
     "blob.inner.x", "expected int"),
    (["blob", {"data": b"ab", "ratio": 0, "flag": True, "pair": [1, 1], "inner": {"y": 1}}],
     "blob.inner", "unknown field y"),
])
def test_wrong_messages_are_rejected_with_where_and_what(obj, where, what):
    got = one(obj)
    assert isinstance(got, Rejected), got
    assert got.where == where
    assert what in got.what


def test_not_msgpack_is_rejected_and_the_next_message_still_arrives():
    d = Decoder(SCHEMA)
    bad = b"\xc1\xc1\xc1"                 # 0xc1 is never used in msgpack
    got = d.feed(HEADER.pack(len(bad)) + bad + SCHEMA.encode("ping", id=1))
    assert isinstance(got[0], Rejected) and "not msgpack" in got[0].what
    assert got[1] == Message("ping", {"id": 1})
    assert (d.received, d.rejected) == (1, 1)


def test_deep_nesting_and_trailing_bytes_are_rejected():
    deep = b"\x91" * 5000 + b"\xc0"       # 5000 nested one-element arrays
    assert isinstance(Decoder(SCHEMA).decode_body(deep), Rejected)
    two = msgpack.packb(["ping", {"id": 1}]) + b"\x00"
    assert isinstance(Decoder(SCHEMA).decode_body(two), Rejected)


def test_a_length_over_the_limit_breaks_the_channel_for_good():
    d = Decoder(SCHEMA, max_size=100)
    got = d.feed(SCHEMA.encode("ping", id=1) + struct.pack("!I", 101) + SCHEMA.encode("ping", id=2))
    assert got == [Message("ping", {"id": 1})]             # what came before it still arrives
    assert d.broken and "101 bytes" in d.broken
    with pytest.raises(FramingError):
        d.feed(SCHEMA.encode("ping", id=3))


def test_a_message_at_the_limit_passes():
    body = msgpack.packb(["ping", {"id": 1, "note": "x"}])
    d = Decoder(SCHEMA, max_size=len(body))
    assert d.feed(HEADER.pack(len(body)) + body) == [Message("ping", {"id": 1, "note": "x"})]


def test_encode_refuses_what_the_peer_would_reject():
    with pytest.raises(ValueError, match="ping.id"):
        SCHEMA.encode("ping", id="seven")


def test_random_garbage_never_raises():
    rng = random.Random(11)
    valid = TO_ENGINE.encode("start", id=3, **target_fields(
        CheckTarget("10.0.0.1", 80, CheckSpec("http", codes=(200, 299)))))
    for _ in range(3000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        d = Decoder(TO_ENGINE)
        for m in d.feed(bytes(data)):
            if isinstance(m, Message):
                target_from(m.fields)           # a valid start is always convertible


def test_engine_protocol_carries_every_check_spec_field():
    from dataclasses import fields

    from meshd.health.engineproto import SPEC_FIELDS
    assert set(SPEC_FIELDS) == {f.name for f in fields(CheckSpec)}
    spec = CheckSpec("https", timeout_s=0.25, path="/x", host_header="h", codes=(200, 204),
                     digest="sha256:" + "0" * 64, sni="s", verify=True, verify_name="v",
                     ca_file="/ca.pem", expiry_warn_days=5)
    target = CheckTarget("2001:db8::1", 443, spec)
    m = Decoder(TO_ENGINE).feed(TO_ENGINE.encode("start", id=9, **target_fields(target)))[0]
    assert target_from(m.fields) == target
    binary = CheckTarget("10.0.0.1", 7, CheckSpec("binary", send=b"\x00\x01", expect_bytes=b"\xff"))
    m = Decoder(TO_ENGINE).feed(TO_ENGINE.encode("start", id=1, **target_fields(binary)))[0]
    assert target_from(m.fields) == binary


def test_engine_refuses_scripts_and_bad_addresses():
    script = CheckTarget("10.0.0.1", 80, CheckSpec("script"))
    fields = target_fields(script)
    assert "not run by the check engine" in target_from({"id": 1, **fields})
    fields = target_fields(CheckTarget("not-an-ip", 80, CheckSpec("tcp")))
    assert "not an IP address" in target_from({"id": 1, **fields})


def test_outcomes_from_the_engine_are_bounded():
    long = CheckOutcome(False, 0.1, "e" * 5000, None)
    data = FROM_ENGINE.encode("outcome", id=1, **outcome_fields(long))
    m = Decoder(FROM_ENGINE).feed(data)[0]
    assert len(m.fields["error"]) == 1024
    # An engine that does not clip is rejected at the daemon's end.
    body = msgpack.packb(["outcome", {"id": 1, "ok": False, "error": "e" * 5000}])
    got = Decoder(FROM_ENGINE).feed(HEADER.pack(len(body)) + body)[0]
    assert isinstance(got, Rejected) and got.where == "outcome.error"


def test_a_list_is_bounded_in_length_and_each_item_checked():
    schema = Schema({"keys": {"k": Field("list", max_len=2, item=Field("struct", struct={
        "id": Field("int", lo=0, hi=9), "key": Field("bytes", max_len=4)}))}})
    ok = schema.validate(["keys", {"k": [{"id": 1, "key": b"ab"}]}])
    assert isinstance(ok, Message)
    for bad, where in (([{"id": 1, "key": b"ab"}] * 3, "keys.k"),
                       ([{"id": 10, "key": b"ab"}], "keys.k[0].id"),
                       ([{"id": 1, "key": b"abcde"}], "keys.k[0].key"),
                       ("not a list", "keys.k")):
        verdict = schema.validate(["keys", {"k": bad}])
        assert isinstance(verdict, Rejected) and verdict.where == where, verdict
    nested = Schema({"x": {"v": Field("list", max_len=9, item=Field("list", max_len=9, item=Field(
        "list", max_len=9, item=Field("list", max_len=9, item=Field("list", max_len=9, item=Field("int"))))))}})
    assert isinstance(nested.validate(["x", {"v": [[[[[1]]]]]}]), Rejected)
