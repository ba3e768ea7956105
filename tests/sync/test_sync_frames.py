"""The sync frame codec against proto/sync.md and its golden vectors.

Keys, nonces and frames are recomputed here from the documented constants
(HKDF and AES-GCM via `cryptography` directly, struct, msgpack), not through
meshd, so a change of the format in meshd shows up as a failure rather than
a silent re-definition.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.crypto import SYNC_INFO, KeyRing, derive_key
from meshd.sync.frames import (HEADER_LEN, OVERHEAD, FrameError, FrameOpener, FrameSealer,
                               FrameType, decode_body, decode_frame, encode_frame, frame_key,
                               nonce_for, packb, parse_header)

VECTORS_PATH = Path(__file__).resolve().parents[2] / "proto" / "vectors" / "sync.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
CASES = VECTORS["cases"]

# The documented constants (proto/sync.md, sections 2 and 3), written out on purpose.
DOC_HEADER = struct.Struct("!BBBBII16sQ")
DOC_CLUSTER_SALT = b"meshd cluster key v1"
DOC_SYNC_INFO = b"meshd sync aead key-id "
DOC_FRAME_SALT = b"meshd sync frame v2"
DOC_FRAME_INFO = b"meshd sync frame key"
DOC_TYPES = {"DATA": 1, "STATUS": 2, "HEARTBEAT": 3, "DIGEST": 4, "RESYNC_REQUEST": 5,
             "REPAIR_REQUEST": 6, "BULK_INFO": 8}

SECRET1 = bytes(range(32))
SECRET2 = bytes(range(32, 64))
RING = KeyRing.from_secrets({1: SECRET1, 2: SECRET2}, 1, SYNC_INFO)


def doc_sync_key(secret: bytes, key_id: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=DOC_CLUSTER_SALT,
                info=DOC_SYNC_INFO + bytes([key_id])).derive(secret)


def doc_frame_key(sync_key: bytes, sender: int, epoch: int, boot_id: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=DOC_FRAME_SALT,
                info=DOC_FRAME_INFO + struct.pack("!II", sender, epoch) + boot_id).derive(sync_key)


def from_json(v):
    if isinstance(v, dict):
        return bytes.fromhex(v["hex"])
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def to_json(v):
    """A decoded body (tuples, bytes) -> the JSON form of the vectors."""
    if isinstance(v, bytes):
        return {"hex": v.hex()}
    if isinstance(v, (tuple, list)):
        return [to_json(x) for x in v]
    return v


def ring_for(case: dict) -> KeyRing:
    secrets = {k["key_id"]: bytes.fromhex(k["secret_hex"]) for k in case["receiver_keys"]}
    return KeyRing.from_secrets(secrets, min(secrets), SYNC_INFO)


def apply_mutation(data: bytes, mutation: dict | None) -> bytes:
    if not mutation:
        return data
    if "truncate" in mutation:
        data = data[:mutation["truncate"]]
    if "xor" in mutation:
        b = bytearray(data)
        b[mutation["xor"]["offset"]] ^= mutation["xor"]["mask"]
        data = bytes(b)
    return data


def independent_frame(case: dict) -> bytes:
    h = case["header"]
    kind = DOC_TYPES.get(h["type"], h["type"])
    header = DOC_HEADER.pack(h["version"], kind, h["key_id"], h["flags"], h["sender"], h["epoch"],
                             bytes.fromhex(h["boot_id_hex"]), h["counter"])
    if "plaintext_hex_override" in case:
        plaintext = bytes.fromhex(case["plaintext_hex_override"])
    else:
        plaintext = msgpack.packb(from_json(case["body"]), use_bin_type=True)
    secret = bytes.fromhex(case["secret_hex"])
    fk = doc_frame_key(doc_sync_key(secret, h["key_id"]), h["sender"], h["epoch"],
                       bytes.fromhex(h["boot_id_hex"]))
    nonce = struct.pack("!IQ", h["sender"], h["counter"])
    return apply_mutation(header + AESGCM(fk).encrypt(nonce, plaintext, header), case["mutation"])


# ----------------------------------------------------------------- golden vectors


def test_vectors_cover_every_type_and_reason():
    types = {c["header"]["type"] for c in CASES if "ok" in c["expect"]}
    assert set(DOC_TYPES) <= types
    errors = {c["expect"].get("error") for c in CASES} - {None}
    assert {"truncated", "bad version", "unknown key", "bad tag", "bad type", "bad flags",
            "bad id", "bad counter", "bad body"} <= errors


def test_vectors_file_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location(
        "make_sync_vectors", VECTORS_PATH.parent / "make_sync_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.render() == VECTORS_PATH.read_text()
    assert mod.render() == mod.render()   # deterministic


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_keys(case):
    secret = bytes.fromhex(case["secret_hex"])
    h = case["header"]
    sk = doc_sync_key(secret, h["key_id"])
    assert sk.hex() == case["sync_key_hex"]
    assert derive_key(secret, SYNC_INFO, h["key_id"]).hex() == case["sync_key_hex"]
    boot_id = bytes.fromhex(h["boot_id_hex"])
    assert doc_frame_key(sk, h["sender"], h["epoch"], boot_id).hex() == case["frame_key_hex"]
    assert frame_key(sk, h["sender"], h["epoch"], boot_id).hex() == case["frame_key_hex"]
    assert nonce_for(h["sender"], h["counter"]).hex() == case["nonce_hex"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_frame_bytes(case):
    data = independent_frame(case)
    assert data.hex() == case["frame_hex"]
    assert len(data) == case["frame_len"]
    if not case["mutation"]:
        assert data[:HEADER_LEN].hex() == case["header_hex"]
        assert len(data) == OVERHEAD + len(bytes.fromhex(case["plaintext_hex"]))


@pytest.mark.parametrize("case", [c for c in CASES if "ok" in c["expect"]], ids=lambda c: c["name"])
def test_vector_encode(case):
    """meshd's encoder (packb and seal) produces exactly the vector."""
    h = case["header"]
    secret = bytes.fromhex(case["secret_hex"])
    ring = KeyRing.from_secrets({h["key_id"]: secret}, h["key_id"], SYNC_INFO)
    body = from_json(case["body"])
    assert packb(body).hex() == case["plaintext_hex"]
    boot_id = bytes.fromhex(h["boot_id_hex"])
    data = encode_frame(ring, h["sender"], h["epoch"], h["counter"], DOC_TYPES[h["type"]], body,
                        boot_id=boot_id)
    assert data.hex() == case["frame_hex"]
    sealer = FrameSealer(ring, h["sender"], h["epoch"], boot_id)
    sealer.counter = h["counter"] - 1
    assert sealer.seal(DOC_TYPES[h["type"]], packb(body)).hex() == case["frame_hex"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_decode(case):
    data = bytes.fromhex(case["frame_hex"])
    ring = ring_for(case)
    if "ok" in case["expect"]:
        frame = decode_frame(data, ring)
        h = case["header"]
        assert frame.header.type == DOC_TYPES[h["type"]]
        assert (frame.header.sender, frame.header.epoch, frame.header.boot_id.hex(),
                frame.header.counter, frame.header.key_id) == \
            (h["sender"], h["epoch"], h["boot_id_hex"], h["counter"], h["key_id"])
        assert to_json(frame.body) == case["expect"]["ok"]
    else:
        with pytest.raises(FrameError) as info:
            decode_frame(data, ring)
        assert info.value.reason == case["expect"]["error"]


# ----------------------------------------------------------------- codec properties

BODIES = [
    (FrameType.DATA, (0, 0, 1, ((b"k", b"a"), (b"k2", None)), (), ())),
    (FrameType.DATA, (2, 5, 9, (), ((0, 1, 3, ()), (1, 2, 2, ((1, 1),))), ((1, 1, 7, 0, 0),))),
    (FrameType.STATUS, (5, ((0, 3, 9, 4, b"\x80"), (1, 0, 0, 0, b"")))),
    (FrameType.HEARTBEAT, (3, ((2, 5, 1),), 0, ((2, bytes(range(16))),))),
    (FrameType.DIGEST, (3, (), 250, bytes(48))),
    (FrameType.RESYNC_REQUEST, (4,)),
    (FrameType.REPAIR_REQUEST, (5, bytes(32))),
]


@pytest.mark.parametrize("ftype, body", BODIES)
def test_round_trip(ftype, body):
    data = encode_frame(RING, 7, 11, 13, ftype, body)
    frame = decode_frame(data, RING)
    assert frame.header.type == ftype and frame.body == body


def test_key_rotation_and_unknown_key():
    data = encode_frame(RING, 7, 11, 13, FrameType.RESYNC_REQUEST, (1,), key_id=2)
    assert decode_frame(data, RING).header.key_id == 2
    only1 = KeyRing.from_secrets({1: SECRET1}, 1, SYNC_INFO)
    with pytest.raises(FrameError) as info:
        decode_frame(data, only1)
    assert info.value.reason == "unknown key"


def test_sealer_never_repeats_a_nonce():
    boot = bytes(range(16))
    sealer = FrameSealer(RING, 3, 99, boot)
    nonces = set()
    for _ in range(1000):
        header = parse_header(sealer.seal(FrameType.HEARTBEAT, packb((0, (), 0, ()))))
        assert header.boot_id == boot
        nonces.add(nonce_for(header.sender, header.counter))
    assert len(nonces) == 1000
    # Another start has another frame key altogether: another epoch, or the
    # same epoch (a lost state_dir) with another boot id.
    assert frame_key(RING.send_key, 3, 99, boot) != frame_key(RING.send_key, 3, 100, boot)
    assert frame_key(RING.send_key, 3, 99, boot) != frame_key(RING.send_key, 3, 99, bytes(16))


def test_opener_caches_only_keys_that_opened_something():
    opener = FrameOpener(RING)
    forged = bytearray(encode_frame(RING, 7, 11, 13, FrameType.HEARTBEAT, (0, (), 0, ())))
    forged[-1] ^= 1
    for epoch in range(100):
        bad = bytes(forged[:8]) + struct.pack("!I", epoch) + bytes(forged[12:])
        with pytest.raises(FrameError):
            opener.open(bad, parse_header(bad))
    assert not opener._cache
    good = encode_frame(RING, 7, 11, 14, FrameType.HEARTBEAT, (0, (), 0, ()))
    opener.open(good, parse_header(good))
    assert len(opener._cache) == 1


VALID = encode_frame(RING, 7, 11, 13, FrameType.DATA, (0, 0, 1, ((b"key", b"attrs"),), (), ()))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_frame_error(data):
    try:
        decode_frame(data, RING)
    except FrameError as e:
        assert e.reason
    # Anything that decodes had a valid tag under our keys: with random bytes, never.
    else:  # pragma: no cover
        pytest.fail("random bytes decoded")


@settings(max_examples=300)
@given(st.integers(0, len(VALID) * 8 - 1), st.integers(1, 255))
def test_any_damage_to_a_valid_frame_is_refused(bit, extra):
    b = bytearray(VALID)
    b[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        decode_frame(bytes(b), RING)
    with pytest.raises(FrameError):
        decode_frame(VALID[:extra % len(VALID)], RING)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=8)
    | st.text(max_size=4) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children,
                                                                      max_size=3),
    max_leaves=20)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(FrameType)), msgpack_values)
def test_authentic_garbage_bodies_raise_only_bad_body(ftype, value):
    """A peer with the key but a bug: any msgpack value is refused or well-formed."""
    try:
        body = decode_body(ftype, msgpack.packb(value, use_bin_type=True))
    except FrameError as e:
        assert e.reason == "bad body"
    else:
        assert isinstance(body, tuple)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_authentic_random_plaintext_raises_only_bad_body(plaintext):
    for ftype in FrameType:
        try:
            decode_body(ftype, plaintext)
        except FrameError as e:
            assert e.reason == "bad body"


def test_a_rekeyed_sealer_keeps_its_counter_and_seals_under_the_new_key():
    """Key rotation by reload: the counter is the nonce and must run on (1 -> 2 -> 1
    would otherwise reuse nonces of this epoch under key 1)."""
    both = {1: b"a" * 32, 2: b"b" * 32}
    sealer = FrameSealer(KeyRing.from_secrets(both, 1, SYNC_INFO), 7, 9, bytes(16))
    frames = [sealer.seal(FrameType.HEARTBEAT, packb((0, (), 0, ())))]
    sealer.rekey(KeyRing.from_secrets(both, 2, SYNC_INFO))
    frames.append(sealer.seal(FrameType.HEARTBEAT, packb((0, (), 0, ()))))
    sealer.rekey(KeyRing.from_secrets(both, 1, SYNC_INFO))
    frames.append(sealer.seal(FrameType.HEARTBEAT, packb((0, (), 0, ()))))
    headers = [parse_header(f) for f in frames]
    assert [(h.key_id, h.counter) for h in headers] == [(1, 1), (2, 2), (1, 3)]
    for kid, f in zip((1, 2, 1), frames):
        only = KeyRing.from_secrets({kid: both[kid]}, kid, SYNC_INFO)
        assert decode_frame(f, only).header.counter == parse_header(f).counter


def test_a_rekeyed_opener_forgets_keys_that_are_gone_or_changed():
    old = KeyRing.from_secrets({1: b"a" * 32, 2: b"b" * 32}, 1, SYNC_INFO)
    opener = FrameOpener(old)
    f1 = encode_frame(old, 7, 9, 1, FrameType.HEARTBEAT, (0, (), 0, ()), key_id=1)
    f2 = encode_frame(old, 7, 9, 2, FrameType.HEARTBEAT, (0, (), 0, ()), key_id=2)
    for f in (f1, f2):
        decode_frame(f, old, opener)                  # both cached now
    opener.rekey(KeyRing.from_secrets({2: b"c" * 32}, 2, SYNC_INFO))
    for f, reason in ((f1, "unknown key"), (f2, "bad tag")):
        with pytest.raises(FrameError) as e:
            decode_frame(f, opener.keys, opener)
        assert e.value.reason == reason
