"""Conntrack tuples as raw fields, for the encoders.

Owns: _Tuple (a tuple's addresses, protocol, ports or ICMP fields, zone as
bytes), reading one out of attrs (_tuple_fields), writing one the way the
kernel does (_encode_tuple), and a key back to its orig tuple (key_tuple;
the key's layout is in events.py).

Must not: build whole messages (requests.py, create.py) or sit on the event
path: these helpers run when a request is built, not per event.
"""

from __future__ import annotations

from typing import NamedTuple

from . import netlink
from .constants import (
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_ICMP_ID,
    CTA_PROTO_ICMPV6_ID,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_TUPLE_IP,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_ZONE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    NLA_F_NET_BYTEORDER,
)
from .events import _orig_offsets
from .netlink import CtDecodeError, nest, nla

# by assignment, not import: method calls on them run per message (netlink.py says why)
_ADDR_LEN, _BE16 = netlink._ADDR_LEN, netlink._BE16

class _Tuple(NamedTuple):
    src: bytes
    dst: bytes
    proto: int
    sport: bytes        # or ICMP id (both directions carry the same id)
    dport: bytes
    itype: int | None
    icode: int | None
    zone: bytes | None  # CTA_TUPLE_ZONE (directional zones)


def _tuple_fields(attrs: bytes, start: int, end: int) -> _Tuple:
    """The tuple whose members are in attrs[start:end] (attrs[0] is the family)."""
    zone, proto, src, dst, l4 = _orig_offsets(attrs, start, end, bytearray(len(attrs)))
    if min(proto, src, dst) < 0:
        raise CtDecodeError("incomplete tuple")
    n = _ADDR_LEN[attrs[0]]
    v = [attrs[o:o + k] if o >= 0 else b"\0" * k for o, k in l4]
    p = attrs[proto]
    if p in (IPPROTO_ICMP, IPPROTO_ICMPV6):     # l4: type, code, id
        return _Tuple(attrs[src:src + n], attrs[dst:dst + n], p, v[2], b"\0\0", v[0][0], v[1][0],
                      attrs[zone:zone + 2] if zone >= 0 else None)
    return _Tuple(attrs[src:src + n], attrs[dst:dst + n], p, v[0], v[1], None, None,
                  attrs[zone:zone + 2] if zone >= 0 else None)


def _encode_tuple(atype: int, tup: _Tuple) -> bytes:
    """A tuple the way the kernel writes it (ctnetlink_dump_tuples)."""
    v6 = len(tup.src) == 16
    ip = nest(CTA_TUPLE_IP, nla(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, tup.src),
              nla(CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, tup.dst))
    members = [nla(CTA_PROTO_NUM, bytes((tup.proto,)))]
    if tup.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        base = CTA_PROTO_ICMPV6_ID if tup.proto == IPPROTO_ICMPV6 else CTA_PROTO_ICMP_ID
        members += [nla(base, tup.sport), nla(base + 1, bytes((tup.itype or 0,))),
                    nla(base + 2, bytes((tup.icode or 0,)))]
    else:
        members += [nla(CTA_PROTO_SRC_PORT, tup.sport), nla(CTA_PROTO_DST_PORT, tup.dport)]
    parts = [ip, nest(CTA_TUPLE_PROTO, *members)]
    if tup.zone is not None:
        parts.append(nla(CTA_TUPLE_ZONE | NLA_F_NET_BYTEORDER, tup.zone))
    return nest(atype, *parts)


def key_tuple(key: bytes) -> tuple[int, int, _Tuple]:
    """(zone, family, orig tuple) back from a key."""
    if len(key) not in (16, 40):
        raise CtDecodeError(f"key of length {len(key)}")
    zone = _BE16.unpack_from(key, 0)[0]
    family, proto = key[2], key[3]
    alen = (len(key) - 8) // 2
    if _ADDR_LEN.get(family) != alen:
        raise CtDecodeError("key family does not match its length")
    src, dst, l4 = key[4:4 + alen], key[4 + alen:4 + 2 * alen], key[4 + 2 * alen:]
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        tup = _Tuple(src, dst, proto, l4[2:4], b"\0\0", l4[0], l4[1], None)
    else:
        tup = _Tuple(src, dst, proto, l4[0:2], l4[2:4], None, None, None)
    return zone, family, tup
