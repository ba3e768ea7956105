"""Injection: a replicated entry's attrs rewritten into a CT_NEW the kernel accepts.

Owns: encode_create() / encode_creates() (see encode_create for what the
kernel refuses and why each rewrite exists), what an injected entry may
carry (IPS_SETTABLE, NOT_INJECTED, CREATE_ONLY), the TCP protoinfo rewrite,
rewrite_timeout(), and the per-shape encode plans (_Plan) with their bounded
caches; the NAT rewrite is nat.py's. The committer in
meshd/kernel/conntrack/committer.py calls this per entry of a takeover, so
encode_creates and _apply are a hot path too: keep their locals and bound
lookups as they are.

Must not: decide which entries to inject or when (the sync core does), talk
to the kernel (the committer does), or change the attrs it is given: the
request is built from slices of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from . import netlink
from .constants import (
    AF_INET,
    AF_INET6,
    CT_NEW,
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_REPLY,
    CTA_FILTER,
    CTA_HELP,
    CTA_ID,
    CTA_LABELS_MASK,
    CTA_MARK_MASK,
    CTA_NAT_DST,
    CTA_NAT_SRC,
    CTA_PROTOINFO,
    CTA_PROTOINFO_TCP,
    CTA_PROTOINFO_TCP_FLAGS_ORIGINAL,
    CTA_PROTOINFO_TCP_FLAGS_REPLY,
    CTA_PROTOINFO_TCP_STATE,
    CTA_PROTOINFO_TCP_WSCALE_ORIGINAL,
    CTA_PROTOINFO_TCP_WSCALE_REPLY,
    CTA_SECCTX,
    CTA_SECMARK,
    CTA_STATUS,
    CTA_STATUS_MASK,
    CTA_TIMEOUT,
    CTA_TIMESTAMP,
    CTA_TIMESTAMP_EVENT,
    CTA_TUPLE_MASTER,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    CTA_USE,
    IP_CT_TCP_FLAG_BE_LIBERAL,
    IP_CT_TCP_FLAG_CLOSE_INIT,
    IP_CT_TCP_FLAG_SACK_PERM,
    IP_CT_TCP_FLAG_WINDOW_SCALE,
    IP_CT_TCP_SIMULTANEOUS_OPEN,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_FIXED_TIMEOUT,
    IPS_SEEN_REPLY,
    NLA_F_NET_BYTEORDER,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
)
from .events import _orig_offsets
from .nat import _nat_from_tuples, _nat_spliced
from .netlink import (
    HDR_LEN,
    NFGEN_LEN,
    CtDecodeError,
    _check_attrs,
    _nfgen,
    iter_attrs,
    nest,
    nla,
)
from .tuples import _tuple_fields

# by assignment, not import: method calls on them run per message (netlink.py says why)
_ADDR_LEN, _BE32, _HDR, _NLA = netlink._ADDR_LEN, netlink._BE32, netlink._HDR, netlink._NLA

# Status bits encode_create() passes to the kernel (measured on 6.18, see
# encode_create and tests/lab/test_conntrack_lab.py::test_status_bits_on_create).
# CONFIRMED must be present: the kernel sets it on the new entry before it
# applies CTA_STATUS and refuses (EBUSY) a status that would clear it.
# EXPECTED and DYING make the kernel answer EBUSY. The NAT, NAT_DONE,
# SEQ_ADJUST, TEMPLATE, UNTRACKED and OFFLOAD bits are silently ignored: the
# kernel derives them (CTA_NAT_*, CTA_SEQ_ADJ_*), so they are dropped here to
# keep the request honest. HELPER is dropped too: the helper comes from CTA_HELP.
IPS_SETTABLE = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED | IPS_FIXED_TIMEOUT

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


def _apply(plan: _Plan, attrs: bytes, seq: int, timeout: int | None, flags: int, nat: bool, portid: int,
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


_NFGEN = {AF_INET: _nfgen(AF_INET), AF_INET6: _nfgen(AF_INET6)}
for _liberal in (True, False):      # a TCP entry without protoinfo (partial update)
    _caches[_liberal][2][None] = _tcp_protoinfo(None, 0, 0, _liberal)
