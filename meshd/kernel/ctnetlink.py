"""ctnetlink (conntrack over netlink) codec, sans-I/O, written for the hot path.

Two shapes of an entry travel through meshd:

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

      so 16 bytes for IPv4, 40 for IPv6.

attrs (bytes) the netlink message payload after the nlmsghdr, unmodified:
      the 4-byte nfgenmsg (family, version 0, res_id) then the top-level CTA_*
      attributes exactly as the kernel wrote them. attrs[0] is the family; a
      message is rebuilt by prefixing an nlmsghdr. Nothing is dropped, so
      attributes this module does not know are carried through to the peer.

Events: decode_events() looks only at what the hot path needs: the top-level
attributes, CTA_TUPLE_ORIG (the key), CTA_PROTOINFO (TCP state), CTA_STATUS
and CTA_ZONE. Everything else stays bytes. parse_entry() is the full, slow
decode for display and tests.

Injection: encode_create() / encode_creates() rewrite a replicated entry into
an IPCTNL_MSG_CT_NEW request the kernel accepts (see encode_create for what
the kernel refuses and why each rewrite exists).

Speed: the messages of one kind share a *shape* (the same attribute headers
at the same offsets). Both directions walk the attributes once per shape and
keep a plan (field offsets); the next message of that shape is checked with
one big-integer AND over all its headers and then handled with plain slices.
The walk is a pure function of the headers, so a message whose headers match
is handled exactly as the walk would handle it.

Errors: malformed input raises CtDecodeError, and only that. An NLMSG_ERROR
carrying an errno (or an NLMSG_OVERRUN) in a stream of events raises
CtNetlinkError, a subclass that carries .errno; catching CtDecodeError covers
both.
"""

from __future__ import annotations

import errno as _errno
import operator
import socket
import struct
from typing import Callable, Iterable, Iterator, NamedTuple

# --- netlink -----------------------------------------------------------------

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x8, 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NLA_TYPE_MASK = 0x3FFF
NETLINK_NETFILTER = 12

# --- nfnetlink / ctnetlink ---------------------------------------------------

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
IPCTNL_MSG_CT_GET_CTRZERO, IPCTNL_MSG_CT_GET_STATS_CPU, IPCTNL_MSG_CT_GET_STATS = 3, 4, 5
CT_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW          # nlmsg_type values
CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
CT_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3

# enum ctattr_type
(CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_HELP, CTA_NAT_SRC,
 CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_USE, CTA_ID,
 CTA_NAT_DST, CTA_TUPLE_MASTER, CTA_SEQ_ADJ_ORIG, CTA_SEQ_ADJ_REPLY, CTA_SECMARK,
 CTA_ZONE, CTA_SECCTX, CTA_TIMESTAMP, CTA_MARK_MASK, CTA_LABELS, CTA_LABELS_MASK,
 CTA_SYNPROXY, CTA_FILTER, CTA_STATUS_MASK, CTA_TIMESTAMP_EVENT) = range(1, 28)
# enum ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
(CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE,
 CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE) = range(1, 10)
# enum ctattr_protoinfo and its members
CTA_PROTOINFO_TCP, CTA_PROTOINFO_DCCP, CTA_PROTOINFO_SCTP = 1, 2, 3
(CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, CTA_PROTOINFO_TCP_WSCALE_REPLY,
 CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY) = range(1, 6)
CTA_PROTOINFO_DCCP_STATE, CTA_PROTOINFO_DCCP_ROLE, CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ = 1, 2, 3
CTA_PROTOINFO_SCTP_STATE, CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, CTA_PROTOINFO_SCTP_VTAG_REPLY = 1, 2, 3
# counters, timestamp, NAT, seq adjust, helper, secctx, synproxy
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 1, 2, 3, 4
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO, CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = 1, 2, 3, 4, 5
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
CTA_SEQADJ_CORRECTION_POS, CTA_SEQADJ_OFFSET_BEFORE, CTA_SEQADJ_OFFSET_AFTER = 1, 2, 3
CTA_HELP_NAME, CTA_HELP_INFO = 1, 2
CTA_SECCTX_NAME = 1
CTA_SYNPROXY_ISN, CTA_SYNPROXY_ITS, CTA_SYNPROXY_TSOFF = 1, 2, 3

# enum ip_conntrack_status
IPS_EXPECTED, IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 0, 1 << 1, 1 << 2, 1 << 3
IPS_SRC_NAT, IPS_DST_NAT, IPS_SEQ_ADJUST = 1 << 4, 1 << 5, 1 << 6
IPS_SRC_NAT_DONE, IPS_DST_NAT_DONE, IPS_DYING = 1 << 7, 1 << 8, 1 << 9
IPS_FIXED_TIMEOUT, IPS_TEMPLATE, IPS_UNTRACKED, IPS_HELPER = 1 << 10, 1 << 11, 1 << 12, 1 << 13
IPS_OFFLOAD, IPS_HW_OFFLOAD = 1 << 14, 1 << 15
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT
IPS_NAMES = ("EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
             "SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT",
             "TEMPLATE", "UNTRACKED", "HELPER", "OFFLOAD", "HW_OFFLOAD")

# Status bits encode_create() passes to the kernel (measured on 6.18, see
# encode_create and tests/lab/test_conntrack_lab.py::test_status_bits_on_create).
# CONFIRMED must be present: the kernel sets it on the new entry before it
# applies CTA_STATUS and refuses (EBUSY) a status that would clear it.
# EXPECTED and DYING make the kernel answer EBUSY. The NAT, NAT_DONE,
# SEQ_ADJUST, TEMPLATE, UNTRACKED and OFFLOAD bits are silently ignored: the
# kernel derives them (CTA_NAT_*, CTA_SEQ_ADJ_*), so they are dropped here to
# keep the request honest. HELPER is dropped too: the helper comes from CTA_HELP.
IPS_SETTABLE = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED | IPS_FIXED_TIMEOUT

# TCP conntrack states (enum tcp_conntrack) and per-direction flags
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
TCP_CONNTRACK_ESTABLISHED = 3
IP_CT_TCP_FLAG_WINDOW_SCALE, IP_CT_TCP_FLAG_SACK_PERM, IP_CT_TCP_FLAG_CLOSE_INIT = 0x01, 0x02, 0x04
IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED = 0x08, 0x10
IP_CT_TCP_FLAG_MAXACK_SET, IP_CT_EXP_CHALLENGE_ACK, IP_CT_TCP_SIMULTANEOUS_OPEN = 0x20, 0x40, 0x80
TCP_FLAG_NAMES = ("WINDOW_SCALE", "SACK_PERM", "CLOSE_INIT", "BE_LIBERAL",
                  "DATA_UNACKNOWLEDGED", "MAXACK_SET", "CHALLENGE_ACK", "SIMULTANEOUS_OPEN")
SCTP_STATES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED", "SHUTDOWN_SENT",
               "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT", "HEARTBEAT_ACKED")

AF_UNSPEC, AF_INET, AF_INET6 = 0, socket.AF_INET, socket.AF_INET6
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
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


class CtKind:
    """Event kinds; the values are the NFNLGRP_CONNTRACK_* group numbers."""
    NEW, UPDATE, DESTROY = 1, 2, 3
    names = {1: "NEW", 2: "UPDATE", 3: "DESTROY"}


NEW, UPDATE, DESTROY = CtKind.NEW, CtKind.UPDATE, CtKind.DESTROY


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

    Conntrack NEW/DELETE messages become CtEvents; ACKs, NOOPs and messages of
    other subsystems are skipped; decoding stops at NLMSG_DONE.
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
        getter = lambda a, pieces=tuple(pieces): tuple(a[o:o + n] if o >= 0 else b"\0" * n  # noqa: E731
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


# --- generic attribute walking (not the hot path) -----------------------------

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


# --- full decode for display and tests ----------------------------------------

def _addr_text(family: int, raw: bytes) -> str:
    try:
        return socket.inet_ntop(family, raw)
    except (ValueError, OSError):
        return raw.hex()


def _u(raw: bytes, what: str) -> int:
    if len(raw) not in (1, 2, 4, 8):
        raise CtDecodeError(f"{what}: unexpected length {len(raw)}")
    return int.from_bytes(raw, "big")


def _unknown(t: int, raw_type: int, buf: bytes, s: int, e: int) -> dict:
    return {"type": t, "flags": raw_type & ~NLA_TYPE_MASK, "hex": buf[s:e].hex()}


def _parse_tuple(family: int, buf: bytes, start: int, end: int) -> dict:
    out: dict = {}
    unknown = []
    for t, rt, s, e in iter_attrs(buf, start, end):
        if t == CTA_TUPLE_IP:
            for it, irt, is_, ie in iter_attrs(buf, s, e):
                name = {CTA_IP_V4_SRC: "src", CTA_IP_V4_DST: "dst",
                        CTA_IP_V6_SRC: "src", CTA_IP_V6_DST: "dst"}.get(it)
                if name is None:
                    unknown.append(_unknown(it, irt, buf, is_, ie))
                else:
                    fam = AF_INET if it in (CTA_IP_V4_SRC, CTA_IP_V4_DST) else AF_INET6
                    if ie - is_ != _ADDR_LEN[fam]:
                        raise CtDecodeError(f"address attribute {it} has length {ie - is_}")
                    out[name] = _addr_text(fam, buf[is_:ie])
        elif t == CTA_TUPLE_PROTO:
            names = {CTA_PROTO_NUM: "proto", CTA_PROTO_SRC_PORT: "sport", CTA_PROTO_DST_PORT: "dport",
                     CTA_PROTO_ICMP_ID: "icmp_id", CTA_PROTO_ICMP_TYPE: "icmp_type",
                     CTA_PROTO_ICMP_CODE: "icmp_code", CTA_PROTO_ICMPV6_ID: "icmp_id",
                     CTA_PROTO_ICMPV6_TYPE: "icmp_type", CTA_PROTO_ICMPV6_CODE: "icmp_code"}
            for pt, prt, ps, pe in iter_attrs(buf, s, e):
                if pt in names:
                    out[names[pt]] = _u(buf[ps:pe], "tuple proto")
                else:
                    unknown.append(_unknown(pt, prt, buf, ps, pe))
        elif t == CTA_TUPLE_ZONE:
            out["zone"] = _u(buf[s:e], "tuple zone")
        else:
            unknown.append(_unknown(t, rt, buf, s, e))
    if unknown:
        out["unknown"] = unknown
    return out


def _parse_members(buf: bytes, s: int, e: int, names: dict[int, str]) -> dict:
    out: dict = {}
    for t, rt, ms, me in iter_attrs(buf, s, e):
        if t in names:
            out[names[t]] = _u(buf[ms:me], names[t])
        else:
            out.setdefault("unknown", []).append(_unknown(t, rt, buf, ms, me))
    return out


def _flag_names(value: int, names: tuple[str, ...]) -> list[str]:
    return [names[i] if i < len(names) else f"BIT{i}" for i in range(32) if value >> i & 1]


def _parse_protoinfo(buf: bytes, s: int, e: int) -> dict:
    out: dict = {}
    for t, rt, ps, pe in iter_attrs(buf, s, e):
        if t == CTA_PROTOINFO_TCP:
            tcp: dict = {}
            for tt, trt, ts, te in iter_attrs(buf, ps, pe):
                if tt == CTA_PROTOINFO_TCP_STATE:
                    st = _u(buf[ts:te], "tcp state")
                    tcp["state"] = TCP_STATES[st] if st < len(TCP_STATES) else st
                elif tt == CTA_PROTOINFO_TCP_WSCALE_ORIGINAL:
                    tcp["wscale_orig"] = _u(buf[ts:te], "wscale")
                elif tt == CTA_PROTOINFO_TCP_WSCALE_REPLY:
                    tcp["wscale_reply"] = _u(buf[ts:te], "wscale")
                elif tt in (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY):
                    if te - ts != 2:
                        raise CtDecodeError("tcp flags are not 2 bytes")
                    flags, mask = buf[ts], buf[ts + 1]
                    side = "orig" if tt == CTA_PROTOINFO_TCP_FLAGS_ORIGINAL else "reply"
                    tcp[f"flags_{side}"] = {"flags": flags, "mask": mask,
                                            "names": _flag_names(flags, TCP_FLAG_NAMES)}
                else:
                    tcp.setdefault("unknown", []).append(_unknown(tt, trt, buf, ts, te))
            out["tcp"] = tcp
        elif t == CTA_PROTOINFO_SCTP:
            sctp = _parse_members(buf, ps, pe, {CTA_PROTOINFO_SCTP_STATE: "state",
                                                CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: "vtag_orig",
                                                CTA_PROTOINFO_SCTP_VTAG_REPLY: "vtag_reply"})
            if isinstance(sctp.get("state"), int) and sctp["state"] < len(SCTP_STATES):
                sctp["state"] = SCTP_STATES[sctp["state"]]
            out["sctp"] = sctp
        elif t == CTA_PROTOINFO_DCCP:
            out["dccp"] = _parse_members(buf, ps, pe, {CTA_PROTOINFO_DCCP_STATE: "state",
                                                       CTA_PROTOINFO_DCCP_ROLE: "role",
                                                       CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ: "handshake_seq"})
        else:
            out.setdefault("unknown", []).append(_unknown(t, rt, buf, ps, pe))
    return out


def _parse_nat(family: int, buf: bytes, s: int, e: int) -> dict:
    out: dict = {}
    for t, rt, ns, ne in iter_attrs(buf, s, e):
        if t in (CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP):
            fam = AF_INET if t in (CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP) else AF_INET6
            if ne - ns != _ADDR_LEN[fam]:
                raise CtDecodeError("NAT address of the wrong length")
            out["min_ip" if t in (CTA_NAT_V4_MINIP, CTA_NAT_V6_MINIP) else "max_ip"] = \
                _addr_text(fam, buf[ns:ne])
        elif t == CTA_NAT_PROTO:
            out.update(_parse_members(buf, ns, ne, {CTA_PROTONAT_PORT_MIN: "min_port",
                                                    CTA_PROTONAT_PORT_MAX: "max_port"}))
        else:
            out.setdefault("unknown", []).append(_unknown(t, rt, buf, ns, ne))
    return out


def parse_entry(attrs: bytes) -> dict:
    """Full decode of an entry's attrs (nfgenmsg + attributes) into JSON-able data.

    For `meshctl dump` and tests; the hot path never calls it. Attributes this
    module does not know appear under "unknown" as {"type", "flags", "hex"}.
    """
    attrs = bytes(attrs)
    _check_attrs(attrs)
    family = attrs[0]
    out: dict = {"family": {AF_INET: "ipv4", AF_INET6: "ipv6"}[family]}
    seq_names = {CTA_SEQADJ_CORRECTION_POS: "correction_pos",
                 CTA_SEQADJ_OFFSET_BEFORE: "offset_before", CTA_SEQADJ_OFFSET_AFTER: "offset_after"}
    counter_names = {CTA_COUNTERS_PACKETS: "packets", CTA_COUNTERS_BYTES: "bytes",
                     CTA_COUNTERS32_PACKETS: "packets", CTA_COUNTERS32_BYTES: "bytes"}
    scalars = {CTA_TIMEOUT: "timeout", CTA_MARK: "mark", CTA_USE: "use", CTA_ID: "id",
               CTA_SECMARK: "secmark", CTA_ZONE: "zone", CTA_MARK_MASK: "mark_mask",
               CTA_STATUS_MASK: "status_mask"}
    for t, rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        raw = attrs[s:e]
        if t in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_TUPLE_MASTER):
            out[{CTA_TUPLE_ORIG: "orig", CTA_TUPLE_REPLY: "reply", CTA_TUPLE_MASTER: "master"}[t]] = \
                _parse_tuple(family, attrs, s, e)
        elif t == CTA_STATUS:
            out["status"] = _u(raw, "status")
            out["status_flags"] = _flag_names(out["status"], IPS_NAMES)
        elif t in scalars:
            out[scalars[t]] = _u(raw, scalars[t])
        elif t == CTA_PROTOINFO:
            out.update(_parse_protoinfo(attrs, s, e))
        elif t in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
            side = "orig" if t == CTA_COUNTERS_ORIG else "reply"
            out[f"counters_{side}"] = _parse_members(attrs, s, e, counter_names)
        elif t in (CTA_SEQ_ADJ_ORIG, CTA_SEQ_ADJ_REPLY):
            side = "orig" if t == CTA_SEQ_ADJ_ORIG else "reply"
            out[f"seq_adj_{side}"] = _parse_members(attrs, s, e, seq_names)
        elif t in (CTA_NAT_SRC, CTA_NAT_DST):
            out["nat_src" if t == CTA_NAT_SRC else "nat_dst"] = _parse_nat(family, attrs, s, e)
        elif t == CTA_HELP:
            helper: dict = {}
            for ht, hrt, hs, he in iter_attrs(attrs, s, e):
                if ht == CTA_HELP_NAME:
                    helper["name"] = attrs[hs:he].split(b"\0", 1)[0].decode("ascii", "replace")
                elif ht == CTA_HELP_INFO:
                    helper["info"] = attrs[hs:he].hex()
                else:
                    helper.setdefault("unknown", []).append(_unknown(ht, hrt, attrs, hs, he))
            out["helper"] = helper
        elif t in (CTA_LABELS, CTA_LABELS_MASK):
            out["labels" if t == CTA_LABELS else "labels_mask"] = raw.hex()
        elif t == CTA_TIMESTAMP:
            out["timestamp"] = _parse_members(attrs, s, e, {CTA_TIMESTAMP_START: "start",
                                                            CTA_TIMESTAMP_STOP: "stop"})
        elif t == CTA_TIMESTAMP_EVENT:
            out["timestamp_event"] = _u(raw, "timestamp event")
        elif t == CTA_SECCTX:
            for st, srt, ss, se in iter_attrs(attrs, s, e):
                if st == CTA_SECCTX_NAME:
                    out["secctx"] = attrs[ss:se].split(b"\0", 1)[0].decode("ascii", "replace")
        elif t == CTA_SYNPROXY:
            out["synproxy"] = _parse_members(attrs, s, e, {CTA_SYNPROXY_ISN: "isn",
                                                           CTA_SYNPROXY_ITS: "its",
                                                           CTA_SYNPROXY_TSOFF: "tsoff"})
        else:
            out.setdefault("unknown", []).append(_unknown(t, rt, attrs, s, e))
    return out


# --- tuples as raw fields (for the encoders) ----------------------------------

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


# --- requests -------------------------------------------------------------------

def _message(mtype: int, flags: int, seq: int, body: bytes, portid: int = 0) -> bytes:
    return _HDR.pack(HDR_LEN + len(body), mtype, flags, seq, portid) + body


def _nfgen(family: int) -> bytes:
    return bytes((family, 0, 0, 0))


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


# --- create -----------------------------------------------------------------------

# Attributes never copied into a create/update request. The kernel (6.18)
# refuses CTA_TIMESTAMP_EVENT, which every event carries, with EINVAL. It
# ignores CTA_ID, CTA_USE, counters, CTA_TIMESTAMP, CTA_SECMARK/SECCTX and the
# masks on create; they are dropped anyway: CTA_ID names an entry of the
# peer's kernel, a CTA_MARK_MASK would turn the mark into a partial update,
# and the request gets smaller. (tests/lab/test_conntrack_lab.py checks each.)
NOT_INJECTED = frozenset({CTA_ID, CTA_USE, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_TIMESTAMP,
                          CTA_TIMESTAMP_EVENT, CTA_SECCTX, CTA_SECMARK, CTA_MARK_MASK,
                          CTA_LABELS_MASK, CTA_FILTER, CTA_STATUS_MASK})
# What an *update* of an existing entry may not carry: NAT and the master only
# exist at creation (the kernel answers EOPNOTSUPP), and the helper cannot be
# attached to an existing entry (EOPNOTSUPP / EBUSY).
CREATE_ONLY = frozenset({CTA_NAT_SRC, CTA_NAT_DST, CTA_TUPLE_MASTER, CTA_HELP})

# TCP per-direction flags worth replicating. DATA_UNACKNOWLEDGED, MAXACK_SET
# and CHALLENGE_ACK describe window tracking data (td_maxack, ...) that is not
# replicated, so they would describe zeros on the taking-over node.
_TCP_FLAGS_KEPT = (IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_CLOSE_INIT
                   | IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_SIMULTANEOUS_OPEN)

_CT_NEW_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
_TIMEOUT_ATTR = _NLA.pack(8, CTA_TIMEOUT | NLA_F_NET_BYTEORDER)
_STATUS_ATTR = _NLA.pack(8, CTA_STATUS | NLA_F_NET_BYTEORDER)


def _tcp_protoinfo(buf: bytes | None, s: int, e: int, liberal: bool) -> bytes:
    """CTA_PROTOINFO for TCP with usable flag masks (and BE_LIBERAL when asked).

    [s, e) is the payload of the entry's CTA_PROTOINFO (or buf is None).
    The kernel dumps the per-direction flags with mask 0, and applies only the
    bits in the mask (nlattr_to_tcp): copied as-is, WINDOW_SCALE would never be
    set, and the kernel then also ignores the window scale values.
    """
    extra = IP_CT_TCP_FLAG_BE_LIBERAL if liberal else 0
    state = wso = wsr = None
    fo = fr = 0
    if buf is not None:
        for t, _rt, ps, pe in iter_attrs(buf, s, e):
            if t != CTA_PROTOINFO_TCP:
                continue
            for tt, _trt, ts, te in iter_attrs(buf, ps, pe):
                if tt == CTA_PROTOINFO_TCP_STATE:
                    state = buf[ts:te]
                elif tt == CTA_PROTOINFO_TCP_WSCALE_ORIGINAL:
                    wso = buf[ts:te]
                elif tt == CTA_PROTOINFO_TCP_WSCALE_REPLY:
                    wsr = buf[ts:te]
                elif tt == CTA_PROTOINFO_TCP_FLAGS_ORIGINAL and te - ts == 2:
                    fo = buf[ts]
                elif tt == CTA_PROTOINFO_TCP_FLAGS_REPLY and te - ts == 2:
                    fr = buf[ts]
    fo = (fo & _TCP_FLAGS_KEPT) | extra
    fr = (fr & _TCP_FLAGS_KEPT) | extra
    members = []
    if state is not None:
        members.append(nla(CTA_PROTOINFO_TCP_STATE, state))
    if wso is not None and wsr is not None:
        members += [nla(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, wso), nla(CTA_PROTOINFO_TCP_WSCALE_REPLY, wsr)]
    members += [nla(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes((fo, fo))),
                nla(CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes((fr, fr)))]
    return nest(CTA_PROTOINFO, nest(CTA_PROTOINFO_TCP, *members))


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


def encode_create(attrs: bytes, seq: int, *, timeout: int | None = None, liberal_tcp: bool = True,
                  flags: int = _CT_NEW_FLAGS, drop: Iterable[int] = (), nat: bool = True,
                  portid: int = 0) -> bytes:
    """IPCTNL_MSG_CT_NEW that creates the entry, or updates it if it exists.

    No NLM_F_EXCL: an existing entry is updated instead of EEXIST. Rewrites
    for injection (each measured against the 6.18 kernel, see
    tests/lab/test_conntrack_lab.py):

    - NOT_INJECTED attributes are dropped (CTA_ID, CTA_USE, counters, ...).
    - CTA_STATUS keeps only IPS_SETTABLE bits and always has CONFIRMED (see
      IPS_SETTABLE for what the kernel refuses).
    - TCP: CTA_PROTOINFO gets flag masks so WINDOW_SCALE/SACK_PERM and the
      window scales apply, and BE_LIBERAL in both directions (liberal_tcp):
      the window tracking data is not replicated, and without BE_LIBERAL the
      first packets after a takeover can be judged out of window and dropped.
    - NAT (nat=True): a reply tuple that is not the inverse of the orig tuple
      becomes CTA_NAT_DST / CTA_NAT_SRC (see _nat_from_tuples).
    - timeout: the remaining lifetime in seconds replaces CTA_TIMEOUT. The
      kernel refuses a create without CTA_TIMEOUT (EINVAL).
    - drop: more attribute types to leave out (the committer's retries use
      CREATE_ONLY for entries that already exist).

    Attributes this module does not know are passed on: the kernel ignores
    types it does not know, and a newer kernel on both nodes may need them.
    """
    out = encode_creates((attrs,), seq, timeout, liberal_tcp=liberal_tcp, flags=flags, drop=drop,
                         nat=nat, portid=portid, strict=True)
    return out[0]


def encode_creates(entries, first_seq: int, timeouts=None, *, liberal_tcp: bool = True,
                   flags: int = _CT_NEW_FLAGS, drop: Iterable[int] = (), nat: bool = True,
                   portid: int = 0, strict: bool = False) -> list:
    """encode_create for many entries, with seq first_seq, first_seq + 1, ...

    timeouts: None, one int for all, or a sequence parallel to entries
    (None items keep the entry's CTA_TIMEOUT). An entry that is not
    well-formed gives None in its place (strict=False) or raises CtDecodeError.

    Faster per entry than encode_create: consecutive entries of the same
    shape (the usual case: a dump, a peer's batch) reuse one plan without a
    cache lookup.
    """
    dropped = NOT_INJECTED.union(drop) if drop else NOT_INJECTED
    per_entry = timeouts is not None and not isinstance(timeouts, int)
    caches = _caches[bool(liberal_tcp)]
    out = []
    append = out.append
    from_bytes = int.from_bytes
    plan = None
    plan_len = -1
    plan_keep = None
    seq = first_seq
    for i, attrs in enumerate(entries):
        timeout = timeouts[i] if per_entry else timeouts
        if not isinstance(attrs, bytes):
            attrs = bytes(attrs)
        keep = timeout is None
        try:
            if plan is None or len(attrs) != plan_len or keep is not plan_keep \
                    or from_bytes(attrs, "little") & plan.mask != plan.expected:
                plan = _get_plan(attrs, dropped, keep)
                plan_len, plan_keep = len(attrs), keep
            append(_apply(plan, attrs, seq, timeout, flags, nat, portid, dropped, caches))
        except CtDecodeError:
            if strict:
                raise
            plan = None
            append(None)
        seq += 1
    return out


def _apply(plan: "_Plan", attrs: bytes, seq: int, timeout: int | None, flags: int, nat: bool, portid: int,
           dropped: frozenset, caches: tuple) -> bytes:
    """The create message for attrs, whose headers match the plan."""
    liberal, status_cache, pi_cache, timeout_cache = caches
    nfgen = _NFGEN.get(attrs[0])
    if nfgen is None:
        raise CtDecodeError(f"unsupported family {attrs[0]}")
    parts = [nfgen]
    parts += [attrs[s:e] for s, e in plan.runs]
    if plan.tail_pad:
        parts.append(plan.tail_pad)
    if plan.status >= 0:
        raw = attrs[plan.status:plan.status + 4]
        attr = status_cache.get(raw)
        if attr is None:
            attr = _STATUS_ATTR + _BE32.pack((_BE32.unpack(raw)[0] & IPS_SETTABLE) | IPS_CONFIRMED)
            _remember(status_cache, raw, attr)
        parts.append(attr)
    if plan.proto >= 0:
        proto = attrs[plan.proto]
    else:
        proto = _tuple_fields(attrs, plan.orig[0] + 4, plan.orig[1]).proto
    if plan.reply is not None:
        rs, re_ = plan.reply
        reply_raw = None
        if nat and not plan.has_nat and CTA_NAT_SRC not in dropped:
            nc = plan.nat_check
            if nc is not None:
                # no NAT: the reply tuple is the inverse of the orig tuple
                os_, od, rsrc, rdst, n, op1, op2, rp1, rp2, icmp = nc
                natted = not (attrs[os_:os_ + n] == attrs[rdst:rdst + n] and attrs[od:od + n] == attrs[rsrc:rsrc + n]
                              and (attrs[op1:op1 + 2] == attrs[rp1:rp1 + 2] if icmp else
                                   attrs[op1:op1 + 2] == attrs[rp2:rp2 + 2] and attrs[op2:op2 + 2] == attrs[rp1:rp1 + 2]))
            else:
                natted = True
            if natted:
                if plan.splice:
                    unnat, nats = _nat_spliced(attrs, rs, re_, nc)
                else:
                    unnat, nats = _nat_from_tuples(attrs[0], _tuple_fields(attrs, plan.orig[0] + 4, plan.orig[1]),
                                                   _tuple_fields(attrs, rs + 4, re_))
                if nats:
                    reply_raw = unnat
                    parts += nats
        parts.append(reply_raw or attrs[rs:re_] + b"\0" * (-(re_ - rs) & 3))
    pi = plan.protoinfo
    if proto == IPPROTO_TCP and CTA_PROTOINFO not in dropped:
        if pi is None:
            parts.append(pi_cache[None])
        else:
            raw = attrs[pi[0] - 4:pi[1]]
            out = pi_cache.get(raw)
            if out is None:
                out = _tcp_protoinfo(raw, 4, len(raw), liberal)
                _remember(pi_cache, raw, out)
            parts.append(out)
    elif pi is not None:
        raw = attrs[pi[0] - 4:pi[1]]
        parts.append(raw + b"\0" * (-len(raw) & 3))
    if timeout is not None:
        attr = timeout_cache.get(timeout)
        if attr is None:
            attr = _TIMEOUT_ATTR + _BE32.pack(max(0, min(int(timeout), 0xFFFFFFFF)))
            _remember(timeout_cache, timeout, attr)
        parts.append(attr)
    body = b"".join(parts)
    return _HDR.pack(HDR_LEN + len(body), CT_NEW, flags, seq & 0xFFFFFFFF, portid) + body


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


def _remember(cache: dict, key, value) -> None:
    # Status words, TCP protoinfo and timeouts repeat across entries; the
    # bound keeps a stream of distinct values (a hostile peer) from growing it.
    if len(cache) >= 4096:
        cache.clear()
    cache[key] = value


class _Plan(NamedTuple):
    """How encode_create rewrites attrs of one shape.

    The walk over the attributes is fully determined by their headers, so a
    plan made once is valid for any attrs of the same length whose headers
    are the same at the same offsets: the top-level ones and those inside
    the tuples. One big-integer AND checks them all at once
    (int(attrs) & mask == expected), much cheaper than any per-field check.
    A dump or an event stream has a handful of shapes, so the per-entry
    Python walk is gone; what remains are slices at known offsets.
    """
    mask: int
    expected: int
    runs: tuple                     # (start, end) copied verbatim, adjacent ones merged
    tail_pad: bytes                 # padding of an unpadded last attribute that is copied
    status: int                     # offset of the CTA_STATUS value, or -1
    orig: tuple                     # (start, end) of CTA_TUPLE_ORIG, header included
    proto: int                      # offset of the orig l4 protocol byte, or -1 (then parse)
    reply: tuple | None
    nat_check: tuple | None         # offsets to compare orig and reply fields
    splice: bool                    # _nat_spliced applies
    protoinfo: tuple | None         # (start, end) of the CTA_PROTOINFO payload
    has_nat: bool                   # the attrs carry CTA_NAT_* already


_plans: dict[tuple, _Plan] = {}
# liberal_tcp -> (liberal_tcp, status cache, TCP protoinfo cache, timeout cache)
_caches = {True: (True, {}, {}, {}), False: (False, {}, {}, {})}


def _get_plan(attrs: bytes, dropped: frozenset, keep_timeout: bool) -> _Plan:
    key = (len(attrs), attrs[:16], dropped, keep_timeout)
    plan = _plans.get(key)
    if plan is None or int.from_bytes(attrs, "little") & plan.mask != plan.expected:
        plan = _plan(attrs, dropped, keep_timeout)
        if len(_plans) >= 512:          # a bound, not an LRU: shapes are few
            _plans.clear()
        _plans[key] = plan
    return plan


def _plan(attrs: bytes, dropped: frozenset, keep_timeout: bool) -> _Plan:
    end = len(attrs)
    _check_attrs(attrs)
    mask = bytearray(end)
    runs: list[list[int]] = []
    tail_pad = b""
    status = proto = -1
    orig = reply = protoinfo = None
    fields = {}                         # CTA_TUPLE_ORIG / _REPLY -> (start, end) + _orig_offsets()
    has_nat = False

    a = NFGEN_LEN
    while a + 4 <= end:
        alen, atype = _NLA.unpack_from(attrs, a)
        if alen < 4 or a + alen > end:
            raise CtDecodeError(f"bad attribute length {alen} at offset {a}")
        mask[a:a + 4] = b"\xff\xff\xff\xff"
        t = atype & NLA_TYPE_MASK
        nxt = a + ((alen + 3) & ~3)
        copy = False
        if t in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY) and t not in fields:
            # the tuple's inner headers (and protocol) are part of the shape
            fields[t] = (a, a + alen) + _orig_offsets(attrs, a + 4, a + alen, mask)
        if t in dropped:
            pass
        elif t == CTA_TUPLE_REPLY:
            if reply is None:
                reply = (a, a + alen)
        elif t == CTA_STATUS:
            if alen != 8:
                raise CtDecodeError("CTA_STATUS is not 4 bytes")
            status = a + 4
        elif t == CTA_PROTOINFO:
            protoinfo = (a + 4, a + alen)
        elif t == CTA_TIMEOUT and not keep_timeout:
            pass
        else:
            if t == CTA_TUPLE_ORIG:
                if orig is not None:
                    raise CtDecodeError("two CTA_TUPLE_ORIG")
                orig = (a, a + alen)
            elif t == CTA_NAT_SRC or t == CTA_NAT_DST:
                has_nat = True
            copy = True
        if copy:
            stop = min(nxt, end)
            if nxt > end:
                tail_pad = b"\0" * (nxt - end)
            if runs and runs[-1][1] == a:
                runs[-1][1] = stop
            else:
                runs.append([a, stop])
        a = nxt
    if orig is None:
        raise CtDecodeError("attrs without CTA_TUPLE_ORIG")
    nat_check = None
    splice = False
    o, r = fields.get(CTA_TUPLE_ORIG), fields.get(CTA_TUPLE_REPLY)
    if o is not None and o[3] >= 0:
        proto = o[3]
    if o is not None and r is not None and reply is not None and min(o[3:6] + r[3:6]) >= 0 \
            and attrs[o[3]] == attrs[r[3]]:
        # (start, end, zone, proto, src, dst, l4 [(offset, length)]) of each tuple
        icmp = attrs[o[3]] in (IPPROTO_ICMP, IPPROTO_ICMPV6)
        (o1, _), (o2, _) = (o[6][2], (-1, 0)) if icmp else o[6]
        (r1, _), (r2, _) = (r[6][2], (-1, 0)) if icmp else r[6]
        if min(o1, r1) >= 0 and (icmp or min(o2, r2) >= 0):
            nat_check = (o[4], o[5], r[4], r[5], _ADDR_LEN[attrs[0]], o1, o2, r1, r2, icmp)
            # the un-NATed reply can be spliced when its fields come in the kernel's order
            splice = not icmp and r[0] < r[4] < r[5] < r1 < r2 < r[1]
    m = int.from_bytes(mask, "little")
    return _Plan(m, int.from_bytes(attrs, "little") & m, tuple(map(tuple, runs)), tail_pad, status,
                 orig, proto, reply, nat_check, splice, protoinfo, has_nat)


def rewrite_timeout(attrs: bytes, seconds: int) -> bytes:
    """attrs with CTA_TIMEOUT set to `seconds` (replaced, or appended if absent)."""
    attrs = bytes(attrs)
    _check_attrs(attrs)
    parts = [attrs[:NFGEN_LEN]]
    for t, _rt, s, e in iter_attrs(attrs, NFGEN_LEN):
        if t != CTA_TIMEOUT:
            parts.append(attrs[s - 4:e] + b"\0" * (-(e - s) & 3))
    parts.append(_TIMEOUT_ATTR + _BE32.pack(max(0, min(int(seconds), 0xFFFFFFFF))))
    return b"".join(parts)


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


_NFGEN = {AF_INET: _nfgen(AF_INET), AF_INET6: _nfgen(AF_INET6)}
_NAT_RANGE = _nat_range_layouts()
for _liberal in (True, False):      # a TCP entry without protoinfo (partial update)
    _caches[_liberal][2][None] = _tcp_protoinfo(None, 0, 0, _liberal)
