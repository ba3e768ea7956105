#!/usr/bin/env python3
"""Write proto/vectors/election.json: golden vectors for the election advert.

This script implements the format from proto/election.md on its own (struct,
hmac, hashlib and the `cryptography` HKDF); it does not import meshd, so the
vectors check the implementation against the specification rather than
against itself.  It is deterministic: running it twice gives the same file,
byte for byte.  Run it from anywhere:

    python3 proto/vectors/make_election_vectors.py          # rewrite the file
    python3 proto/vectors/make_election_vectors.py --check  # exit 1 if it differs

Each case is self-contained: the sender's key id, secret and derived key, the
fields, the packet, the keys the receiver holds, and either the decoded
fields (`expect.ok`) or the reject reason (`expect.error`).  A case with a
`mutation` had its packet damaged after encoding: `truncate` keeps the first
N bytes, `append` adds bytes, `xor` flips bits of one byte.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OUT = Path(__file__).resolve().parent / "election.json"

# proto/election.md, "Layout": network byte order, no padding, 40 + 32 bytes.
HEADER = struct.Struct("!BBHIIBBHI8sIQ")
VERSION = 1
TYPES = {"ADVERT": 1, "BOWOUT": 2}

# proto/election.md, "Keys".
HKDF_SALT = b"meshd cluster key v1"
ELECTION_INFO = b"meshd election hmac-sha256"

# Test secrets: fixed, obviously not random, 32 bytes each.
SECRETS = {
    1: bytes(range(0x00, 0x20)),
    2: bytes(range(0x20, 0x40)),
    3: bytes(range(0x40, 0x60)),   # held by the sender only: "unknown key"
}
RECEIVER_KEY_IDS = (1, 2)


def info_for(key_id: int) -> bytes:
    return ELECTION_INFO + b" key-id " + bytes([key_id])


def derive(key_id: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT,
                info=info_for(key_id)).derive(SECRETS[key_id])


def digest_text(group_id: int, advbase_ms: int, addresses: list[str]) -> str:
    addrs = sorted(str(ipaddress.ip_interface(a)) for a in addresses)
    return f"meshd-group-v1|{group_id}|{advbase_ms}|{','.join(addrs)}"


def digest(group_id: int, advbase_ms: int, addresses: list[str]) -> bytes:
    return hashlib.sha256(digest_text(group_id, advbase_ms, addresses).encode()).digest()[:8]


def packet(f: dict, key: bytes) -> bytes:
    kind = TYPES[f["type"]] if isinstance(f["type"], str) else f["type"]
    header = HEADER.pack(f["version"], kind, f["group_id"], f["node_id"],
                         f["advbase_ms"], f["advskew"], f["key_id"], f["flags"],
                         f["demotion"], bytes.fromhex(f["config_digest"]), f["epoch"],
                         f["counter"])
    return header + hmac.new(key, header, hashlib.sha256).digest()


def fields(*, type: str | int = "ADVERT", group_id=1, node_id=1, advbase_ms=1000, advskew=0,
           key_id=1, demotion=0, epoch=1_700_000_000, counter=1, version=VERSION,
           flags=0, addresses=("192.0.2.1/24", "198.51.100.1/24")) -> tuple[dict, dict]:
    addresses = list(addresses)
    group = {"group_id": group_id, "advbase_ms": advbase_ms, "addresses": addresses,
             "digest_text": digest_text(group_id, advbase_ms, addresses)}
    f = {"version": version, "type": type, "group_id": group_id, "node_id": node_id,
         "advbase_ms": advbase_ms, "advskew": advskew, "key_id": key_id, "flags": flags,
         "demotion": demotion,
         "config_digest": digest(group_id, advbase_ms, addresses).hex(),
         "epoch": epoch, "counter": counter}
    return f, group


def decoded(f: dict) -> dict:
    """What a decoder returns: every field but version and flags (always 1 and 0)."""
    return {k: v for k, v in f.items() if k not in ("version", "flags")}


def case(name: str, description: str, *, error: str | None = None,
         mutation: dict | None = None, **kw) -> dict:
    f, group = fields(**kw)
    kid = f["key_id"]
    key = derive(kid)
    data = packet(f, key)
    if mutation:
        if "truncate" in mutation:
            data = data[:mutation["truncate"]]
        if "append" in mutation:
            data = data + bytes.fromhex(mutation["append"])
        if "xor" in mutation:
            b = bytearray(data)
            b[mutation["xor"]["offset"]] ^= mutation["xor"]["mask"]
            data = bytes(b)
    return {
        "name": name,
        "description": description,
        "key_id": kid,
        "secret_hex": SECRETS[kid].hex(),
        "hkdf_info_hex": info_for(kid).hex(),
        "derived_key_hex": key.hex(),
        "group": group,
        "fields": f,
        "mutation": mutation,
        "packet_hex": data.hex(),
        "packet_len": len(data),
        "receiver_keys": [{"key_id": k, "secret_hex": SECRETS[k].hex()} for k in RECEIVER_KEY_IDS],
        "expect": {"error": error} if error else {"ok": decoded(f)},
    }


def build() -> dict:
    cases = [
        case("advert", "A plain advert: IPv4 group 1, node 1, key id 1, advskew 0, no demotion."),
        case("advert_busy", "Every multi-byte field non-trivial, to catch byte-order mistakes.",
             group_id=0x1234, node_id=0x0A0B0C0D, advbase_ms=250, advskew=100,
             demotion=0x01020304, epoch=0x65A0B1C2, counter=0x0102030405060708,
             addresses=("10.0.0.10/24", "10.0.0.2/24", "10.1.0.1/16")),
        case("bowout", "A bow-out from the master of group 7 (type 2).",
             type="BOWOUT", group_id=7, node_id=2, advskew=50, counter=42,
             addresses=("203.0.113.1/28",)),
        case("advert_key2", "Key rotation: the sender uses key id 2; the receiver holds 1 and 2.",
             key_id=2, node_id=2, counter=9),
        case("advert_ipv6", "An IPv6-only group: the digest covers canonical (RFC 5952) forms.",
             group_id=20, advbase_ms=100,
             addresses=("2001:DB8:0:0::1/64", "fe80::1/64"), counter=3),
        case("bad_mac", "The last MAC byte flipped.", error="bad mac",
             mutation={"xor": {"offset": 71, "mask": 0x01}}),
        case("bad_mac_field", "A header byte (advskew) changed after the MAC was computed.",
             error="bad mac", mutation={"xor": {"offset": 12, "mask": 0x80}}),
        case("truncated", "The last byte missing: 71 bytes.", error="truncated",
             mutation={"truncate": 71}),
        case("empty", "No bytes at all.", error="truncated", mutation={"truncate": 0}),
        case("too_long", "One byte too many: 73 bytes.", error="bad length",
             mutation={"append": "00"}),
        case("wrong_version", "Version 2 with a valid MAC: refused before the key is looked up.",
             error="bad version", version=2),
        case("unknown_key", "Key id 3 with a valid MAC under key 3; the receiver holds 1 and 2.",
             error="unknown key", key_id=3),
        case("bad_type", "Type 3 with a valid MAC.", error="bad type", type=3),
        case("bad_flags", "Flags 0x0001 with a valid MAC.", error="bad flags", flags=1),
        case("bad_node_id", "Node id 0 with a valid MAC.", error="bad id", node_id=0),
        case("bad_group_id", "Group id 0 with a valid MAC.", error="bad id", group_id=0),
        case("bad_counter", "Counter 0 with a valid MAC: counters start at 1.",
             error="bad counter", counter=0),
    ]
    return {
        "format": "meshd election advert, version 1 (proto/election.md)",
        "generator": "proto/vectors/make_election_vectors.py",
        "layout": "!BBHIIBBHI8sIQ + HMAC-SHA256(32)",
        "hkdf": {"hash": "SHA-256", "length": 32, "salt_hex": HKDF_SALT.hex(),
                 "info": "'meshd election hmac-sha256 key-id ' || one octet key id"},
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
