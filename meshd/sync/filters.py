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

Expectations (kinds EXP_NEW / EXP_DESTROY: a helper's expected connection)
follow their master: the codec gives them the master's protocol and orig
addresses, and "NATed" when the helper's NAT part ran, so the rules above
judge the master.  The state filters do not apply (an expectation has no
state).  `expectations = false` leaves them all out; a list of helpers keeps
only theirs (an EXP_DESTROY passes whatever its helper: one that was
replicated must also be removed).  The helper's name is read from the attrs
by `helper_of` (the codec's, given by the node core: this floor does not
import the kernel's).

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
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.sync import TCP_STATES, SyncFilter

IPS_ASSURED = 1 << 2
IPS_NAT_MASK = (1 << 4) | (1 << 5)       # IPS_SRC_NAT | IPS_DST_NAT
DESTROY = 3
EXP_NEW, EXP_DESTROY = 4, 6              # ctnetlink's CtKind: the expectation groups
LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")


@dataclass
class FilterStats:
    passed: int = 0
    local: int = 0
    protocol: int = 0
    address: int = 0
    tcp_state: int = 0
    not_assured: int = 0
    expectation: int = 0                 # expectations left out by sync.filter.expectations

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EventFilter:
    config: SyncFilter
    local_addresses: set[bytes] = field(default_factory=set)   # packed 4/16-byte addresses
    stats: FilterStats = field(default_factory=FilterStats)
    helper_of: Callable[[bytes], str | None] | None = None     # an expectation's helper, from its attrs

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
        self.helpers = frozenset(self.config.expectation_helpers)

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
        kind = event.kind
        if kind >= EXP_NEW:         # no state: the expectations setting instead
            if not self._keep_expectation(event):
                self.stats.expectation += 1
                return False
        elif kind != DESTROY:
            if event.tcp_state is not None and event.tcp_state in self.states:
                self.stats.tcp_state += 1
                return False
            if self.config.only_assured and event.status is not None and not status & IPS_ASSURED:
                self.stats.not_assured += 1
                return False
        self.stats.passed += 1
        return True

    def _keep_expectation(self, event) -> bool:
        if not self.config.expectations:
            return False
        if not self.helpers or event.kind == EXP_DESTROY:
            return True
        try:
            helper = self.helper_of(event.attrs) if self.helper_of is not None else None
        except ValueError:          # the codec's CtDecodeError: nothing to replicate
            return False
        return helper in self.helpers

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
