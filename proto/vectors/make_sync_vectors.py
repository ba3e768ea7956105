#!/usr/bin/env python3
"""Write proto/vectors/sync.json: golden vectors for the sync frames (proto/sync.md).

This script implements the format from proto/sync.md on its own (struct,
msgpack, and the `cryptography` HKDF and AES-GCM); it does not import meshd,
so the vectors check the implementation against the specification rather
than against itself.  It is deterministic: running it twice gives the same
file, byte for byte.  Run it from anywhere:

    python3 proto/vectors/make_sync_vectors.py          # rewrite the file
    python3 proto/vectors/make_sync_vectors.py --check  # exit 1 if it differs

Each case is self-contained: the sender's key id, secret, sync key and frame
key, the header fields, the body (JSON: arrays, integers, null, and
{"hex": ...} for msgpack bin), the msgpack plaintext, the nonce and the
frame; the keys the receiver holds; and either the decoded body
(`expect.ok`) or the reject reason (`expect.error`).  A case with a
`mutation` had its frame damaged after sealing: `truncate` keeps the first N
bytes, `xor` flips bits of one byte (a negative offset counts from the end).
A case with `plaintext_hex_override` sealed those bytes instead of the packed
body (a peer bug, authenticated).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OUT = Path(__file__).resolve().parent / "sync.json"

# proto/sync.md, section 2: 36-byte header, network byte order.
HEADER = struct.Struct("!BBBBII16sQ")
VERSION = 2
TYPES = {"DATA": 1, "STATUS": 2, "HEARTBEAT": 3, "DIGEST": 4, "RESYNC_REQUEST": 5,
         "REPAIR_REQUEST": 6, "BULK_INFO": 8}

# proto/sync.md, section 3.
CLUSTER_SALT = b"meshd cluster key v1"
SYNC_INFO = b"meshd sync aead key-id "
FRAME_SALT = b"meshd sync frame v2"
FRAME_INFO = b"meshd sync frame key"

SECRETS = {
    1: bytes(range(0x00, 0x20)),
    2: bytes(range(0x20, 0x40)),
    3: bytes(range(0x40, 0x60)),   # held by the sender only: "unknown key"
}
RECEIVER_KEY_IDS = (1, 2)
# The senders' boot ids (random per start in meshd; fixed here).
BOOT_IDS = {0: bytes(16), 1: bytes(range(0xa0, 0xb0)), 2: bytes(range(0xb0, 0xc0)),
            3: bytes(range(0xc0, 0xd0))}


def sync_key(key_id: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=CLUSTER_SALT,
                info=SYNC_INFO + bytes([key_id])).derive(SECRETS[key_id])


def frame_key(key_id: int, sender: int, epoch: int, boot_id: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=FRAME_SALT,
                info=FRAME_INFO + struct.pack("!II", sender, epoch) + boot_id
                ).derive(sync_key(key_id))


def nonce(sender: int, counter: int) -> bytes:
    return struct.pack("!IQ", sender, counter)


def from_json(v):
    """The JSON form of a body -> the Python value msgpack packs (bin for {"hex"})."""
    if isinstance(v, dict):
        return bytes.fromhex(v["hex"])
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def hx(b: bytes) -> dict:
    return {"hex": b.hex()}


def case(name: str, description: str, ftype: str | int, body, *, sender=1, epoch=1_700_000_000,
         counter=1, key_id=1, version=VERSION, flags=0, error: str | None = None,
         mutation: dict | None = None, plaintext_override: bytes | None = None) -> dict:
    kind = TYPES[ftype] if isinstance(ftype, str) else ftype
    boot_id = BOOT_IDS[sender]
    header = HEADER.pack(version, kind, key_id, flags, sender, epoch, boot_id, counter)
    plaintext = msgpack.packb(from_json(body), use_bin_type=True) if plaintext_override is None \
        else plaintext_override
    fk = frame_key(key_id, sender, epoch, boot_id)
    n = nonce(sender, counter)
    frame = header + AESGCM(fk).encrypt(n, plaintext, header)
    if mutation:
        if "truncate" in mutation:
            frame = frame[:mutation["truncate"]]
        if "xor" in mutation:
            b = bytearray(frame)
            b[mutation["xor"]["offset"]] ^= mutation["xor"]["mask"]
            frame = bytes(b)
    out = {
        "name": name,
        "description": description,
        "header": {"version": version, "type": ftype if isinstance(ftype, str) else kind,
                   "key_id": key_id, "flags": flags, "sender": sender, "epoch": epoch,
                   "boot_id_hex": boot_id.hex(), "counter": counter},
        "body": body,
        "secret_hex": SECRETS[key_id].hex(),
        "sync_key_hex": sync_key(key_id).hex(),
        "frame_key_hex": fk.hex(),
        "nonce_hex": n.hex(),
        "header_hex": header.hex(),
        "plaintext_hex": plaintext.hex(),
        "mutation": mutation,
        "frame_hex": frame.hex(),
        "frame_len": len(frame),
        "receiver_keys": [{"key_id": k, "secret_hex": SECRETS[k].hex()} for k in RECEIVER_KEY_IDS],
        "expect": {"error": error} if error else {"ok": body},
    }
    if plaintext_override is not None:
        out["plaintext_hex_override"] = plaintext_override.hex()
    return out


K1 = bytes.fromhex("0611c0a8000a0a000001") + bytes([0x01, 0xbb, 0x9c, 0x40])   # a 14-byte key
K2 = bytes.fromhex("0611") + bytes(range(32)) + bytes([0x00, 0x50, 0xd4, 0x31])  # a 38-byte key
A1 = bytes(range(0x80, 0x80 + 96))                                               # 96-byte attrs
A2 = bytes((7 * i) & 0xFF for i in range(260))                                    # 260: bin16


def build() -> dict:
    data_mcast = [0, 0, 17, [[hx(K1), hx(A1)], [hx(K2), hx(A2)], [hx(K1[::-1]), None]], [], []]
    cases = [
        case("data_mcast", "DATA on the multicast stream (target 0), seq 17: two upserts (the "
             "second with 260-byte attrs, msgpack bin16) and one flow that is gone (nil).",
             "DATA", data_mcast, sender=1, epoch=1_700_000_000, counter=42),
        case("data_resend", "DATA on the direct stream to node 2 (epoch 1700000100), seq 5: "
             "current state of one flow, superseding multicast seqs 17..19 (no deps) and direct "
             "seq 3 (deps: direct seqs 1..2 must be resolved first).",
             "DATA", [2, 1_700_000_100, 5, [[hx(K1), hx(A1)]],
                      [[0, 17, 19, []], [1, 3, 3, [[1, 2]]]], []],
             sender=1, counter=43),
        case("data_bulk_begin", "DATA direct, BULK_BEGIN: answers request 1, instance 44 (its "
             "own counter), covers multicast seqs <= 20 and direct seqs <= 5.",
             "DATA", [2, 1_700_000_100, 6, [], [], [[1, 1, 44, 20, 5]]], sender=1, counter=44),
        case("data_sweep", "DATA direct: the records of buckets 3 and 4, then their SWEEPs "
             "(start 45 = this frame's counter, instance 44).",
             "DATA", [2, 1_700_000_100, 7, [[hx(K2), hx(A1)]], [],
                      [[2, 3, 45, 44], [2, 4, 45, 44]]], sender=1, counter=45),
        case("status", "STATUS from node 2 about node 1's epoch 1700000000: multicast acked up "
             "to 16 of 40, asking for 17, 19, 20 and 27; direct acked up to 7 of 7.",
             "STATUS", [1_700_000_000, [[0, 16, 40, 17, hx(bytes([0b10110000, 0b00000010]))],
                                        [1, 7, 7, 0, hx(b"")]]],
             sender=2, epoch=1_700_000_100, counter=9),
        case("heartbeat", "HEARTBEAT: multicast high 40; direct high 7 to node 2 (epoch "
             "1700000100) and 1 to node 3; ask = 1 (please send a STATUS); echoes the boot "
             "ids of node 2 and node 3 (their proofs of liveness, section 3.1).",
             "HEARTBEAT", [40, [[2, 1_700_000_100, 7], [3, 1_700_000_300, 1]], 1,
                           [[2, hx(BOOT_IDS[2])], [3, hx(BOOT_IDS[3])]]],
             sender=1, counter=46),
        case("digest", "DIGEST of buckets 128..131 (4 x 8 bytes), with the heartbeat fields.",
             "DIGEST", [40, [[2, 1_700_000_100, 7]], 128,
                        hx(bytes.fromhex("0000000000000000" "0123456789abcdef"
                                         "fedcba9876543210" "8000000000000001"))],
             sender=1, counter=47),
        case("resync_request", "RESYNC_REQUEST id 1 from node 2 (it started).",
             "RESYNC_REQUEST", [1], sender=2, epoch=1_700_000_100, counter=1),
        case("repair_request", "REPAIR_REQUEST from node 2 for node 1's epoch 1700000000: "
             "buckets 0, 7 and 255 (32-byte bitmap, MSB first).",
             "REPAIR_REQUEST", [1_700_000_000,
                                hx(bytes([0b10000001]) + bytes(30) + bytes([0b00000001]))],
             sender=2, epoch=1_700_000_100, counter=10),
        case("bulk_info", "BULK_INFO to node 2: the bulk answering its request 1 (instance 44, "
             "the BULK_BEGIN frame's counter) holds 200000 entries; sized deadline (7.4).",
             "BULK_INFO", [1, 44, 200_000], sender=1, counter=48),
        case("key2", "A heartbeat sealed under key id 2 (rotation; the receiver holds 1 and 2).",
             "HEARTBEAT", [0, [], 0, []], sender=3, epoch=7, counter=2**40 + 5, key_id=2),
        # ---- rejects, in the order of proto/sync.md, section 9
        case("empty", "No bytes at all.", "HEARTBEAT", [0, [], 0, []], error="truncated",
             mutation={"truncate": 0}),
        case("truncated", "51 bytes: one short of header + tag.", "HEARTBEAT", [0, [], 0, []],
             error="truncated", mutation={"truncate": 51}),
        case("bad_version", "Version 1 (the 20-byte header without a boot id), sealed as "
             "version 2 otherwise: refused before the key is looked up.",
             "HEARTBEAT", [0, [], 0, []], version=1, error="bad version"),
        case("unknown_key", "Key id 3, sealed under key 3; the receiver holds 1 and 2.",
             "HEARTBEAT", [0, [], 0, []], key_id=3, error="unknown key"),
        case("bad_tag", "The last tag byte flipped.", "HEARTBEAT", [0, [], 0, []], error="bad tag",
             mutation={"xor": {"offset": -1, "mask": 0x01}}),
        case("bad_tag_counter", "The counter (associated data, and the nonce) changed after "
             "sealing.", "HEARTBEAT", [0, [], 0, []], error="bad tag",
             mutation={"xor": {"offset": 35, "mask": 0x02}}),
        case("bad_tag_sender", "The sender changed after sealing: another frame key.",
             "HEARTBEAT", [0, [], 0, []], error="bad tag",
             mutation={"xor": {"offset": 7, "mask": 0x04}}),
        case("bad_tag_boot_id", "The boot id changed after sealing: another frame key.",
             "HEARTBEAT", [0, [], 0, []], error="bad tag",
             mutation={"xor": {"offset": 12, "mask": 0x80}}),
        case("bad_type", "Type 9, sealed correctly.", 9, [0, [], 0, []], error="bad type"),
        case("bad_flags", "Flags 0x01, sealed correctly.", "HEARTBEAT", [0, [], 0, []], flags=1,
             error="bad flags"),
        case("bad_sender", "Sender 0, sealed correctly.", "HEARTBEAT", [0, [], 0, []], sender=0,
             error="bad id"),
        case("bad_counter", "Counter 0, sealed correctly: counters start at 1.", "HEARTBEAT",
             [0, [], 0, []], counter=0, error="bad counter"),
        case("bad_body_msgpack", "A sealed body that is not msgpack (0xc1 is never used).",
             "HEARTBEAT", [0, [], 0, []], plaintext_override=b"\xc1", error="bad body"),
        case("bad_body_shape", "DATA with five fields instead of six.", "DATA",
             [0, 0, 1, [], []], error="bad body"),
        case("bad_body_record", "DATA whose record has an empty attrs bin (gone is nil, not "
             "empty).", "DATA", [0, 0, 1, [[hx(K1), hx(b"")]], [], []], error="bad body"),
        case("bad_body_mcast_control", "A SWEEP on the multicast stream (controls only ride "
             "on direct frames).", "DATA", [0, 0, 1, [], [], [[2, 1, 5, 0]]], error="bad body"),
        case("bad_body_status_bitmap", "STATUS asking for a seq at or below its own "
             "cumulative ack.", "STATUS", [1_700_000_000, [[0, 16, 40, 16, hx(b"\x80")]]],
             sender=2, error="bad body"),
        case("bad_body_bulk_info", "BULK_INFO for request id 0 (ids start at 1).", "BULK_INFO",
             [0, 44, 10], error="bad body"),
        case("bad_body_echo", "HEARTBEAT whose echo is a 15-byte boot id.", "HEARTBEAT",
             [0, [], 0, [[2, hx(BOOT_IDS[2][:15])]]], error="bad body"),
    ]
    return {
        "format": "meshd sync frames, version 2 (proto/sync.md)",
        "generator": "proto/vectors/make_sync_vectors.py",
        "header": "!BBBBII16sQ: version, type, key id, flags, sender, epoch, boot id, counter "
                  "(36 bytes)",
        "aead": "AES-256-GCM, 16-byte tag appended; associated data = the 36-byte header",
        "sync_key": {"hash": "SHA-256", "length": 32, "salt_hex": CLUSTER_SALT.hex(),
                     "info": "'meshd sync aead key-id ' || one octet key id"},
        "frame_key": {"hash": "SHA-256", "length": 32, "ikm": "the sync key",
                      "salt_hex": FRAME_SALT.hex(),
                      "info": "'meshd sync frame key' || sender u32 || epoch u32 || boot id "
                              "(16 bytes)"},
        "nonce": "sender u32 || counter u64 (12 bytes)",
        "cases": cases,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(build()['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
