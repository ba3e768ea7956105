"""Cluster keys: every protocol key is derived from the cluster secret by HKDF.

Each purpose (election HMAC, sync AEAD) gets its own key through a distinct
HKDF `info`, so a key recovered from one protocol is useless for the other.
Two key ids may be configured at once: receivers accept both, senders use
`send_key`, which lets operators rotate secrets without a flag day.

Must not: read or keep the secrets (the configuration reads the secret files
into Config.secrets), or know a wire format: the election's advert
(election/wire.py) and the sync frames (sync/frames.py, which derives its
per-sender frame keys from these) do.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HKDF_SALT = b"meshd cluster key v1"
ELECTION_INFO = b"meshd election hmac-sha256"
SYNC_INFO = b"meshd sync aead"


def derive_key(secret: bytes, info: bytes, key_id: int, length: int = 32) -> bytes:
    """HKDF-SHA256(secret) bound to a purpose and a key id."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=HKDF_SALT,
                info=info + b" key-id " + bytes([key_id])).derive(secret)


@dataclass(frozen=True)
class KeyRing:
    """The keys of one purpose: key id -> key bytes, and the id used to send."""

    keys: dict[int, bytes]
    send_id: int

    @classmethod
    def from_secrets(cls, secrets: dict[int, bytes], send_id: int, info: bytes) -> "KeyRing":
        if send_id not in secrets:
            raise ValueError(f"send key id {send_id} has no secret")
        return cls({kid: derive_key(s, info, kid) for kid, s in secrets.items()}, send_id)

    @property
    def send_key(self) -> bytes:
        return self.keys[self.send_id]

    def get(self, key_id: int) -> bytes | None:
        return self.keys.get(key_id)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
