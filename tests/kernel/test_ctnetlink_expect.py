"""Expectations in the ctnetlink codec, against golden vectors captured from the kernel.

proto/vectors/ctnetlink.json's "expect_vectors" are real IPCTNL_MSG_EXP_*
messages (proto/vectors/capture_ctnetlink.py: active FTP, PASV through SNAT,
EPSV over IPv6, an expectation dump), with the fields pyroute2's attribute
decoder reads from them. No root needed.
"""

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctvectors import DATA, Vectors, raw

from meshd.kernel import ctnetlink as ct

pytestmark = pytest.mark.usefixtures("decoder")     # events.py and the accelerator (conftest.py)

_VECTORS = Vectors("expect_vectors")
VECTORS, IDS = _VECTORS.items, _VECTORS.ids
KINDS = {"EXP_NEW": ct.EXP_NEW, "EXP_DESTROY": ct.EXP_DESTROY}
vector, event = _VECTORS.vector, _VECTORS.event


def test_vectors_cover_the_cases():
    assert {"expect_active_new", "expect_active_destroy", "expect_passive_nat", "expect_epsv_ipv6",
            "dump_expect_passive"} <= set(IDS)
    assert "nat" in vector("expect_passive_nat")["expect"]
    assert "nat" not in vector("expect_epsv_ipv6")["expect"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_decodes_to_expected_fields(v):
    x = v["expect"]
    msg = raw(v)
    (ev,) = ct.decode_events(msg)
    assert ev.kind == KINDS[x["kind"]]
    assert ev.portid == x["portid"]
    assert ev.key.hex() == x["key"]
    assert ct.is_expect_key(ev.key)
    assert ev.attrs == msg[16:]
    # the filters see the master: its protocol and addresses; NATed when the NAT part ran
    assert ev.l4proto == x["master"]["proto"]
    assert ev.src == socket.inet_pton(x["family"], x["master"]["src"])
    assert ev.dst == socket.inet_pton(x["family"], x["master"]["dst"])
    assert ev.status == (ct.IPS_NAT_MASK if "nat" in x else 0)
    assert ev.tcp_state is None
    assert ct.expect_master_key(ev.attrs).hex() == x["master_key"]
    assert ct.expect_helper(ev.attrs) == x.get("helper")


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_parse_expect_matches_the_oracle(v):
    x = v["expect"]
    p = ct.parse_expect(raw(v)[16:])
    assert p["expectation"] is True
    assert p["family"] == {2: "ipv4", 10: "ipv6"}[x["family"]]
    for key in ("tuple", "mask", "master", "timeout", "id", "helper", "flags", "class", "fn", "zone", "nat"):
        assert p.get(key) == x.get(key), key
    assert "unknown" not in p


def test_expect_keys_never_look_like_conntrack_keys():
    for v in DATA["vectors"]:
        (ev,) = ct.decode_events(bytes.fromhex(v["hex"]))
        assert not ct.is_expect_key(ev.key)
        assert len(ev.key) not in ct.expect.EXPECT_KEY_LENGTHS
    assert {len(event(n).key) for n in IDS} == {17, 41}


def test_the_master_key_is_the_control_connections():
    """The PASV expectation's master is the control connection the conntrack events name."""
    pasv = event("expect_passive_nat")
    master = vector("expect_passive_nat")["expect"]["master"]
    assert ct.parse_entry(b"\x02\0\0\0" + ct.tuples._encode_tuple(ct.CTA_TUPLE_ORIG, ct.key_tuple(
        ct.expect_master_key(pasv.attrs))[2]))["orig"] == master


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_encode_create_passes_everything_but_the_id(v):
    attrs = raw(v)[16:]
    msg = ct.encode_expect_create(attrs, 77)
    mlen, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (mlen, mtype, seq, pid) == (len(msg), ct.CT_EXP_NEW, 77, 0)
    assert flags == ct.NLM_F_REQUEST | ct.NLM_F_CREATE | ct.NLM_F_ACK        # no EXCL: refresh if present
    sent = {t: msg[16 + s:16 + e] for t, _rt, s, e in ct.iter_attrs(msg[16:], ct.NFGEN_LEN)}
    kept = {t: attrs[s:e] for t, _rt, s, e in ct.iter_attrs(attrs, ct.NFGEN_LEN)}
    assert ct.CTA_EXPECT_ID in kept and ct.CTA_EXPECT_ID not in sent
    del kept[ct.CTA_EXPECT_ID]
    assert sent == kept
    assert msg[16] == attrs[0]


def test_encode_create_refuses_an_incomplete_expectation():
    attrs = raw(vector("expect_passive_nat"))[16:]
    without_mask = attrs[:4] + b"".join(
        attrs[s - 4:e] + b"\0" * (-(e - s) & 3) for t, _rt, s, e in ct.iter_attrs(attrs, ct.NFGEN_LEN)
        if t != ct.CTA_EXPECT_MASK)
    with pytest.raises(ct.CtDecodeError):
        ct.encode_expect_create(without_mask, 1)


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_delete_by_attrs_and_by_key_agree(v):
    ev = ct.decode_events(raw(v))[0]
    by_attrs = ct.encode_expect_delete(ev.attrs, 5)
    assert by_attrs == ct.encode_expect_delete(None, 5, key=ev.key)
    types = [t for t, _rt, _s, _e in ct.iter_attrs(by_attrs[16:], ct.NFGEN_LEN)]
    assert types == [ct.CTA_EXPECT_TUPLE]        # a tuple always: without one the kernel deletes them all
    assert struct.unpack_from("=IH", by_attrs)[1] == ct.CT_EXP_DELETE


def test_delete_refuses_what_would_delete_everything():
    with pytest.raises(ct.CtDecodeError):
        ct.encode_expect_delete(b"\x02\0\0\0", 1)
    with pytest.raises(ct.CtDecodeError):
        ct.encode_expect_delete(None, 1, key=bytes(16))          # a conntrack key
    with pytest.raises(TypeError):
        ct.encode_expect_delete(None, 1)


def test_zone_goes_into_the_key_and_the_delete():
    attrs = raw(vector("expect_passive_nat"))[16:] + ct.nla(ct.CTA_EXPECT_ZONE, b"\0\x07")
    msg = struct.pack("=IHHII", 16 + len(attrs), ct.CT_EXP_NEW, 0, 0, 0) + attrs
    ev = ct.decode_events(msg)[0]
    assert ev.key[1:3] == b"\0\x07"
    assert ct.expect_master_key(attrs)[:2] == b"\0\x07"
    assert ct.encode_expect_delete(attrs, 1) == ct.encode_expect_delete(None, 1, key=ev.key)
    assert ct.parse_expect(attrs)["zone"] == 7


def test_expectation_dump_vector():
    buf = bytes.fromhex(DATA["expect_dump"]["hex"])
    out: list = []
    assert ct.decode_into(buf, out) & ct.DONE
    assert len(out) == DATA["expect_dump"]["entries"] >= 2
    assert {e.kind for e in out} == {ct.EXP_NEW}
    assert all(ct.is_expect_key(e.key) for e in out)
    assert len({e.key for e in out}) == len(out)


def test_dump_request():
    msg = ct.encode_expect_dump(9)
    assert struct.unpack_from("=IHHII", msg) == (20, ct.CT_EXP_GET, ct.NLM_F_REQUEST | ct.NLM_F_DUMP, 9, 0)
    assert msg[16:] == bytes(4)


@pytest.mark.parametrize("cut", [17, 24, 40, 60])
def test_truncated_expectation_raises_decode_error(cut):
    msg = bytearray(raw(vector("expect_passive_nat"))[:cut])
    struct.pack_into("=I", msg, 0, len(msg))
    with pytest.raises(ct.CtDecodeError):
        ct.decode_events(bytes(msg))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_expectations_raise_only_decode_errors(data):
    v = data.draw(st.sampled_from(VECTORS))
    msg = bytearray(raw(v))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(16, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    try:
        for ev in ct.decode_events(bytes(msg)):
            ct.parse_expect(ev.attrs)
            ct.encode_expect_create(ev.attrs, 1)
            ct.encode_expect_delete(ev.attrs, 1)
            ct.expect_master_key(ev.attrs)
    except ct.CtDecodeError:
        pass
