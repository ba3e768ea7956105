"""The hot path: conntrack events and dump entries decoded into (key, attrs).

What the event reader and the sync service do per event lives here, and
nothing else. Two shapes of an entry travel through meshd:

key   (bytes) the flow identity, canonical whatever order the kernel emitted
      the attributes in; equal keys = same conntrack entry in the kernel:

          zone     2 bytes  big-endian; the orig-direction zone (CTA_TUPLE_ZONE
                            inside CTA_TUPLE_ORIG when the zone is directional,
                            else CTA_ZONE, else 0)
          family   1 byte   AF_INET (2) or AF_INET6 (10)
          l4proto  1 byte   IPPROTO_*
          src      4 | 16   orig tuple source address
          dst      4 | 16   orig tuple destination address
          l4       4 bytes  ICMP/ICMPv6: type, code, id (2 bytes BE);
                            anything else: src port, dst port (BE; GRE keys
                            travel in the port attributes too); zeros if absent

      so 16 bytes for IPv4, 40 for IPv6. (tuples.key_tuple reads it back.)

      An *expectation* (a helper's expected connection, the expectation
      subsystem NFNL_SUBSYS_CTNETLINK_EXP) has a key of its own:

          b"E"     1 byte   0x45, the marker
          ...      16 | 40  the layout above, of CTA_EXPECT_TUPLE, with the
                            zone of CTA_EXPECT_ZONE (else 0)

      so 17 or 41 bytes: never the length of a conntrack key, and the kernel
      finds an expectation by that tuple and zone (expect.is_expect_key).

attrs (bytes) the netlink message payload after the nlmsghdr, unmodified
      (for an expectation: its CTA_EXPECT_* attributes, the same way):
      the 4-byte nfgenmsg (family, version 0, res_id) then the top-level CTA_*
      attributes exactly as the kernel wrote them. attrs[0] is the family; a
      message is rebuilt by prefixing an nlmsghdr. Nothing is dropped, so
      attributes this codec does not know are carried through to the peer.

Events: decode_events() looks only at what the hot path needs: the top-level
attributes, CTA_TUPLE_ORIG (the key), CTA_PROTOINFO (TCP state), CTA_STATUS
and CTA_ZONE. Everything else stays bytes; merge_attrs() and attr_value()
work on the blob without decoding it.

Speed: the messages of one kind share a *shape* (the same attribute headers
at the same offsets). The decoder (and create.py's encoder) walks the
attributes once per shape and keeps a plan (field offsets); the next message
of that shape is checked with one big-integer AND over all its headers and
then handled with plain slices. The walk is a pure function of the headers,
so a message whose headers match is handled exactly as the walk would
handle it. The per-event functions are measured: keep their locals and bound
lookups as they are.

Expectations are rare (one per pending data connection of a helper) and
decoded by a plain walk (_decode_exp), without plans.

Must not: decode more than the hot path needs (the full decode is parse.py),
build requests (tuples.py, requests.py, create.py), or do I/O.
"""

from __future__ import annotations

import errno as _errno
import operator
from collections.abc import Callable
from typing import ClassVar, NamedTuple

from . import netlink
from .constants import (
    CT_DELETE,
    CT_EXP_DELETE,
    CT_EXP_NEW,
    CT_NEW,
    CTA_EXPECT_MASTER,
    CTA_EXPECT_NAT,
    CTA_EXPECT_TUPLE,
    CTA_EXPECT_ZONE,
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_ICMP_CODE,
    CTA_PROTO_ICMP_ID,
    CTA_PROTO_ICMP_TYPE,
    CTA_PROTO_ICMPV6_CODE,
    CTA_PROTO_ICMPV6_ID,
    CTA_PROTO_ICMPV6_TYPE,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_PROTOINFO,
    CTA_PROTOINFO_TCP,
    CTA_PROTOINFO_TCP_STATE,
    CTA_STATUS,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_ZONE,
    CTA_ZONE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPS_NAT_MASK,
    NLA_TYPE_MASK,
    NLM_F_CREATE,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
)
from .netlink import (
    HDR_LEN,
    NFGEN_LEN,
    CtDecodeError,
    CtNetlinkError,
    _check_attrs,
    iter_attrs,
)

# by assignment, not import: method calls on them run per message (netlink.py says why)
_ADDR_LEN, _ERR, _HDR, _NLA = netlink._ADDR_LEN, netlink._ERR, netlink._HDR, netlink._NLA

class CtKind:
    """Event kinds; the values are the NFNLGRP_CONNTRACK_* group numbers
    (EXP_*: an expectation's, NFNLGRP_CONNTRACK_EXP_NEW / _DESTROY)."""
    NEW, UPDATE, DESTROY = 1, 2, 3
    EXP_NEW, EXP_DESTROY = 4, 6
    names: ClassVar[dict[int, str]] = {1: "NEW", 2: "UPDATE", 3: "DESTROY", 4: "EXP_NEW", 6: "EXP_DESTROY"}


NEW, UPDATE, DESTROY = CtKind.NEW, CtKind.UPDATE, CtKind.DESTROY
EXP_NEW, EXP_DESTROY = CtKind.EXP_NEW, CtKind.EXP_DESTROY
EXPECT_KEY_MARK = b"E"


class CtEvent(NamedTuple):
    """One conntrack message: an event, or a dump entry (kind NEW).

    kind       NEW / UPDATE / DESTROY (ints 1/2/3, the multicast group numbers)
    key        canonical flow identity (module docstring)
    attrs      nfgenmsg + attributes, as the kernel sent them (module docstring)
    portid     nlmsg_pid: the portid of the socket whose request caused the
               event (0 for events caused by packets)
    l4proto    IPPROTO_* of the orig tuple
    src, dst   orig tuple addresses, 4 or 16 bytes
    status     CTA_STATUS or None (absent in some DESTROY events)
    tcp_state  TCP conntrack state (TCP_STATES index) or None

    An expectation (kind EXP_NEW / EXP_DESTROY) follows its master through
    the filters, so l4proto, src and dst are those of the master's orig
    tuple (CTA_EXPECT_MASTER); status is IPS_SRC_NAT | IPS_DST_NAT when it
    carries CTA_EXPECT_NAT (the helper's NAT part ran: the master is NATed),
    else 0; tcp_state is None.
    """
    kind: int
    key: bytes
    attrs: bytes
    portid: int
    l4proto: int
    src: bytes
    dst: bytes
    status: int | None
    tcp_state: int | None


_new_event = tuple.__new__      # skips NamedTuple's Python-level __new__ on the hot path

# decode_into() result bits
DONE, DUMP_INTERRUPTED = 1, 2


def decode_events(buf: bytes) -> list[CtEvent]:
    """Decode a buffer of netlink messages (one recv from an event or dump socket).

    Conntrack NEW/DELETE messages become CtEvents, and so do expectation
    EXP_NEW/EXP_DELETE messages (kinds EXP_NEW, EXP_DESTROY); ACKs, NOOPs and
    messages of other subsystems are skipped; decoding stops at NLMSG_DONE.
    """
    out: list[CtEvent] = []
    decode_into(buf, out)
    return out


def decode_into(buf: bytes, out: list) -> int:
    """decode_events appending to `out`; returns DONE | DUMP_INTERRUPTED bits.

    DONE: an NLMSG_DONE ended the buffer (end of a dump). DUMP_INTERRUPTED:
    some message carried NLM_F_DUMP_INTR (the table changed during the dump;
    the dump may have missed or repeated entries and should be redone).
    """
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    n = len(buf)
    pos = 0
    result = 0
    append = out.append
    unpack_hdr = _HDR.unpack_from
    while pos < n:
        if n - pos < HDR_LEN:
            raise CtDecodeError(f"truncated nlmsghdr at offset {pos}")
        mlen, mtype, mflags, mseq, pid = unpack_hdr(buf, pos)
        if mlen < HDR_LEN or pos + mlen > n:
            raise CtDecodeError(f"bad nlmsg_len {mlen} at offset {pos}")
        if mflags & NLM_F_DUMP_INTR:
            result |= DUMP_INTERRUPTED
        if mtype == CT_NEW or mtype == CT_DELETE:
            # Events: NEW carries NLM_F_CREATE|NLM_F_EXCL, UPDATE no flags, both
            # seq 0. Dump parts (NLM_F_MULTI) and GET replies (our seq) are NEW.
            if mtype == CT_DELETE:
                kind = DESTROY
            elif mflags & (NLM_F_CREATE | NLM_F_MULTI) or mseq:
                kind = NEW
            else:
                kind = UPDATE
            append(_decode_ct(buf, pos, pos + mlen, kind, pid))
        elif mtype == CT_EXP_NEW or mtype == CT_EXP_DELETE:
            append(_decode_exp(buf, pos, pos + mlen, EXP_NEW if mtype == CT_EXP_NEW else EXP_DESTROY, pid))
        elif mtype == NLMSG_ERROR:
            if mlen < HDR_LEN + 4:
                raise CtDecodeError(f"truncated nlmsgerr at offset {pos}")
            err = _ERR.unpack_from(buf, pos + HDR_LEN)[0]
            if err:
                raise CtNetlinkError(-err, mseq)
        elif mtype == NLMSG_DONE:
            # A dump that failed midway ends with DONE carrying -errno.
            if mlen >= HDR_LEN + 4:
                err = _ERR.unpack_from(buf, pos + HDR_LEN)[0]
                if err < 0:
                    raise CtNetlinkError(-err, mseq)
            return result | DONE
        elif mtype == NLMSG_OVERRUN:
            raise CtNetlinkError(_errno.ENOBUFS, mseq)
        pos += (mlen + 3) & ~3
    return result


def _decode_ct(buf: bytes, start: int, end: int, kind: int, pid: int) -> CtEvent:
    """One conntrack message [start, end) into a CtEvent: the hot path.

    Messages of one kind share a shape (the same headers at the same
    offsets); a _DecodePlan made by the general walk once is reused after a
    single big-integer check of all headers, and the fields are then plain
    slices at known offsets.
    """
    attrs = buf[start + HDR_LEN:end]
    global _last_dplan
    plan = _last_dplan
    if plan is None or plan.size != len(attrs) or int.from_bytes(attrs, "little") & plan.mask != plan.expected:
        plan = _last_dplan = _decode_plan(attrs)
    parts = plan.key_get(attrs)
    key = plan.prefix + b"".join(parts) + plan.suffix
    status = None if plan.status < 0 else int.from_bytes(attrs[plan.status:plan.status + 4], "big")
    tcp_state = None if plan.tcp_state < 0 else attrs[plan.tcp_state]
    return _new_event(CtEvent, (kind, key, attrs, pid, attrs[plan.proto], parts[plan.src], parts[plan.src + 1],
                                status, tcp_state))


def _decode_exp(buf: bytes, start: int, end: int, kind: int, pid: int) -> CtEvent:
    """One expectation message [start, end) into a CtEvent (CtEvent says what its fields hold)."""
    attrs = buf[start + HDR_LEN:end]
    if len(attrs) < NFGEN_LEN:
        raise CtDecodeError("truncated nfgenmsg")
    if attrs[0] not in _ADDR_LEN:
        raise CtDecodeError(f"unsupported family {attrs[0]}")
    tup = master = None
    zone = b"\0\0"
    nat = False
    for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t == CTA_EXPECT_TUPLE and tup is None:
            tup = _tuple_key(attrs, s, e)
        elif t == CTA_EXPECT_MASTER and master is None:
            master = _tuple_key(attrs, s, e)
        elif t == CTA_EXPECT_ZONE:
            if e - s != 2:
                raise CtDecodeError("CTA_EXPECT_ZONE is not 2 bytes")
            zone = attrs[s:e]
        elif t == CTA_EXPECT_NAT:
            nat = True
    if tup is None or master is None:
        raise CtDecodeError("expectation without CTA_EXPECT_TUPLE or CTA_EXPECT_MASTER")
    key = EXPECT_KEY_MARK + zone + tup
    n = _ADDR_LEN[attrs[0]]
    return _new_event(CtEvent, (kind, key, attrs, pid, master[1], master[2:2 + n], master[2 + n:2 + 2 * n],
                                IPS_NAT_MASK if nat else 0, None))


def _tuple_key(attrs: bytes, start: int, end: int) -> bytes:
    """family, proto, src, dst, l4 of the tuple whose members are attrs[start:end]: a key without its zone."""
    _zone, proto, src, dst, l4 = _orig_offsets(attrs, start, end, bytearray(len(attrs)))
    if src < 0 or dst < 0 or proto < 0:
        raise CtDecodeError("tuple without source, destination or protocol")
    n = _ADDR_LEN[attrs[0]]
    return (bytes((attrs[0], attrs[proto])) + attrs[src:src + n] + attrs[dst:dst + n]
            + b"".join(attrs[o:o + k] if o >= 0 else b"\0" * k for o, k in l4))


class _DecodePlan(NamedTuple):
    size: int                   # len(attrs)
    mask: int                   # the header bytes (and the family byte) ...
    expected: int               # ... must be these
    prefix: bytes               # b"\0\0" when the zone is absent (0), else b""
    key_get: Callable           # attrs -> key pieces: [zone], family, proto, src, dst, l4 pieces
    suffix: bytes               # zeros for absent l4 fields
    src: int                    # index of src in key_get's result (dst follows)
    proto: int                  # offset of the protocol byte
    status: int                 # offset of the CTA_STATUS value, or -1
    tcp_state: int              # offset of the TCP state byte, or -1


_last_dplan: _DecodePlan | None = None
_dplans: dict[tuple, _DecodePlan] = {}


def _decode_plan(attrs: bytes) -> _DecodePlan:
    key = (len(attrs), attrs[:16])
    plan = _dplans.get(key)
    if plan is None or int.from_bytes(attrs, "little") & plan.mask != plan.expected:
        plan = _build_decode_plan(attrs)
        if len(_dplans) >= 512:
            _dplans.clear()
        _dplans[key] = plan
    return plan


def _build_decode_plan(attrs: bytes) -> _DecodePlan:
    """Walk the top-level attributes (and CTA_TUPLE_ORIG, CTA_PROTOINFO inside) in any order.

    Validates what the hot path relies on and raises CtDecodeError
    otherwise. Everything the walk looks at is a header (or the family
    byte), so it is all in the mask.
    """
    end = len(attrs)
    if end < NFGEN_LEN:
        raise CtDecodeError("truncated nfgenmsg")
    family = attrs[0]
    addr_len = _ADDR_LEN.get(family)
    if addr_len is None:
        raise CtDecodeError(f"unsupported family {family}")
    mask = bytearray(end)
    mask[0] = 0xFF
    orig = None
    zone = status = tcp_state = -1
    a = NFGEN_LEN
    while a + 4 <= end:
        alen, atype = _NLA.unpack_from(attrs, a)
        if alen < 4 or a + alen > end:
            raise CtDecodeError(f"bad attribute length {alen} at offset {a}")
        mask[a:a + 4] = b"\xff\xff\xff\xff"
        t = atype & NLA_TYPE_MASK
        if t == CTA_TUPLE_ORIG and orig is None:
            orig = _orig_offsets(attrs, a + 4, a + alen, mask)
        elif t == CTA_STATUS:
            if alen != 8:
                raise CtDecodeError("CTA_STATUS is not 4 bytes")
            status = a + 4
        elif t == CTA_PROTOINFO:
            tcp_state = _tcp_state_offset(attrs, a + 4, a + alen, mask)
        elif t == CTA_ZONE:
            if alen != 6:
                raise CtDecodeError("CTA_ZONE is not 2 bytes")
            if zone < 0:
                zone = a + 4
        a += (alen + 3) & ~3
    # Like the kernel's nla_parse, 1-3 leftover bytes after the last attribute
    # are ignored (padding of an unaligned last attribute).
    if orig is None:
        raise CtDecodeError("conntrack message without CTA_TUPLE_ORIG")
    tuple_zone, proto, src, dst, l4 = orig
    if src < 0 or dst < 0 or proto < 0:
        raise CtDecodeError("orig tuple without source, destination or protocol")
    if tuple_zone >= 0:
        zone = tuple_zone           # a directional zone: the orig direction's is the identity
    pieces = ([(zone, 2)] if zone >= 0 else []) + [(0, 1), (proto, 1), (src, addr_len), (dst, addr_len)]
    # l4: ports, or ICMP type, code, id; absent fields count as zeros
    while l4 and l4[-1][0] < 0:
        l4.pop()
    suffix = b"\0" * (4 - sum(n for _o, n in l4))
    pieces += l4
    if all(o >= 0 for o, _n in pieces):
        getter = operator.itemgetter(*[slice(o, o + n) for o, n in pieces])     # C speed
    else:   # an absent field before a present one (no kernel does this): the slow way
        getter = lambda a, pieces=tuple(pieces): tuple(a[o:o + n] if o >= 0 else b"\0" * n
                                                          for o, n in pieces)
    m = int.from_bytes(mask, "little")
    return _DecodePlan(end, m, int.from_bytes(attrs, "little") & m, b"" if zone >= 0 else b"\0\0", getter,
                       suffix, 3 if zone >= 0 else 2, proto, status, tcp_state)


def _orig_offsets(attrs: bytes, start: int, end: int, mask: bytearray) -> tuple:
    """(tuple zone, proto, src, dst, l4 [(offset, length)...]) offsets in an orig tuple; -1 if absent."""
    src = dst = proto = zone = -1
    sport = dport = itype = icode = iid = -1
    unpack = _NLA.unpack_from
    a = start
    while a + 4 <= end:
        alen, atype = unpack(attrs, a)
        if alen < 4 or a + alen > end:
            raise CtDecodeError(f"bad tuple attribute length {alen} at offset {a}")
        mask[a:a + 4] = b"\xff\xff\xff\xff"
        t = atype & NLA_TYPE_MASK
        if t == CTA_TUPLE_IP or t == CTA_TUPLE_PROTO:
            b, e = a + 4, a + alen
            while b + 4 <= e:
                blen, btype = unpack(attrs, b)
                if blen < 4 or b + blen > e:
                    raise CtDecodeError(f"bad tuple member length {blen} at offset {b}")
                mask[b:b + 4] = b"\xff\xff\xff\xff"
                bt = btype & NLA_TYPE_MASK
                n = blen - 4
                if t == CTA_TUPLE_IP:
                    if bt in (CTA_IP_V4_SRC, CTA_IP_V6_SRC, CTA_IP_V4_DST, CTA_IP_V6_DST):
                        if n != _ADDR_LEN[attrs[0]]:
                            raise CtDecodeError(f"address length does not match family {attrs[0]}")
                        if bt in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                            src = b + 4
                        else:
                            dst = b + 4
                elif bt == CTA_PROTO_NUM:
                    if n != 1:
                        raise CtDecodeError("CTA_PROTO_NUM is not 1 byte")
                    proto = b + 4
                elif bt in (CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID):
                    if n != 2:
                        raise CtDecodeError(f"proto attribute {bt} is not 2 bytes")
                    if bt == CTA_PROTO_SRC_PORT:
                        sport = b + 4
                    elif bt == CTA_PROTO_DST_PORT:
                        dport = b + 4
                    else:
                        iid = b + 4
                elif bt in (CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMPV6_CODE):
                    if n != 1:
                        raise CtDecodeError("icmp type/code is not 1 byte")
                    if bt in (CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMPV6_TYPE):
                        itype = b + 4
                    else:
                        icode = b + 4
                b += (blen + 3) & ~3
        elif t == CTA_TUPLE_ZONE:
            if alen != 6:
                raise CtDecodeError("CTA_TUPLE_ZONE is not 2 bytes")
            zone = a + 4
        a += (alen + 3) & ~3
    if proto >= 0 and attrs[proto] in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        mask[proto] = 0xFF          # the protocol decides the l4 layout: part of the shape
        l4 = [(itype, 1), (icode, 1), (iid, 2)]
    else:
        if proto >= 0:
            mask[proto] = 0xFF
        l4 = [(sport, 2), (dport, 2)]
    return zone, proto, src, dst, l4


def _tcp_state_offset(attrs: bytes, start: int, end: int, mask: bytearray) -> int:
    """Offset of CTA_PROTOINFO -> CTA_PROTOINFO_TCP -> CTA_PROTOINFO_TCP_STATE, or -1."""
    unpack = _NLA.unpack_from
    a = start
    while a + 4 <= end:
        alen, atype = unpack(attrs, a)
        if alen < 4 or a + alen > end:
            raise CtDecodeError(f"bad protoinfo attribute length {alen} at offset {a}")
        mask[a:a + 4] = b"\xff\xff\xff\xff"
        if atype & NLA_TYPE_MASK == CTA_PROTOINFO_TCP:
            b, e = a + 4, a + alen
            while b + 4 <= e:
                blen, btype = unpack(attrs, b)
                if blen < 4 or b + blen > e:
                    raise CtDecodeError(f"bad tcp protoinfo length {blen} at offset {b}")
                mask[b:b + 4] = b"\xff\xff\xff\xff"
                if btype & NLA_TYPE_MASK == CTA_PROTOINFO_TCP_STATE:
                    if blen != 5:
                        raise CtDecodeError("tcp state is not 1 byte")
                    return b + 4
                b += (blen + 3) & ~3
            return -1
        a += (alen + 3) & ~3
    return -1


# --- attrs as a blob -------------------------------------------------------------

def merge_attrs(old: bytes, new: bytes) -> bytes:
    """new's attributes, plus those of old that new lacks.

    UPDATE events are partial: the kernel sends CTA_PROTOINFO, CTA_LABELS,
    CTA_SEQ_ADJ_* and CTA_HELP only when they changed (or exist). Whoever
    keeps the latest attrs of an entry merges an update into the previous
    state with this, or loses e.g. the TCP window scales.
    """
    new = bytes(new)
    old = bytes(old)
    _check_attrs(new)
    _check_attrs(old)
    parts = [new]
    if len(new) & 3:
        parts.append(b"\0" * (-len(new) & 3))
    have = {t for t, _rt, _s, _e in iter_attrs(new, NFGEN_LEN)}
    for t, _rt, s, e in iter_attrs(old, NFGEN_LEN):
        if t not in have:
            parts.append(old[s - 4:e] + b"\0" * (-(e - s) & 3))
    return b"".join(parts)


def attr_value(attrs: bytes, atype: int) -> bytes | None:
    """Payload of the first top-level attribute of that type, or None."""
    for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t == atype:
            return attrs[s:e]
    return None
