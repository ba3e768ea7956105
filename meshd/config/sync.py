"""The `[sync]` section: the conntrack state mesh.

Absent section: no replication (the election runs alone).  Every key is
documented in docs/configuration.md.  Owns the replication
filter's vocabulary (protocol names and numbers, conntrack's TCP state names),
which meshd/sync/filters.py applies to kernel events.

Must not: open a socket or read a conntrack table (the state mesh's shell
does), or apply the filter (meshd/sync/filters.py does).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from .reader import Reader, describe

SYNC_KEYS = {"enabled", "interface", "port", "peers", "multicast_group", "max_datagram",
             "event_buffer_bytes", "commit", "commit_scope", "heartbeat_ms",
             "digest_interval_ms", "resend_queue", "peer_timeout_ms", "filter", "discover",
             "bulk_timeout_ms", "bulk_attempts", "min_age_ms", "path_timeout_ms", "path_return_ms"}
PEER_KEYS = {"id", "address", "addresses"}
MAX_PATHS = 4          # paths to one peer: each is heartbeated, so keep the probes few
FILTER_KEYS = {"ignore_protocols", "ignore_addresses", "ignore_tcp_states", "only_assured", "expectations"}
# A conntrack helper's name as the kernel spells it (NF_CT_HELPER_NAME_LEN is 16 with the NUL):
# "ftp", "sip", "tftp", "Q.931", "netbios-ns", ...
HELPER_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,15}$")
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136,
             "dccp": 33, "gre": 47}
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
COMMIT_MODES = ("takeover", "continuous")
COMMIT_SCOPES = ("all", "group")


@dataclass(frozen=True)
class SyncPeer:
    """A peer and the paths to it: `address` is the preferred one (the
    dedicated link), `backups` the others in order of preference
    (meshd/sync/paths.py chooses among them)."""
    id: int
    address: str
    backups: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.address, *self.backups) if self.address else self.backups


@dataclass(frozen=True)
class SyncFilter:
    ignore_protocols: tuple[int, ...] = ()
    ignore_addresses: tuple[str, ...] = ()          # CIDRs, on top of the always-ignored ones
    ignore_tcp_states: tuple[str, ...] = ()
    only_assured: bool = False
    # Expectations (the helpers' expected connections, issue 13): replicated at all,
    # and only those of these helpers (empty: every helper's).
    expectations: bool = True
    expectation_helpers: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncConfig:
    peers: tuple[SyncPeer, ...]
    interface: str | None = None
    port: int = 7113
    multicast_group: str | None = None
    max_datagram: int = 1400
    event_buffer_bytes: int = 32 * 1024 * 1024
    commit: str = "continuous"
    commit_scope: str = "all"
    heartbeat_ms: int = 200
    digest_interval_ms: int = 5000
    resend_queue: int = 131072
    peer_timeout_ms: int = 3000
    filter: SyncFilter = SyncFilter()
    discover: bool = False
    bulk_timeout_ms: int = 10000
    bulk_attempts: int = 3
    min_age_ms: int = 0
    path_timeout_ms: int = 1000
    path_return_ms: int = 5000

    def peer(self, node_id: int) -> SyncPeer | None:
        return next((p for p in self.peers if p.id == node_id), None)

    @property
    def family(self) -> int:
        """IP version of the state mesh's socket: 6 if a peer or the group is IPv6, else 4."""
        if any(":" in a for p in self.peers for a in p.paths) or \
                (self.multicast_group is not None and ":" in self.multicast_group):
            return 6
        return 4

    @property
    def multipath(self) -> bool:
        """Whether some peer has a backup path: the socket then listens on every
        interface (a backup path arrives on another one than `interface`)."""
        return any(p.backups for p in self.peers)


def parse_sync(r: Reader, data: Any, node_id: int | None) -> SyncConfig | None:
    t = r.table(data, "sync", SYNC_KEYS)
    if not r.get(t, "sync", "enabled", "bool", default=True):
        return None
    kw: dict[str, Any] = {}
    kw["interface"] = r.get(t, "sync", "interface", "str", default=None)
    kw["port"] = r.get(t, "sync", "port", "int", default=7113, lo=1, hi=65535)
    kw["max_datagram"] = r.get(t, "sync", "max_datagram", "int", default=1400, lo=576, hi=65000)
    kw["event_buffer_bytes"] = r.get(t, "sync", "event_buffer_bytes", "int",
                                     default=32 * 1024 * 1024, lo=4096, hi=2**31 - 1)
    kw["commit"] = r.choice(t, "sync", "commit", COMMIT_MODES, "continuous")
    kw["commit_scope"] = r.choice(t, "sync", "commit_scope", COMMIT_SCOPES, "all")
    kw["heartbeat_ms"] = r.get(t, "sync", "heartbeat_ms", "int", default=200, lo=10, hi=60000)
    kw["digest_interval_ms"] = r.get(t, "sync", "digest_interval_ms", "int", default=5000,
                                     lo=100, hi=3_600_000)
    kw["resend_queue"] = r.get(t, "sync", "resend_queue", "int", default=131072, lo=64, hi=10**8)
    kw["peer_timeout_ms"] = r.get(t, "sync", "peer_timeout_ms", "int", default=3000,
                                  lo=100, hi=3_600_000)
    # A bulk we ask for must complete within bulk_timeout_ms plus 4 times what
    # the entries its sender announces take at its rate (proto/sync.md, 7.4),
    # or it is asked again; after bulk_attempts, the peer is out of sync.
    kw["bulk_timeout_ms"] = r.get(t, "sync", "bulk_timeout_ms", "int", default=10000,
                                  lo=1000, hi=3_600_000)
    kw["bulk_attempts"] = r.get(t, "sync", "bulk_attempts", "int", default=3, lo=1, hi=100)
    # Replicate a flow only once it lived this long (0: at once); node/young.py.
    kw["min_age_ms"] = r.get(t, "sync", "min_age_ms", "int", default=0, lo=0, hi=600_000)
    mcast = r.get(t, "sync", "multicast_group", "str", default=None)
    if mcast is not None:
        try:
            if not ipaddress.ip_address(mcast).is_multicast:
                raise ValueError
        except ValueError:
            r.problem("sync.multicast_group", f"expected a multicast address, found {describe(mcast)}")
        if kw["interface"] is None:
            r.problem("sync.interface", "required with sync.multicast_group (the interface to join on)")
    kw["multicast_group"] = mcast
    kw["discover"] = r.get(t, "sync", "discover", "bool", default=False)
    if kw["discover"] and kw["interface"] is None:
        r.problem("sync.interface", "required with sync.discover (the link to announce and listen on)")
    kw["path_return_ms"] = r.get(t, "sync", "path_return_ms", "int", default=5000, lo=0, hi=3_600_000)
    # Addresses are needed with multicast too: acknowledgements, repairs and
    # bulk resyncs go to one peer, by unicast.  With discover, peers may be
    # none at all: they are found on the link (and must prove the key).
    peers = _parse_peers(r, t.get("peers", [] if kw["discover"] else None), node_id,
                         need_address=True, may_be_empty=bool(kw["discover"]))
    kw["filter"] = _parse_filter(r, t.get("filter", {}))
    kw["path_timeout_ms"] = _path_timeout(r, t, kw, peers)
    optional = {"interface", "multicast_group"}
    if peers is None or any(v is None for k, v in kw.items() if k not in optional):
        return None
    return SyncConfig(peers, **kw)


def _path_timeout(r: Reader, t: dict, kw: dict, peers) -> int | None:
    """`path_timeout_ms`: given, or 1000 (half the peer timeout if that is
    shorter, at least two heartbeats); checked against the timers when some
    peer has a backup path, the only case it is used in."""
    hb, pto = kw["heartbeat_ms"], kw["peer_timeout_ms"]
    default = max(2 * hb, min(1000, pto // 2)) if None not in (hb, pto) else 1000
    pt = r.get(t, "sync", "path_timeout_ms", "int", default=default, lo=20, hi=3_600_000)
    if pt is not None and None not in (hb, pto) and any(p.backups for p in peers or ()) \
            and not 2 * hb <= pt < pto:
        # Shorter than two heartbeats: one lost heartbeat would switch paths; not
        # shorter than the peer timeout: the peer would be declared absent (and
        # its bulk resent) before its frames were sent another way.
        r.problem("sync.path_timeout_ms", f"expected at least 2 * heartbeat_ms ({2 * hb}) and less "
                                          f"than peer_timeout_ms ({pto}), found {pt}")
    return pt


def _parse_peers(r: Reader, data: Any, node_id: int | None,
                 need_address: bool, may_be_empty: bool = False) -> tuple[SyncPeer, ...] | None:
    if not isinstance(data, list) or (not data and not may_be_empty):
        r.problem("sync.peers", "expected a list of peers like [{ id = 2, address = \"203.0.113.2\" }]"
                  + ("" if may_be_empty or isinstance(data, list) and data else
                     " (or sync.discover = true to find them on the sync link)"))
        return None
    peers: list[SyncPeer] = []
    owner: dict[str, int] = {}            # address -> the peer it is a path to
    for i, item in enumerate(data):
        path = f"sync.peers[{i}]"
        pt = r.table(item, path, PEER_KEYS)
        pid = r.get(pt, path, "id", "int", lo=1, hi=2**32 - 1)
        paths = _parse_paths(r, pt, path, need_address)
        if pid is None or paths is None:
            continue
        if pid == node_id:
            r.problem(f"{path}.id", f"{pid} is this node's own id")
            continue
        if any(p.id == pid for p in peers):
            r.problem(f"{path}.id", f"duplicate peer id {pid}")
            continue
        for where, addr in paths:
            norm = str(ipaddress.ip_address(addr)) if addr else addr
            if norm and owner.get(norm, pid) != pid:
                r.problem(where, f"{addr} is already a path to peer {owner[norm]}")
            owner.setdefault(norm, pid)
        addrs = [a for _, a in paths]
        peers.append(SyncPeer(pid, addrs[0] if addrs else "", tuple(addrs[1:])))
    return tuple(peers)


def _parse_paths(r: Reader, pt: dict, path: str,
                 need_address: bool) -> list[tuple[str, str]] | None:
    """A peer's `address`, or its `addresses` in order of preference: [(key path,
    address)]; None when bad (each problem named)."""
    if "address" in pt and "addresses" in pt:
        r.problem(f"{path}.addresses", "give address or addresses, not both")
        return None
    if "addresses" not in pt:
        addr = r.get(pt, path, "address", "str", default=... if need_address else None)
        if addr is None:
            return None if need_address else []
        items = [(f"{path}.address", addr)]
    else:
        addrs = r.get(pt, path, "addresses", "strlist")
        if addrs is None:
            return None
        if not 1 <= len(addrs) <= MAX_PATHS:
            r.problem(f"{path}.addresses", f"expected 1 to {MAX_PATHS} addresses in order of "
                                           f"preference, found {len(addrs)}")
            return None
        items = [(f"{path}.addresses[{j}]", a) for j, a in enumerate(addrs)]
    ok = True
    seen: dict = {}                       # address -> where it was given first
    for where, addr in items:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            r.problem(where, f"expected an IP address, found {describe(addr)}")
            ok = False
            continue
        first = next(iter(seen), None)
        if ip in seen:
            r.problem(where, f"{addr} is given twice (also at {seen[ip]})")
            ok = False
        elif first is not None and ip.version != first.version:
            # One socket, of one family, carries every path.
            r.problem(where, f"IPv{ip.version} address {addr}, but the first path is IPv{first.version}: "
                             "the paths to a peer must be of one family")
            ok = False
        seen.setdefault(ip, where)
    return items if ok else None


def _parse_filter(r: Reader, data: Any) -> SyncFilter | None:
    t = r.table(data, "sync.filter", FILTER_KEYS)
    protos = r.get(t, "sync.filter", "ignore_protocols", "strlist", default=())
    numbers = []
    for j, p in enumerate(protos or ()):
        if p.lower() not in PROTOCOLS:
            r.problem(f"sync.filter.ignore_protocols[{j}]",
                      f"expected one of {', '.join(PROTOCOLS)}, found {describe(p)}")
        else:
            numbers.append(PROTOCOLS[p.lower()])
    addrs = r.get(t, "sync.filter", "ignore_addresses", "strlist", default=())
    for j, a in enumerate(addrs or ()):
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            r.problem(f"sync.filter.ignore_addresses[{j}]", f"expected an address or CIDR, found {describe(a)}")
    states = r.get(t, "sync.filter", "ignore_tcp_states", "strlist", default=())
    for j, s in enumerate(states or ()):
        if s.upper() not in TCP_STATES:
            r.problem(f"sync.filter.ignore_tcp_states[{j}]",
                      f"expected one of {', '.join(TCP_STATES)}, found {describe(s)}")
    only_assured = r.get(t, "sync.filter", "only_assured", "bool", default=False)
    expectations, helpers = _parse_expectations(r, t.get("expectations", True))
    return SyncFilter(tuple(numbers), tuple(addrs or ()), tuple(s.upper() for s in states or ()),
                      bool(only_assured), expectations, helpers)


def _parse_expectations(r: Reader, value: Any) -> tuple[bool, tuple[str, ...]]:
    """`expectations = true` (every helper's), `false` (none), or a list of helper names."""
    where = "sync.filter.expectations"
    if isinstance(value, bool):
        return value, ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        r.problem(where, f"expected true, false or a non-empty list of helper names like [\"ftp\", \"sip\"], "
                         f"found {describe(value)}")
        return True, ()
    for j, name in enumerate(value):
        if not HELPER_NAME_RE.match(name):
            r.problem(f"{where}[{j}]", f"expected a conntrack helper's name (1-15 of A-Z a-z 0-9 . _ -) "
                                       f"such as \"ftp\", found {describe(name)}")
    return True, tuple(dict.fromkeys(value))
