"""Expectations: a helper's expected connections (NFNL_SUBSYS_CTNETLINK_EXP) as attrs.

An expectation is what a connection-tracking helper (ftp, sip, ...) leaves in
the kernel when it reads, on its master's control connection, that another
connection is coming (an FTP PASV answer, a SIP SDP body): the tuple it will
have (CTA_EXPECT_TUPLE, with a mask: the FTP data connection's source port
is any), the master (CTA_EXPECT_MASTER, its orig tuple), the helper's name,
and, when the master is NATed, how the new connection is to be NATed
(CTA_EXPECT_NAT: direction and saved address/port; CTA_EXPECT_FN
"nat-follow-master"). A packet that matches it is RELATED, and the
expectation is used up (destroyed) unless it is PERMANENT.

The event path decodes them in events.py (_decode_exp: key and attrs, the
key's layout is in its docstring). Owns the rest: what the key is
(is_expect_key), the master's conntrack key and the helper's name read from
attrs, the create, delete and dump requests, and parse_expect for
`meshctl dump`.

Kernel rules the requests follow (net/netfilter/nf_conntrack_netlink.c,
6.18; tests/lab/test_expect_lab.py exercises them):
- a create needs CTA_EXPECT_TUPLE, _MASK and _MASTER (else EINVAL) and the
  master in the table (else ENOENT): commit the masters first;
- the master must carry a helper: one without (its CTA_HELP was not
  committed, or refused) gets no expectation, EOPNOTSUPP (measured on
  6.18, whatever CTA_EXPECT_TIMEOUT says). A master with a
  helper gives the expectation that helper's timeout (ftp: 300 s) whatever
  CTA_EXPECT_TIMEOUT says; it is sent anyway, as the peer's kernel wrote it;
- CTA_EXPECT_HELP_NAME must name a helper this kernel has (else EOPNOTSUPP),
  CTA_EXPECT_FN an expect function it has (else EINVAL);
- CTA_EXPECT_ID is ignored on create (measured) and left out anyway: it
  names the peer kernel's object; NLM_F_EXCL would make an existing one
  EEXIST, so it is not set, and an existing one is refreshed instead: its
  timeout becomes CTA_EXPECT_TIMEOUT (what the peer had left of it);
- deleting the master deletes its expectations (the kernel's own rule);
- a delete *without* a tuple deletes every expectation (of a helper, or all):
  encode_expect_delete always sends one.

Must not: decide what is replicated or committed, or do I/O.
"""

from __future__ import annotations

from .constants import (
    AF_INET,
    AF_INET6,
    AF_UNSPEC,
    CT_EXP_DELETE,
    CT_EXP_GET,
    CT_EXP_NEW,
    CTA_EXPECT_CLASS,
    CTA_EXPECT_FLAGS,
    CTA_EXPECT_FN,
    CTA_EXPECT_HELP_NAME,
    CTA_EXPECT_ID,
    CTA_EXPECT_MASK,
    CTA_EXPECT_MASTER,
    CTA_EXPECT_NAT,
    CTA_EXPECT_NAT_DIR,
    CTA_EXPECT_NAT_TUPLE,
    CTA_EXPECT_TIMEOUT,
    CTA_EXPECT_TUPLE,
    CTA_EXPECT_ZONE,
    EXPECT_FLAG_NAMES,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
)
from .events import EXPECT_KEY_MARK, _tuple_key
from .netlink import NFGEN_LEN, CtDecodeError, _check_attrs, _message, _nfgen, iter_attrs, nla
from .parse import _flag_names, _parse_tuple, _u, _unknown
from .tuples import _encode_tuple, key_tuple

EXPECT_KEY_LENGTHS = (17, 41)
# Never copied into a create: the id is the peer kernel's.
EXPECT_NOT_INJECTED = frozenset({CTA_EXPECT_ID})


def is_expect_key(key: bytes) -> bool:
    """Whether a key is an expectation's (events.py has both layouts)."""
    return len(key) in EXPECT_KEY_LENGTHS and key[0] == EXPECT_KEY_MARK[0]


def _zone(attrs: bytes) -> bytes:
    for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t == CTA_EXPECT_ZONE:
            if e - s != 2:
                raise CtDecodeError("CTA_EXPECT_ZONE is not 2 bytes")
            return attrs[s:e]
    return b"\0\0"


def expect_master_key(attrs: bytes) -> bytes:
    """The conntrack key of an expectation's master (its zone is the expectation's)."""
    attrs = bytes(attrs)
    _check_attrs(attrs)
    for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t == CTA_EXPECT_MASTER:
            return _zone(attrs) + _tuple_key(attrs, s, e)
    raise CtDecodeError("expectation without CTA_EXPECT_MASTER")


def expect_helper(attrs: bytes) -> str | None:
    """CTA_EXPECT_HELP_NAME, or None (an expectation made by hand, without a helper)."""
    attrs = bytes(attrs)
    _check_attrs(attrs)
    for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t == CTA_EXPECT_HELP_NAME:
            return attrs[s:e].split(b"\0", 1)[0].decode("ascii", "replace")
    return None


def encode_expect_create(attrs: bytes, seq: int, *,
                         flags: int = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK) -> bytes:
    """IPCTNL_MSG_EXP_NEW that creates the expectation (or, existing, refreshes its timeout).

    No NLM_F_EXCL: an existing one is changed instead of EEXIST. Every
    attribute but EXPECT_NOT_INJECTED is passed on as the peer's kernel wrote
    it (the module docstring has what the kernel requires).
    """
    attrs = bytes(attrs)
    _check_attrs(attrs)
    parts = []
    need = {CTA_EXPECT_TUPLE, CTA_EXPECT_MASK, CTA_EXPECT_MASTER}
    for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t in EXPECT_NOT_INJECTED:
            continue
        need.discard(t)
        parts.append(attrs[s - 4:e] + b"\0" * (-(e - s) & 3))
    if need:
        raise CtDecodeError("expectation without CTA_EXPECT_TUPLE, _MASK or _MASTER")
    return _message(CT_EXP_NEW, flags, seq, _nfgen(attrs[0]) + b"".join(parts))


def encode_expect_delete(attrs: bytes | None, seq: int, *, key: bytes | None = None,
                         flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
    """IPCTNL_MSG_EXP_DELETE of one expectation, by its attrs or its key: tuple and zone only."""
    if attrs is not None:
        attrs = bytes(attrs)
        _check_attrs(attrs)
        parts = [attrs[s - 4:e] + b"\0" * (-(e - s) & 3) for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN)
                 if t in (CTA_EXPECT_TUPLE, CTA_EXPECT_ZONE)]
        if not any(t == CTA_EXPECT_TUPLE for t, _rt, _s, _e in iter_attrs(attrs, NFGEN_LEN)):
            # without a tuple the kernel would delete every expectation
            raise CtDecodeError("expectation without CTA_EXPECT_TUPLE")
        return _message(CT_EXP_DELETE, flags, seq, _nfgen(attrs[0]) + b"".join(parts))
    if key is None:
        raise TypeError("attrs or key is required")
    if not is_expect_key(key):
        raise CtDecodeError(f"not an expectation key ({len(key)} bytes)")
    zone, family, tup = key_tuple(key[1:])
    body = _encode_tuple(CTA_EXPECT_TUPLE, tup)
    if zone:
        body += nla(CTA_EXPECT_ZONE, zone.to_bytes(2, "big"))       # as the kernel writes it
    return _message(CT_EXP_DELETE, flags, seq, _nfgen(family) + body)


def encode_expect_dump(seq: int, family: int = AF_UNSPEC) -> bytes:
    """Dump every expectation (of one family, or all with AF_UNSPEC)."""
    return _message(CT_EXP_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, _nfgen(family))


def parse_expect(attrs: bytes) -> dict:
    """Full decode of an expectation's attrs into JSON-able data (`meshctl dump`, tests).

    Unknown attributes appear under "unknown" as {"type", "flags", "hex"}.
    """
    attrs = bytes(attrs)
    _check_attrs(attrs)
    family = attrs[0]
    out: dict = {"expectation": True, "family": {AF_INET: "ipv4", AF_INET6: "ipv6"}[family]}
    tuples = {CTA_EXPECT_TUPLE: "tuple", CTA_EXPECT_MASK: "mask", CTA_EXPECT_MASTER: "master"}
    scalars = {CTA_EXPECT_TIMEOUT: "timeout", CTA_EXPECT_ID: "id", CTA_EXPECT_ZONE: "zone",
               CTA_EXPECT_CLASS: "class"}
    for t, rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t in tuples:
            out[tuples[t]] = _parse_tuple(family, attrs, s, e)
        elif t in scalars:
            out[scalars[t]] = _u(attrs[s:e], scalars[t])
        elif t == CTA_EXPECT_FLAGS:
            out["flags"] = _u(attrs[s:e], "flags")
            out["flag_names"] = _flag_names(out["flags"], EXPECT_FLAG_NAMES)
        elif t in (CTA_EXPECT_HELP_NAME, CTA_EXPECT_FN):
            out["helper" if t == CTA_EXPECT_HELP_NAME else "fn"] = \
                attrs[s:e].split(b"\0", 1)[0].decode("ascii", "replace")
        elif t == CTA_EXPECT_NAT:
            nat: dict = {}
            for nt, nrt, ns, ne in iter_attrs(attrs, s, e):
                if nt == CTA_EXPECT_NAT_DIR:
                    nat["dir"] = "reply" if _u(attrs[ns:ne], "nat dir") else "orig"
                elif nt == CTA_EXPECT_NAT_TUPLE:
                    nat["tuple"] = _parse_tuple(family, attrs, ns, ne)
                else:
                    nat.setdefault("unknown", []).append(_unknown(nt, nrt, attrs, ns, ne))
            out["nat"] = nat
        else:
            out.setdefault("unknown", []).append(_unknown(t, rt, attrs, s, e))
    return out
