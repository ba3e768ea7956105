"""The election advert codec against proto/election.md and its golden vectors.

Keys, digests and packets are recomputed here from the documented constants
(HKDF via `cryptography` directly, struct + hmac), not through meshd, so a
change to the format in meshd shows up as a failure rather than a silent
re-definition.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.crypto import ELECTION_INFO, KeyRing, derive_key
from meshd.election.wire import (ADVERT_LEN, Advert, AdvertError, AdvertType, config_digest,
                                 decode_advert, encode_advert)

VECTORS_PATH = Path(__file__).resolve().parents[2] / "proto" / "vectors" / "election.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
CASES = VECTORS["cases"]

# The documented constants (proto/election.md), written out here on purpose.
DOC_SALT = b"meshd cluster key v1"
DOC_INFO = b"meshd election hmac-sha256 key-id "
DOC_HEADER = struct.Struct("!BBHIIBBHI8sIQ")
DOC_TYPES = {"ADVERT": 1, "BOWOUT": 2}


def hkdf(secret: bytes, key_id: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=DOC_SALT,
                info=DOC_INFO + bytes([key_id])).derive(secret)


def ring_for(case: dict) -> KeyRing:
    secrets = {k["key_id"]: bytes.fromhex(k["secret_hex"]) for k in case["receiver_keys"]}
    return KeyRing.from_secrets(secrets, min(secrets), ELECTION_INFO)


def advert_from(fields: dict) -> Advert:
    return Advert(AdvertType[fields["type"]], fields["group_id"], fields["node_id"],
                  fields["advbase_ms"], fields["advskew"], fields["demotion"],
                  bytes.fromhex(fields["config_digest"]), fields["key_id"],
                  fields["epoch"], fields["counter"])


def as_fields(a: Advert) -> dict:
    return {"type": a.type.name, "group_id": a.group_id, "node_id": a.node_id,
            "advbase_ms": a.advbase_ms, "advskew": a.advskew, "key_id": a.key_id,
            "demotion": a.demotion, "config_digest": a.config_digest.hex(),
            "epoch": a.epoch, "counter": a.counter}


def independent_packet(fields: dict, key: bytes) -> bytes:
    kind = DOC_TYPES.get(fields["type"], fields["type"])
    header = DOC_HEADER.pack(fields["version"], kind, fields["group_id"], fields["node_id"],
                             fields["advbase_ms"], fields["advskew"], fields["key_id"],
                             fields["flags"], fields["demotion"],
                             bytes.fromhex(fields["config_digest"]), fields["epoch"],
                             fields["counter"])
    return header + hmac.new(key, header, hashlib.sha256).digest()


def apply_mutation(data: bytes, mutation: dict | None) -> bytes:
    if not mutation:
        return data
    if "truncate" in mutation:
        data = data[:mutation["truncate"]]
    if "append" in mutation:
        data += bytes.fromhex(mutation["append"])
    if "xor" in mutation:
        b = bytearray(data)
        b[mutation["xor"]["offset"]] ^= mutation["xor"]["mask"]
        data = bytes(b)
    return data


# ----------------------------------------------------------------- golden vectors


def test_vectors_cover_the_required_cases():
    names = {c["name"] for c in CASES}
    assert {"advert", "bowout", "advert_key2", "advert_ipv6", "bad_mac", "truncated",
            "wrong_version", "unknown_key"} <= names
    errors = {c["expect"].get("error") for c in CASES} - {None}
    assert {"bad mac", "truncated", "bad version", "unknown key"} <= errors


def test_vectors_file_is_what_the_generator_writes():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_election_vectors", VECTORS_PATH.parent / "make_election_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.render() == VECTORS_PATH.read_text()
    assert mod.render() == mod.render()   # deterministic


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_key_derivation(case):
    secret = bytes.fromhex(case["secret_hex"])
    kid = case["key_id"]
    assert bytes.fromhex(case["hkdf_info_hex"]) == DOC_INFO + bytes([kid])
    assert hkdf(secret, kid).hex() == case["derived_key_hex"]
    assert derive_key(secret, ELECTION_INFO, kid).hex() == case["derived_key_hex"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_digest(case):
    g = case["group"]
    # Independently: SHA-256 of the documented text, first 8 bytes.
    canon = sorted(str(ipaddress.ip_interface(a)) for a in g["addresses"])
    text = f"meshd-group-v1|{g['group_id']}|{g['advbase_ms']}|{','.join(canon)}"
    assert text == g["digest_text"]
    expected = hashlib.sha256(text.encode()).digest()[:8].hex()
    assert expected == case["fields"]["config_digest"]
    assert config_digest(g["group_id"], g["advbase_ms"], tuple(g["addresses"])).hex() == expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_packet_bytes(case):
    key = bytes.fromhex(case["derived_key_hex"])
    data = apply_mutation(independent_packet(case["fields"], key), case["mutation"])
    assert data.hex() == case["packet_hex"]
    assert len(data) == case["packet_len"]


@pytest.mark.parametrize("case", [c for c in CASES if "ok" in c["expect"]], ids=lambda c: c["name"])
def test_vector_encode(case):
    key = derive_key(bytes.fromhex(case["secret_hex"]), ELECTION_INFO, case["key_id"])
    data = encode_advert(advert_from(case["fields"]), key)
    assert data.hex() == case["packet_hex"]
    assert len(data) == ADVERT_LEN == 72


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_decode(case):
    data = bytes.fromhex(case["packet_hex"])
    ring = ring_for(case)
    if "ok" in case["expect"]:
        assert as_fields(decode_advert(data, ring)) == case["expect"]["ok"]
    else:
        with pytest.raises(AdvertError) as info:
            decode_advert(data, ring)
        assert info.value.reason == case["expect"]["error"]


def test_ipv6_vector_digest_is_canonical():
    case = next(c for c in CASES if c["name"] == "advert_ipv6")
    assert "2001:db8::1/64" in case["group"]["digest_text"]
    assert all(ipaddress.ip_interface(a).version == 6 for a in case["group"]["addresses"])


# ----------------------------------------------------------------- codec properties

SECRET1 = bytes(range(32))
SECRET2 = bytes(range(32, 64))
RING = KeyRing.from_secrets({1: SECRET1, 2: SECRET2}, 1, ELECTION_INFO)
DIGEST = config_digest(1, 1000, ("192.0.2.1/24",))
VALID = Advert(AdvertType.ADVERT, 1, 1, 1000, 0, 0, DIGEST, 1, 1_700_000_000, 1)
VALID_BYTES = encode_advert(VALID, RING.get(1))

adverts = st.builds(
    Advert,
    type=st.sampled_from(AdvertType),
    group_id=st.integers(1, 2**16 - 1),
    node_id=st.integers(1, 2**32 - 1),
    advbase_ms=st.integers(0, 2**32 - 1),
    advskew=st.integers(0, 255),
    demotion=st.integers(0, 2**32 - 1),
    config_digest=st.binary(min_size=8, max_size=8),
    key_id=st.sampled_from([1, 2]),
    epoch=st.integers(0, 2**32 - 1),
    counter=st.integers(1, 2**64 - 1),
)


@given(adverts)
def test_round_trip(advert):
    data = encode_advert(advert, RING.get(advert.key_id))
    assert len(data) == ADVERT_LEN
    assert decode_advert(data, RING) == advert


def test_round_trip_with_both_rotation_keys():
    for kid in (1, 2):
        a = Advert(AdvertType.BOWOUT, 9, 3, 100, 7, 1, DIGEST, kid, 5, 77)
        assert decode_advert(encode_advert(a, RING.get(kid)), RING) == a
    # A receiver that only has key 1 refuses key 2.
    only1 = KeyRing.from_secrets({1: SECRET1}, 1, ELECTION_INFO)
    a2 = Advert(AdvertType.ADVERT, 9, 3, 100, 7, 1, DIGEST, 2, 5, 78)
    with pytest.raises(AdvertError) as info:
        decode_advert(encode_advert(a2, RING.get(2)), only1)
    assert info.value.reason == "unknown key"


def test_mac_under_wrong_secret_is_bad_mac():
    other = KeyRing.from_secrets({1: bytes(32)}, 1, ELECTION_INFO)
    with pytest.raises(AdvertError) as info:
        decode_advert(VALID_BYTES, other)
    assert info.value.reason == "bad mac"


@pytest.mark.parametrize("bit", range(ADVERT_LEN * 8))
def test_every_single_bit_flip_is_rejected(bit):
    data = bytearray(VALID_BYTES)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(AdvertError) as info:
        decode_advert(bytes(data), RING)
    offset = bit // 8
    if offset == 0:
        assert info.value.reason == "bad version"
    elif offset == 13:   # key id 1 with one bit flipped is never 2: no such key
        assert info.value.reason == "unknown key"
    else:
        assert info.value.reason == "bad mac"


@settings(max_examples=500)
@given(st.binary(min_size=0, max_size=200))
def test_random_bytes_raise_only_advert_error(data):
    try:
        decode_advert(data, RING)
    except AdvertError as e:
        assert e.reason in {"truncated", "bad length", "bad version", "unknown key", "bad mac"}


@settings(max_examples=500)
@given(st.binary(min_size=ADVERT_LEN, max_size=ADVERT_LEN))
def test_random_full_length_bytes_raise_only_advert_error(data):
    try:
        decode_advert(data, RING)
    except AdvertError:
        pass


@settings(max_examples=500)
@given(st.binary(min_size=40, max_size=40), st.sampled_from([1, 2]))
def test_authenticated_random_headers_decode_or_raise_advert_error(header, kid):
    """A header with a valid MAC reaches the field checks; they raise only AdvertError."""
    header = bytes([1]) + header[1:13] + bytes([kid]) + header[14:]
    data = header + hmac.new(RING.get(kid), header, hashlib.sha256).digest()
    try:
        a = decode_advert(data, RING)
    except AdvertError as e:
        assert e.reason in {"bad type", "bad flags", "bad id", "bad counter"}
    else:
        assert a.node_id and a.group_id and a.counter and a.type in AdvertType


# ----------------------------------------------------------------- config digest

v4 = st.builds(lambda n, p: f"{ipaddress.IPv4Address(n)}/{p}",
               st.integers(1, 2**32 - 2), st.integers(8, 32))
v6 = st.builds(lambda n, p: f"{ipaddress.IPv6Address(n)}/{p}",
               st.integers(1, 2**128 - 2), st.integers(16, 128))


@given(st.lists(st.one_of(v4, v6), min_size=1, max_size=8, unique=True), st.randoms())
def test_config_digest_independent_of_address_order(addrs, rnd):
    shuffled = list(addrs)
    rnd.shuffle(shuffled)
    assert config_digest(5, 200, tuple(addrs)) == config_digest(5, 200, tuple(shuffled))


def test_config_digest_normalises_notation_and_covers_what_peers_share():
    base = config_digest(1, 1000, ("2001:db8::1/64", "192.0.2.1/24"))
    assert config_digest(1, 1000, ("192.0.2.1/24", "2001:DB8:0:0::1/64")) == base
    assert config_digest(1, 1000, ("192.0.2.1", "2001:db8::1/64")) == \
        config_digest(1, 1000, ("192.0.2.1/32", "2001:db8::1/64"))
    assert config_digest(2, 1000, ("2001:db8::1/64", "192.0.2.1/24")) != base      # group id
    assert config_digest(1, 999, ("2001:db8::1/64", "192.0.2.1/24")) != base       # advbase
    assert config_digest(1, 1000, ("2001:db8::1/64", "192.0.2.1/25")) != base      # prefix
    assert config_digest(1, 1000, ("2001:db8::1/64",)) != base                     # address set
    assert len(base) == 8
