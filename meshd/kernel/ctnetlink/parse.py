"""The full decode of an entry, for `meshctl dump`, the control socket and tests.

Owns: parse_entry() (attrs into JSON-able data: addresses as text, status
and TCP flags by name, NAT ranges, counters, helper, labels, ...) and its
helpers. Attributes it does not know appear under "unknown" as
{"type", "flags", "hex"}.

Must not: run on the event path (it is slow by design: the hot path is
events.py, which carries the attributes as bytes), or be needed to build a
request: the encoders read attrs through their own plans.
"""

from __future__ import annotations

import socket

from .constants import (
    AF_INET,
    AF_INET6,
    CTA_COUNTERS32_BYTES,
    CTA_COUNTERS32_PACKETS,
    CTA_COUNTERS_BYTES,
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_PACKETS,
    CTA_COUNTERS_REPLY,
    CTA_HELP,
    CTA_HELP_INFO,
    CTA_HELP_NAME,
    CTA_ID,
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_LABELS,
    CTA_LABELS_MASK,
    CTA_MARK,
    CTA_MARK_MASK,
    CTA_NAT_DST,
    CTA_NAT_PROTO,
    CTA_NAT_SRC,
    CTA_NAT_V4_MAXIP,
    CTA_NAT_V4_MINIP,
    CTA_NAT_V6_MAXIP,
    CTA_NAT_V6_MINIP,
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
    CTA_PROTOINFO_DCCP,
    CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ,
    CTA_PROTOINFO_DCCP_ROLE,
    CTA_PROTOINFO_DCCP_STATE,
    CTA_PROTOINFO_SCTP,
    CTA_PROTOINFO_SCTP_STATE,
    CTA_PROTOINFO_SCTP_VTAG_ORIGINAL,
    CTA_PROTOINFO_SCTP_VTAG_REPLY,
    CTA_PROTOINFO_TCP,
    CTA_PROTOINFO_TCP_FLAGS_ORIGINAL,
    CTA_PROTOINFO_TCP_FLAGS_REPLY,
    CTA_PROTOINFO_TCP_STATE,
    CTA_PROTOINFO_TCP_WSCALE_ORIGINAL,
    CTA_PROTOINFO_TCP_WSCALE_REPLY,
    CTA_PROTONAT_PORT_MAX,
    CTA_PROTONAT_PORT_MIN,
    CTA_SECCTX,
    CTA_SECCTX_NAME,
    CTA_SECMARK,
    CTA_SEQ_ADJ_ORIG,
    CTA_SEQ_ADJ_REPLY,
    CTA_SEQADJ_CORRECTION_POS,
    CTA_SEQADJ_OFFSET_AFTER,
    CTA_SEQADJ_OFFSET_BEFORE,
    CTA_STATUS,
    CTA_STATUS_MASK,
    CTA_SYNPROXY,
    CTA_SYNPROXY_ISN,
    CTA_SYNPROXY_ITS,
    CTA_SYNPROXY_TSOFF,
    CTA_TIMEOUT,
    CTA_TIMESTAMP,
    CTA_TIMESTAMP_EVENT,
    CTA_TIMESTAMP_START,
    CTA_TIMESTAMP_STOP,
    CTA_TUPLE_IP,
    CTA_TUPLE_MASTER,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    CTA_TUPLE_ZONE,
    CTA_USE,
    CTA_ZONE,
    IPS_NAMES,
    NLA_TYPE_MASK,
    SCTP_STATES,
    TCP_FLAG_NAMES,
    TCP_STATES,
)
from .netlink import _ADDR_LEN, NFGEN_LEN, CtDecodeError, _check_attrs, iter_attrs


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
