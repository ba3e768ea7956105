"""Requests that name an entry or the table: delete, get, dump, flush, barrier; their acks.

Owns: the identity of an entry in a request (CTA_TUPLE_ORIG and CTA_ZONE,
from its attrs or from its key), encode_delete / encode_get / encode_dump /
encode_flush / encode_barrier, and iter_acks for the replies.

Must not: create entries (create.py rewrites attrs for injection) or send
anything: the committer in meshd/kernel/conntrack/committer.py owns the sockets.
"""

from __future__ import annotations

from collections.abc import Iterator

from . import netlink
from .constants import (
    AF_UNSPEC,
    CT_DELETE,
    CT_GET,
    CTA_TUPLE_ORIG,
    CTA_ZONE,
    NLA_F_NET_BYTEORDER,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_NOOP,
)
from .netlink import (
    HDR_LEN,
    NFGEN_LEN,
    CtDecodeError,
    _check_attrs,
    _message,
    _nfgen,
    iter_attrs,
    nla,
)
from .tuples import _encode_tuple, key_tuple

# by assignment, not import: method calls on them run per message (netlink.py says why)
_BE16, _ERR, _HDR = netlink._BE16, netlink._ERR, netlink._HDR

def _identity(attrs: bytes | None, key: bytes | None) -> tuple[int, bytes]:
    """(family, CTA_TUPLE_ORIG [+ CTA_ZONE]) from attrs or from a key."""
    if attrs is not None:
        attrs = bytes(attrs)
        _check_attrs(attrs)
        parts = []
        for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
            if t == CTA_TUPLE_ORIG or t == CTA_ZONE:
                parts.append(attrs[s - 4:e] + b"\0" * (-(e - s) & 3))
        if not parts:
            raise CtDecodeError("attrs without CTA_TUPLE_ORIG")
        return attrs[0], b"".join(parts)
    if key is None:
        raise TypeError("attrs or key is required")
    zone, family, tup = key_tuple(key)
    body = _encode_tuple(CTA_TUPLE_ORIG, tup)
    if zone:
        body += nla(CTA_ZONE | NLA_F_NET_BYTEORDER, _BE16.pack(zone))
    return family, body


def encode_delete(attrs: bytes | None, seq: int, *, key: bytes | None = None,
                  flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
    """IPCTNL_MSG_CT_DELETE of one entry, identified by its attrs or its key.

    Only the orig tuple and the zone are sent: CTA_ID would make the kernel
    delete only the entry with that id, and a peer's id never matches ours.
    """
    family, body = _identity(attrs, key)
    return _message(CT_DELETE, flags, seq, _nfgen(family) + body)


def encode_get(attrs: bytes | None, seq: int, *, key: bytes | None = None,
               flags: int = NLM_F_REQUEST) -> bytes:
    """IPCTNL_MSG_CT_GET of one entry; the reply is the entry (decodes as NEW) or ENOENT."""
    family, body = _identity(attrs, key)
    return _message(CT_GET, flags, seq, _nfgen(family) + body)


def encode_dump(seq: int, family: int = AF_UNSPEC) -> bytes:
    """Dump the whole table (of one family, or all with AF_UNSPEC)."""
    return _message(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, _nfgen(family))


def encode_flush(seq: int, family: int = AF_UNSPEC) -> bytes:
    """Delete every entry (of one family): a DELETE without a tuple."""
    return _message(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, _nfgen(family))


def encode_barrier(seq: int) -> bytes:
    """NLMSG_NOOP with NLM_F_ACK: the kernel acks it after everything sent before."""
    return _message(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq, b"")


def iter_acks(buf: bytes) -> Iterator[tuple[int, int]]:
    """(seq, errno) for each NLMSG_ERROR in a buffer (errno 0: an ACK); other messages skipped."""
    n = len(buf)
    pos = 0
    while pos + HDR_LEN <= n:
        mlen, mtype, _f, mseq, _pid = _HDR.unpack_from(buf, pos)
        if mlen < HDR_LEN or pos + mlen > n:
            raise CtDecodeError(f"bad nlmsg_len {mlen} at offset {pos}")
        if mtype == NLMSG_ERROR:
            if mlen < HDR_LEN + 4:
                raise CtDecodeError("truncated nlmsgerr")
            yield mseq, -_ERR.unpack_from(buf, pos + HDR_LEN)[0]
        pos += (mlen + 3) & ~3
