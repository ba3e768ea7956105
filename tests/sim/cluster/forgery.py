"""What the attacker does with a captured advert: flip a bit, re-sign it with
another key, and what the node must say about each."""

from __future__ import annotations

from meshd.crypto import KeyRing
from meshd.election.wire import decode_advert, encode_advert

from .configs import ELECTION_KEYS, OTHER_ELECTION_KEYS


def flip_bit(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def reencode(data: bytes, keys: KeyRing = OTHER_ELECTION_KEYS, **changes) -> bytes:
    """A valid advert re-signed with another key (and optionally other fields)."""
    advert = decode_advert(data, ELECTION_KEYS)
    fields = {**advert.__dict__, **changes}
    return encode_advert(type(advert)(**fields), keys.send_key)


def expected_flip_reason(bit: int) -> str:
    """What decode_advert must say about a one-bit flip of a valid advert."""
    byte = bit // 8
    if byte == 0:
        return "bad version"
    if byte == 13:                      # key id: only key 1 exists
        return "unknown key"
    return "bad mac"
