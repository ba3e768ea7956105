"""The election advert: a fixed 72-byte layout, HMAC-SHA256 over every field.

See proto/election.md for the layout, the carrier and the golden vectors.
`decode_advert` raises only AdvertError; its `reason` is the counter name the
daemon uses for rejected adverts.

Must not: check replay, the group's settings or the sender's history
(ElectionCore.receive does, after the MAC), or trust any field before the MAC
is checked.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import struct
from dataclasses import dataclass

from ..crypto import KeyRing, constant_time_equal, hmac_sha256

VERSION = 1
# version, type, group, node, advbase_ms, advskew, key_id, flags, demotion,
# config digest, epoch, counter
HEADER = struct.Struct("!BBHIIBBHI8sIQ")
MAC_LEN = 32
ADVERT_LEN = HEADER.size + MAC_LEN  # 72
DIGEST_LEN = 8


class AdvertType(enum.IntEnum):
    ADVERT = 1
    BOWOUT = 2   # the sender is leaving MASTER: backups take over at once


class AdvertError(Exception):
    """An advert that must be dropped; `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Advert:
    type: AdvertType
    group_id: int
    node_id: int
    advbase_ms: int
    advskew: int
    demotion: int
    config_digest: bytes
    key_id: int
    epoch: int
    counter: int


def config_digest(group_id: int, advbase_ms: int, addresses: tuple[str, ...]) -> bytes:
    """Digest of what every member of a group must agree on.

    advskew is per node and the interface name is local, so neither is in it.
    Addresses are normalised and sorted so their order in the file is irrelevant.
    """
    addrs = sorted(str(ipaddress.ip_interface(a)) for a in addresses)
    text = f"meshd-group-v1|{group_id}|{advbase_ms}|{','.join(addrs)}"
    return hashlib.sha256(text.encode()).digest()[:DIGEST_LEN]


def encode_advert(advert: Advert, key: bytes) -> bytes:
    header = HEADER.pack(VERSION, advert.type, advert.group_id, advert.node_id,
                         advert.advbase_ms, advert.advskew, advert.key_id, 0,
                         advert.demotion, advert.config_digest, advert.epoch,
                         advert.counter)
    return header + hmac_sha256(key, header)


def decode_advert(data: bytes, keys: KeyRing) -> Advert:
    """Check length, version, type, key and MAC; return the advert.

    The MAC is checked before any field is trusted; replay and config checks
    belong to the caller, which knows the sender's history and the group.
    """
    if len(data) < ADVERT_LEN:
        raise AdvertError("truncated", f"{len(data)} bytes, expected {ADVERT_LEN}")
    if len(data) > ADVERT_LEN:
        raise AdvertError("bad length", f"{len(data)} bytes, expected {ADVERT_LEN}")
    (version, atype, group_id, node_id, advbase, advskew, key_id, flags, demotion,
     digest, epoch, counter) = HEADER.unpack_from(data)
    if version != VERSION:
        raise AdvertError("bad version", f"version {version}, expected {VERSION}")
    key = keys.get(key_id)
    if key is None:
        # Unauthenticated, but what explains a misconfiguration: the peer's send_key.
        here = ", ".join(str(k) for k in sorted(keys.keys))
        raise AdvertError("unknown key", f"key id {key_id} (cluster.send_key of the sender?); "
                                         f"the cluster keys here are {{{here}}}")
    if not constant_time_equal(hmac_sha256(key, data[:HEADER.size]), data[HEADER.size:]):
        raise AdvertError("bad mac", f"from node {node_id} group {group_id} key id {key_id}")
    # Fields below are authenticated: a bad value is a peer bug, not an attack.
    try:
        kind = AdvertType(atype)
    except ValueError:
        raise AdvertError("bad type", f"type {atype}") from None
    if flags != 0:
        raise AdvertError("bad flags", f"flags {flags:#x}")
    if node_id == 0 or group_id == 0:
        raise AdvertError("bad id", f"node {node_id} group {group_id}")
    if counter == 0:
        raise AdvertError("bad counter", "counter 0 is never sent")
    return Advert(kind, group_id, node_id, advbase, advskew, demotion, digest,
                  key_id, epoch, counter)
