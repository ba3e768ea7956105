"""Buckets and entry hashes for anti-entropy (proto/sync.md, section 8).

The key space is split into 256 buckets by CRC-32 of the key.  A bucket's
digest is the sum, modulo 2**64, of a 64-bit hash of every (key, attrs) in
it, so adding or removing an entry is one addition: the caches keep digests
current in O(1) per change, and a digest round costs nothing to prepare.

The entry hash is CRC-32 || Adler-32 of key || attrs, XOR len(key):

* cheap: both run in C, chain from the key's CRC that the bucket already
  needs, and need no concatenation (BLAKE2b costs 3-4 times more per call,
  twice per change, on the hot path of every local event and record);
* the two halves fail differently.  CRC is linear over GF(2): two entries of
  one bucket stale by the same bit flip change their CRCs by the same XOR,
  which an XOR digest would cancel.  Hence a *sum*: XOR-equal changes of
  two different values do not cancel arithmetically (except for a 2**-k
  chance, k the number of bits changed).  Adler-32 is a pair of sums: the
  same flip adds the same amount to both entries, which a sum doubles and
  never cancels;
* len(key) tells apart (key, attrs) pairs whose concatenations are equal.

It is not cryptographic and needs not be: frames are authenticated by the
AEAD; the digest only finds differences left by bugs or lost state, and a
collision hides one for one anti-entropy round until either entry changes.

Must not: keep or compare digests (the caches keep them current, antientropy.py
compares), or change alone: the bucket of a key and the entry hash must be
the same on every peer (proto/sync.md, section 8).
"""

from __future__ import annotations

import zlib
NBUCKETS = 256
BUCKET_MASK = NBUCKETS - 1
DIGEST_BYTES = 8
DIGEST_MASK = 2**64 - 1


def bucket_of(key: bytes) -> int:
    return zlib.crc32(key) & BUCKET_MASK


def entry_hash(key: bytes, attrs: bytes) -> int:
    """(CRC-32(key || attrs) << 32 | Adler-32(key || attrs)) XOR len(key)."""
    return ((zlib.crc32(attrs, zlib.crc32(key)) << 32)
            | zlib.adler32(attrs, zlib.adler32(key))) ^ len(key)


def pack_digests(digests: list[int] | tuple[int, ...]) -> bytes:
    return b"".join(d.to_bytes(DIGEST_BYTES, "big") for d in digests)


def unpack_digests(blob: bytes) -> list[int]:
    return [int.from_bytes(blob[i:i + DIGEST_BYTES], "big") for i in range(0, len(blob), DIGEST_BYTES)]


def buckets_to_bitmap(buckets) -> bytes:
    bits = bytearray(NBUCKETS // 8)
    for b in buckets:
        bits[b >> 3] |= 0x80 >> (b & 7)
    return bytes(bits)


def bitmap_to_buckets(bitmap: bytes) -> list[int]:
    return [b for b in range(NBUCKETS) if bitmap[b >> 3] & (0x80 >> (b & 7))]
