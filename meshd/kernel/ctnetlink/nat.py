"""NAT for injection: a NATed entry told to the kernel as CTA_NAT_* ranges.

ctnetlink dumps only the effect of NAT (a reply tuple that is not the
inverse of the orig tuple), and the kernel rewrites packets only for NAT it
set up itself. Owns: turning a replicated reply tuple into the un-NATed
reply plus single-address, single-port CTA_NAT_DST / CTA_NAT_SRC ranges
(_nat_from_tuples, the general way; _nat_spliced, the same bytes by slicing
for the kernel's own layout: on a masquerading gateway every entry is NATed,
so this is a hot path of create.py and its body stays as measured).

Must not: decide whether an entry is NATed (create.py's plan compares the
tuples) or build whole messages.
"""

from __future__ import annotations

import struct

from .constants import (
    AF_INET,
    AF_INET6,
    CTA_NAT_DST,
    CTA_NAT_PROTO,
    CTA_NAT_SRC,
    CTA_NAT_V4_MAXIP,
    CTA_NAT_V4_MINIP,
    CTA_NAT_V6_MAXIP,
    CTA_NAT_V6_MINIP,
    CTA_PROTONAT_PORT_MAX,
    CTA_PROTONAT_PORT_MIN,
    CTA_TUPLE_REPLY,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    NLA_F_NESTED,
)
from .netlink import nest, nla
from .tuples import _encode_tuple, _Tuple


def _nat_range(family: int, addr: bytes, port: bytes | None) -> bytes:
    lo, hi = (CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP) if family == AF_INET6 else (CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP)
    parts = [nla(lo, addr), nla(hi, addr)]
    if port is not None:
        parts.append(nest(CTA_NAT_PROTO, nla(CTA_PROTONAT_PORT_MIN, port), nla(CTA_PROTONAT_PORT_MAX, port)))
    return b"".join(parts)


def _nat_from_tuples(family: int, orig: _Tuple, reply: _Tuple) -> tuple[bytes, list[bytes]]:
    """(un-NATed reply tuple, [CTA_NAT_DST, CTA_NAT_SRC]) for a NATed entry.

    ctnetlink does not dump the NAT setup, only the effect: the reply tuple is
    not the inverse of the orig tuple. And the NAT status bits cannot be set
    through CTA_STATUS; the kernel only sets them (and thus only rewrites
    packets) when it computes the reply tuple itself from a CTA_NAT_* range
    (nf_nat_setup_info). So the request carries the inverse of the orig tuple
    as reply and single-address, single-port ranges that lead the kernel to
    exactly the replicated reply tuple.
    """
    icmp = orig.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)
    nats = []
    # DNAT: the reply comes from where the packets really went.
    if reply.src != orig.dst or (not icmp and reply.sport != orig.dport):
        nats.append(nla(CTA_NAT_DST | NLA_F_NESTED,
                        _nat_range(family, reply.src, None if icmp else reply.sport)))
    # SNAT: the reply goes back to the translated source (for ICMP the id may change).
    if reply.dst != orig.src or (not icmp and reply.dport != orig.sport) or (icmp and reply.sport != orig.sport):
        nats.append(nla(CTA_NAT_SRC | NLA_F_NESTED,
                        _nat_range(family, reply.dst, reply.sport if icmp else reply.dport)))
    if not nats:
        return b"", []
    if icmp:
        unnat = reply._replace(src=orig.dst, dst=orig.src, sport=orig.sport)
    else:
        unnat = reply._replace(src=orig.dst, dst=orig.src, sport=orig.dport, dport=orig.sport)
    return _encode_tuple(CTA_TUPLE_REPLY, unnat), nats


def _nat_spliced(attrs: bytes, rs: int, re_: int, nc: tuple) -> tuple[bytes, list[bytes]]:
    """_nat_from_tuples for two port tuples in the kernel's layout, by slicing: same bytes, faster.

    On a masquerading gateway every entry is NATed, so this is a hot path too.
    """
    os_, od, rsrc, rdst, n, op1, op2, rp1, rp2, _icmp = nc
    o_src, o_dst, o_sp, o_dp = attrs[os_:os_ + n], attrs[od:od + n], attrs[op1:op1 + 2], attrs[op2:op2 + 2]
    r_src, r_dst, r_sp, r_dp = attrs[rsrc:rsrc + n], attrs[rdst:rdst + n], attrs[rp1:rp1 + 2], attrs[rp2:rp2 + 2]
    st, dst_hdrs, src_hdrs = _NAT_RANGE[n]
    nats = []
    if r_src != o_dst or r_sp != o_dp:
        nats.append(st.pack(dst_hdrs[0], dst_hdrs[1], r_src, dst_hdrs[2], r_src, dst_hdrs[3], dst_hdrs[4], r_sp,
                            dst_hdrs[5], r_sp))
    if r_dst != o_src or r_dp != o_sp:
        nats.append(st.pack(src_hdrs[0], src_hdrs[1], r_dst, src_hdrs[2], r_dst, src_hdrs[3], src_hdrs[4], r_dp,
                            src_hdrs[5], r_dp))
    # the reply tuple as it was before NAT: src <- orig dst, dst <- orig src, ports swapped back
    unnat = b"".join((attrs[rs:rsrc], o_dst, attrs[rsrc + n:rdst], o_src, attrs[rdst + n:rp1], o_dp,
                      attrs[rp1 + 2:rp2], o_sp, attrs[rp2 + 2:re_]))
    return unnat, nats


def _nat_range_layouts() -> dict[int, tuple]:
    """address length -> (struct, CTA_NAT_DST headers, CTA_NAT_SRC headers) as _nat_range writes them."""
    out = {}
    for fam, n in ((AF_INET, 4), (AF_INET6, 16)):
        st = struct.Struct(f"=4s4s{n}s4s{n}s4s4s2s2x4s2s2x")
        hdrs = []
        for atype in (CTA_NAT_DST, CTA_NAT_SRC):
            sample = nla(atype | NLA_F_NESTED, _nat_range(fam, bytes(n), b"\0\0"))
            f = st.unpack(sample)
            hdrs.append((f[0], f[1], f[3], f[5], f[6], f[8]))
        out[n] = (st, hdrs[0], hdrs[1])
    return out


_NAT_RANGE = _nat_range_layouts()
