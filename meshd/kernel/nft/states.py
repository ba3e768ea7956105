"""The conntrack entries of a dead backend: found in a dump, deleted in one batch. Blocking.

Owns: reading an entry's reply source (after DNAT, the backend), picking
the DST_NAT entries of one backend:port from a dump (matching_states), and
delete_backend_states (a dump of the family, then one delete batch through
a CtCommitter of its own).

Must not: touch an entry the load balancer did not translate (a backend's
own traffic through the firewall), touch nftables, or run on the trio loop.
"""

from __future__ import annotations

import ipaddress

from meshd.kernel import conntrack
from meshd.kernel import ctnetlink as ct

from .model import PROTOCOLS, Log, _no_log


def _reply_source(attrs: bytes) -> tuple[bytes, int, bytes] | None:
    """(address, l4 protocol, source port) of an entry's reply tuple, or None."""
    for t, _rt, s, e in ct.iter_attrs(attrs, ct.NFGEN_LEN):
        if t != ct.CTA_TUPLE_REPLY:
            continue
        addr = sport = None
        proto = -1
        for t2, _rt2, s2, e2 in ct.iter_attrs(attrs, s, e):
            if t2 == ct.CTA_TUPLE_IP:
                for t3, _rt3, s3, e3 in ct.iter_attrs(attrs, s2, e2):
                    if t3 in (ct.CTA_IP_V4_SRC, ct.CTA_IP_V6_SRC):
                        addr = attrs[s3:e3]
            elif t2 == ct.CTA_TUPLE_PROTO:
                for t3, _rt3, s3, e3 in ct.iter_attrs(attrs, s2, e2):
                    if t3 == ct.CTA_PROTO_NUM and e3 > s3:
                        proto = attrs[s3]
                    elif t3 == ct.CTA_PROTO_SRC_PORT:
                        sport = attrs[s3:e3]
        if addr is None or sport is None:
            return None
        return addr, proto, sport
    return None


def matching_states(events, address: str, port: int, protocol: str = "tcp") -> list[bytes]:
    """attrs of the DNAT'd entries (CtEvents from a dump) whose reply source is address:port."""
    want = (ipaddress.ip_address(address).packed, {"tcp": ct.IPPROTO_TCP, "udp": ct.IPPROTO_UDP}[protocol],
            port.to_bytes(2, "big"))
    out = []
    for ev in events:
        if ev.status is not None and not ev.status & ct.IPS_DST_NAT:
            continue
        try:
            if _reply_source(ev.attrs) == want:
                out.append(ev.attrs)
        except ct.CtDecodeError:
            continue
    return out


def delete_backend_states(address: str, port: int, protocol: str = "tcp", log: Log = _no_log) -> int:
    """Delete the DNAT'd conntrack entries of a backend (blocking: a dump, then deletes).

    Only entries the kernel marked DST_NAT are deleted: the backend's own
    direct traffic through the firewall is not the load balancer's business.
    Entries that vanished between the dump and the delete are not counted.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    family = ct.AF_INET6 if ipaddress.ip_address(address).version == 6 else ct.AF_INET
    entries = matching_states(conntrack.dump_table(family, log=log), address, port, protocol)
    if not entries:
        return 0
    with conntrack.CtCommitter(log=log, pipeline=False) as committer:
        result = committer.delete(entries)
    return result.ok
