"""imsg-style messages between a meshd process and its child (sans-I/O).

On the wire (a SOCK_STREAM socketpair): a big-endian u32 length, then that
many bytes of msgpack: an array ``[type, {field: value, ...}]``.  A length
above ``max_size`` ends the channel (a stream cannot resynchronise after a
lying length, and only a broken or compromised peer sends one): the
decoder is then `broken`.  Everything
else that is wrong with one message (not msgpack, not ``[str, map]``, an
unknown type, a missing, extra or mistyped field, a string or a byte string
too long, a number out of range) drops that message alone, with the reason:
`Rejected(where, what)`.  Nothing here raises on the peer's input.

A `Schema` is the whole protocol of one direction: for each message type,
its fields and their kinds (`Field`).  `bool` is never accepted for an int
(msgpack keeps them apart; Python's isinstance does not), an int is accepted
for a float.

Must not: do I/O (the trio side is `Channel` in meshd/privsep/supervisor.py
and the child's own loop), or know any message type (the users define their
schemas).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

HEADER = struct.Struct("!I")
MAX_SIZE = 64 << 10           # bytes of one message, default
MAX_STR = 4096                # characters of a string field, default
MAX_DEPTH = 4                 # nesting of structs within a message


class FramingError(Exception):
    """The stream itself is broken (a length above the limit): close it."""


@dataclass(frozen=True)
class Field:
    """One field: its kind ("int", "float", "str", "bytes", "bool", a nested
    Schema-like dict of Fields as "struct", "pair" of two ints, or "list" of
    at most `max_len` values that each pass `item`), whether None is
    allowed, and bounds."""
    kind: str
    optional: bool = False
    lo: float | None = None
    hi: float | None = None
    max_len: int = MAX_STR
    struct: dict[str, Field] | None = None
    item: Field | None = None


@dataclass(frozen=True)
class Message:
    type: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    """A message dropped: `where` is the message type and field path, `what` the reason."""
    where: str
    what: str


@dataclass
class Schema:
    types: dict[str, dict[str, Field]] = field(default_factory=dict)

    def validate(self, obj: Any) -> Message | Rejected:
        if not isinstance(obj, (list, tuple)) or len(obj) != 2:
            return Rejected("message", f"expected [type, fields], found {_describe(obj)}")
        mtype, fields = obj
        if not isinstance(mtype, str):
            return Rejected("message", f"type: expected a string, found {_describe(mtype)}")
        spec = self.types.get(mtype)
        if spec is None:
            return Rejected(_short(mtype), "unknown message type")
        problem = _check_struct(spec, fields, _short(mtype), 0)
        if problem is not None:
            return problem
        return Message(mtype, fields)

    def encode(self, mtype: str, **fields: Any) -> bytes:
        """One framed message; ValueError when it would not pass our own schema
        (a bug on the sending side, caught before the peer sees it)."""
        verdict = self.validate([mtype, fields])
        if isinstance(verdict, Rejected):
            raise ValueError(f"{verdict.where}: {verdict.what}")  # noqa: TRY004 (a bad value, not a type)
        body = msgpack.packb([mtype, fields], use_bin_type=True)
        return HEADER.pack(len(body)) + body


def _short(text: str) -> str:
    return repr(text[:40]) if len(text) > 40 else text


def _describe(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return f"a map of {len(value)}"
    return type(value).__name__


def _check_struct(spec: dict[str, Field], fields: Any, where: str, depth: int) -> Rejected | None:
    if depth > MAX_DEPTH:
        return Rejected(where, "nested too deep")
    if not isinstance(fields, dict):
        return Rejected(where, f"expected a map of fields, found {_describe(fields)}")
    for name in fields:
        if not isinstance(name, str) or name not in spec:
            return Rejected(where, f"unknown field {_short(str(name))}")
    for name, f in spec.items():
        path = f"{where}.{name}"
        if name not in fields:
            if f.optional:
                continue
            return Rejected(path, "missing")
        problem = _check_value(f, fields[name], path, depth)
        if problem is not None:
            return problem
    return None


def _check_value(f: Field, value: Any, path: str, depth: int) -> Rejected | None:
    if value is None:
        return None if f.optional else Rejected(path, "expected a value, found nil")
    kind = f.kind
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and not math.isnan(value))
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "bytes":
        ok = isinstance(value, bytes)
    elif kind == "pair":
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    elif kind == "struct":
        return _check_struct(f.struct or {}, value, path, depth + 1)
    elif kind == "list":
        return _check_list(f, value, path, depth)
    else:
        return Rejected(path, f"schema error: unknown kind {kind!r}")
    if not ok:
        return Rejected(path, f"expected {'two integers' if kind == 'pair' else kind}, "
                        f"found {_describe(value)}")
    if kind in ("str", "bytes") and len(value) > f.max_len:
        return Rejected(path, f"longer than {f.max_len} ({len(value)})")
    numbers = value if kind == "pair" else (value,) if kind in ("int", "float") else ()
    for v in numbers:
        if (f.lo is not None and v < f.lo) or (f.hi is not None and v > f.hi):
            return Rejected(path, f"{v} out of range {f.lo}..{f.hi}")
    return None


def _check_list(f: Field, value: Any, path: str, depth: int) -> Rejected | None:
    if not isinstance(value, (list, tuple)):
        return Rejected(path, f"expected a list, found {_describe(value)}")
    if len(value) > f.max_len:
        return Rejected(path, f"more than {f.max_len} items ({len(value)})")
    if depth + 1 > MAX_DEPTH:
        return Rejected(path, "nested too deep")
    if f.item is None:
        return Rejected(path, "schema error: a list without an item kind")
    for i, v in enumerate(value):
        problem = _check_value(f.item, v, f"{path}[{i}]", depth + 1)
        if problem is not None:
            return problem
    return None


class Decoder:
    """Bytes of the stream in, messages (or rejections) out.

    A length above max_size breaks the decoder: feed() returns what came
    before it and sets `broken` (the reason); the owner must then close the
    channel, and a further feed() raises FramingError.
    """

    def __init__(self, schema: Schema, max_size: int = MAX_SIZE):
        self.schema = schema
        self.max_size = max_size
        self._buf = bytearray()
        self.broken: str | None = None
        self.received = 0
        self.rejected = 0

    def feed(self, data: bytes) -> list[Message | Rejected]:
        if self.broken:
            raise FramingError(self.broken)
        self._buf += data
        out: list[Message | Rejected] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self.max_size:
                self.broken = f"message of {size} bytes announced, more than the limit of {self.max_size}"
                self._buf.clear()
                break
            if len(self._buf) < HEADER.size + size:
                break
            body = bytes(self._buf[HEADER.size:HEADER.size + size])
            del self._buf[:HEADER.size + size]
            verdict = self.decode_body(body)
            if isinstance(verdict, Rejected):
                self.rejected += 1
            else:
                self.received += 1
            out.append(verdict)
        return out

    def decode_body(self, body: bytes) -> Message | Rejected:
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        except Exception as e:  # noqa: BLE001 (msgpack raises many kinds; all mean "not msgpack")
            return Rejected("message", f"not msgpack: {type(e).__name__}: {str(e)[:80]}")
        return self.schema.validate(obj)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buf)
