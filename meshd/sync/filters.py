"""Which kernel conntrack events are replicated.

Always ignored, whatever the configuration says: flows that *end at this
node* (an original-tuple address that is loopback, link-local multicast such
as the election's adverts, broadcast, one of the node's own addresses or a
virtual address), unless the flow is NATed, because then it
only passes through (a redirect DNATs the virtual address to a backend; that
flow must survive a takeover).  Replicating the node's own flows would, among
other things, replicate the sync traffic itself, an endless loop.

Then the configured filters: protocols, addresses or CIDRs (original source or
destination), TCP states, and optionally only ASSURED flows.  DESTROY events
pass the state filters: a flow that was replicated must also be removed.

The check is per event, on fields the codec decoded anyway, with sets of
packed address bytes so it costs a few dictionary lookups.

The node core applies the filter to every burst of events (node/flows.py),
and a changed one to a fresh dump of the table (NodeCore.reconfigure).

Must not: decode events (it reads the fields the ctnetlink codec decoded
anyway, CtEvent), or keep state beyond its settings, the node's addresses
and its counters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..config.sync import TCP_STATES, SyncFilter

IPS_ASSURED = 1 << 2
IPS_NAT_MASK = (1 << 4) | (1 << 5)       # IPS_SRC_NAT | IPS_DST_NAT
DESTROY = 3
LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")


@dataclass
class FilterStats:
    passed: int = 0
    local: int = 0
    protocol: int = 0
    address: int = 0
    tcp_state: int = 0
    not_assured: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EventFilter:
    config: SyncFilter
    local_addresses: set[bytes] = field(default_factory=set)   # packed 4/16-byte addresses
    stats: FilterStats = field(default_factory=FilterStats)

    def __post_init__(self) -> None:
        self.set_config(self.config)
        self.local_addresses.add(ipaddress.ip_address("::1").packed)

    def set_config(self, config: SyncFilter) -> None:
        """New configured filters (a reload); the local addresses and the stats stay.

        In place, so that a consumer holding `keep` filters with the new
        settings from its next event on.
        """
        self.config = config
        self.protocols = frozenset(self.config.ignore_protocols)
        self.networks = [ipaddress.ip_network(a, strict=False) for a in self.config.ignore_addresses]
        self.exact = {n.network_address.packed for n in self.networks
                      if n.prefixlen == n.max_prefixlen}
        self.wide = [n for n in self.networks if n.prefixlen != n.max_prefixlen]
        self.states = frozenset(TCP_STATES.index(s) for s in self.config.ignore_tcp_states)

    def set_local_addresses(self, addresses: set[str]) -> None:
        """The node's own and virtual addresses (text), replacing the previous set."""
        self.local_addresses = {ipaddress.ip_address(a.split("/")[0]).packed for a in addresses}
        self.local_addresses.add(ipaddress.ip_address("::1").packed)

    def keep(self, event) -> bool:
        """Whether to replicate this CtEvent (kind, key, attrs, portid, l4proto, src, dst, status, tcp_state)."""
        src, dst, status = event.src, event.dst, event.status or 0
        if not status & IPS_NAT_MASK and (self._local(src) or self._local(dst)):
            self.stats.local += 1
            return False
        if event.l4proto in self.protocols:
            self.stats.protocol += 1
            return False
        if self.networks and (self._ignored(src) or self._ignored(dst)):
            self.stats.address += 1
            return False
        if event.kind != DESTROY:
            if event.tcp_state is not None and event.tcp_state in self.states:
                self.stats.tcp_state += 1
                return False
            if self.config.only_assured and event.status is not None and not status & IPS_ASSURED:
                self.stats.not_assured += 1
                return False
        self.stats.passed += 1
        return True

    def _local(self, addr: bytes) -> bool:
        if addr in self.local_addresses:
            return True
        if len(addr) == 4:
            # loopback, link-local multicast (the election's adverts), broadcast
            return addr[0] == 127 or addr[:3] == b"\xe0\0\0" or addr == b"\xff\xff\xff\xff"
        return addr[0] == 0xFF and addr[1] & 0x0F <= 2    # ff01::/16, ff02::/16 scopes

    def _ignored(self, addr: bytes) -> bool:
        if addr in self.exact:
            return True
        if not self.wide:
            return False
        ip = ipaddress.ip_address(addr)
        return any(ip in n for n in self.wide if n.version == ip.version)
