"""Byte- and value-level mutators: what an attacker without the key can do to
a datagram, and the malformed values a buggy peer with the key could seal.

Must not: know the formats beyond "bytes" and "msgpack-like values"; the
targets choose which mutations make sense for their input.
"""

from __future__ import annotations

import random

import msgpack

INTERESTING_INTS = (0, 1, 2, 7, 8, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
                    2**32, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**31), -(2**63))


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return b"\x01"
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        bit = rng.randrange(len(b) * 8)
        b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def set_bytes(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a few bytes with interesting values (0x00, 0xff, 0x7f, 0x80, random)."""
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, 1, rng.randrange(256)))
    return bytes(b)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))] if data else b""


def extend(data: bytes, rng: random.Random) -> bytes:
    tail = rng.choice((b"\x00", b"\x00" * rng.randint(1, 64), rng.randbytes(rng.randint(1, 300)),
                       data[:rng.randint(1, max(1, len(data)))]))
    return data + tail


def splice(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """The head of one datagram and the tail of another (field swap across datagrams)."""
    cut = rng.randrange(min(len(data), len(other)) + 1)
    return data[:cut] + other[cut:]


def swap_fields(data: bytes, rng: random.Random, fields: list[tuple[int, int]]) -> bytes:
    """Exchange two header fields (offset, size) of the same size, or copy one over another."""
    if len(fields) < 2:
        return flip_bits(data, rng)
    (a, n), (b, m) = rng.sample(fields, 2)
    size = min(n, m)
    buf = bytearray(data)
    if max(a, b) + size > len(buf):
        return flip_bits(data, rng)
    fa, fb = bytes(buf[a:a + size]), bytes(buf[b:b + size])
    buf[a:a + size], buf[b:b + size] = fb, (fa if rng.random() < 0.5 else fb)
    return bytes(buf)


def shuffle_chunks(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 4:
        return extend(data, rng)
    size = rng.choice((1, 2, 4, 8))
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
    chunks[i], chunks[j] = chunks[j], chunks[i]
    return b"".join(chunks)


def random_bytes(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 1, len(data), rng.randint(0, 2 * len(data) + 8))))


BYTE_MUTATORS = {
    "flip": flip_bits, "set": set_bytes, "truncate": truncate, "extend": extend,
    "shuffle": shuffle_chunks, "random": random_bytes,
}


def mutate_bytes(data: bytes, rng: random.Random, others: list[bytes],
                 fields: list[tuple[int, int]]) -> tuple[str, bytes]:
    """One mutation without the key: (its name, the bytes)."""
    r = rng.random()
    if r < 0.12 and others:
        return "splice", splice(data, rng.choice(others), rng)
    if r < 0.24:
        return "swap", swap_fields(data, rng, fields)
    name = rng.choice(tuple(BYTE_MUTATORS))
    out = BYTE_MUTATORS[name](data, rng)
    if rng.random() < 0.2:                     # stacked mutations
        out = BYTE_MUTATORS[rng.choice(tuple(BYTE_MUTATORS))](out, rng)
    return name, out


# ------------------------------------------------------------------ malformed values


def random_value(rng: random.Random, depth: int = 0):
    """Any msgpack value: wrong types for a field (str, float, map, ext, nil, nesting)."""
    kinds = ["int", "neg", "big", "str", "bin", "float", "nil", "bool", "array", "map", "ext"]
    if depth > 3:
        kinds = kinds[:8]
    k = rng.choice(kinds)
    if k == "int":
        return rng.choice(INTERESTING_INTS[:18]) if rng.random() < 0.6 else rng.randrange(2**16)
    if k == "neg":
        return -rng.randrange(1, 2**63)
    if k == "big":
        return rng.choice((2**64 - 1, 2**63, 2**32, 2**32 - 1))
    if k == "str":
        return rng.choice(("", "x", "é" * rng.randint(1, 5), "\x00"))
    if k == "bin":
        return rng.randbytes(rng.choice((0, 1, 8, 16, 32, 40, 300)))
    if k == "float":
        return rng.choice((0.0, 1.5, float("inf"), float("nan"), -1.0))
    if k == "nil":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "array":
        return [random_value(rng, depth + 1) for _ in range(rng.choice((0, 1, 2, 3, 5, 6)))]
    if k == "map":
        return {rng.choice(("a", "b", 1)) if depth else "k": random_value(rng, depth + 1)}
    return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randint(0, 8)))


def _lists(v):
    return [_lists(x) for x in v] if isinstance(v, (list, tuple)) else v


def mutate_value(body, rng: random.Random):
    """A copy of a decoded msgpack body with one part replaced, removed, added or
    re-typed; the result is packed and resealed by the caller."""
    body = _lists(body)
    if not isinstance(body, list) or not body or rng.random() < 0.08:
        return random_value(rng)
    # Walk down to a random list node.
    node = body
    while True:
        i = rng.randrange(len(node))
        child = node[i]
        if isinstance(child, list) and child and rng.random() < 0.6:
            node = child
            continue
        break
    r = rng.random()
    if r < 0.45:
        node[i] = random_value(rng)
    elif r < 0.6:
        node[i] = rng.choice(INTERESTING_INTS)
    elif r < 0.72:
        del node[i]
    elif r < 0.84:
        node.insert(i, random_value(rng))
    elif r < 0.92:
        node[i] = [node[i]]                      # one level too deep
    else:
        j = rng.randrange(len(node))
        node[i], node[j] = node[j], node[i]
    return body


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)
