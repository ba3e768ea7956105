"""Netlink framing that every part of the codec shares.

Owns: the nlmsghdr / nlattr / nlmsgerr layouts (structs, HDR_LEN, NFGEN_LEN),
the address length of each family, the error types, and attribute walking
(iter_attrs) and building (nla, nest, _message, _nfgen).

Errors: malformed input raises CtDecodeError, and only that. An NLMSG_ERROR
carrying an errno (or an NLMSG_OVERRUN) in a stream of events raises
CtNetlinkError, a subclass that carries .errno; catching CtDecodeError covers
both.

The structs and _ADDR_LEN are bound by assignment (`_HDR = netlink._HDR`) in
the modules that call their methods per message, not imported: CPython (3.11)
compiles `name.method()` without LOAD_METHOD when `name` comes from an import
statement, and then builds a bound method object on every call.

Must not: know what a conntrack entry means (tuples, keys, status live in the
modules above this one), or import any of them.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Iterator

from .constants import AF_INET, AF_INET6, NLA_F_NESTED, NLA_TYPE_MASK

_ADDR_LEN = {AF_INET: 4, AF_INET6: 16}

_HDR = struct.Struct("=IHHII")     # nlmsghdr: len, type, flags, seq, pid (host order)
_NLA = struct.Struct("=HH")        # nlattr: len, type (host order)
_ERR = struct.Struct("=i")         # nlmsgerr.error
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
HDR_LEN = 16
NFGEN_LEN = 4


class CtDecodeError(ValueError):
    """The bytes are not a well-formed ctnetlink message stream."""


class CtNetlinkError(CtDecodeError):
    """The stream holds an NLMSG_ERROR (or NLMSG_OVERRUN): the kernel said errno."""

    def __init__(self, err: int, seq: int = 0):
        self.errno = err
        self.seq = seq
        super().__init__(f"netlink error {_errno.errorcode.get(err, err)} (seq {seq})")


def iter_attrs(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(type, type|flags as sent, payload start, payload end) for each attribute in [start, end)."""
    if end is None:
        end = len(buf)
    a = start
    while a + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            raise CtDecodeError(f"bad attribute length {alen} at offset {a}")
        yield atype & NLA_TYPE_MASK, atype, a + 4, a + alen
        a += (alen + 3) & ~3


def nla(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * (-n & 3)


def nest(atype: int, *members: bytes) -> bytes:
    return nla(atype | NLA_F_NESTED, b"".join(members))


def _check_attrs(attrs: bytes) -> None:
    if len(attrs) < NFGEN_LEN:
        raise CtDecodeError("attrs shorter than nfgenmsg")
    if attrs[0] not in _ADDR_LEN:
        raise CtDecodeError(f"unsupported family {attrs[0]}")


def _message(mtype: int, flags: int, seq: int, body: bytes, portid: int = 0) -> bytes:
    return _HDR.pack(HDR_LEN + len(body), mtype, flags, seq, portid) + body


def _nfgen(family: int) -> bytes:
    return bytes((family, 0, 0, 0))
