"""What the load balancer balances: a redirect (LbRedirect) and its backends (Backend).

Owns: the two value types and every check of their fields (a name that
becomes part of nftables set names, addresses, ports, weights, modes, slots,
sticky and the reset watcher's limits), whether a list of backends can serve
a redirect (check_backends), the limits they are checked against, and the
log signature the balancer and the clean-up take.

Must not: render nft statements (render.py), assign slots (slots.py), or
talk to the kernel. Everything here is pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TABLE_FAMILY = "inet"        # one table for IPv4 and IPv6 redirects (nat in inet: Linux >= 5.2)
MODES = ("round-robin", "weighted", "random", "source-hash")
PROTOCOLS = ("tcp", "udp")
DEFAULT_SLOTS = 60           # divisible by 1-6, 10, 12: equal shares are exact for up to 6 backends
MAX_SLOTS = 4096

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")

Log = Callable[..., None]


def _no_log(event: str, level: str = "info", **fields) -> None:
    pass


@dataclass(frozen=True)
class Backend:
    address: str            # IPv4 or IPv6 literal, the family of the redirect's address
    port: int
    weight: int = 1         # share of the slots (modes weighted, random, source-hash)

    def __post_init__(self):
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"backend {self.address!r}: not an IP address") from None
        if not 1 <= self.port <= 65535:
            raise ValueError(f"backend {self.address}: port {self.port} not in 1-65535")
        if not 1 <= self.weight <= 1000:
            raise ValueError(f"backend {self.address}:{self.port}: weight {self.weight} not in 1-1000")

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.address)

    def text(self) -> str:
        ip = self.ip
        return f"[{ip}]:{self.port}" if ip.version == 6 else f"{ip}:{self.port}"


@dataclass(frozen=True)
class LbRedirect:
    """One virtual service: new connections to address:port go to a live backend.

    sticky_timeout_s: remember each client's backend for that long after its
      last new connection (IPv4 only: nftables 1.0.6 aborts on the IPv6 form).
    nflog_group: log TCP resets sent by the backends to this NFLOG group
      (meshd.kernel.nflog reads it); the log prefix is the redirect's name.
    """
    name: str
    address: str
    port: int
    protocol: str = "tcp"
    mode: str = "round-robin"
    slots: int = DEFAULT_SLOTS
    sticky_timeout_s: int | None = None
    nflog_group: int | None = None

    def __post_init__(self):
        where = f"redirect {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"{where}: name must be 1-64 letters, digits, '_' or '-' "
                             "(it becomes part of nftables set names)")
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"{where}: address {self.address!r} is not an IP address") from None
        if not 1 <= self.port <= 65535:
            raise ValueError(f"{where}: port {self.port} not in 1-65535")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{where}: protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.mode not in MODES:
            raise ValueError(f"{where}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"{where}: slots {self.slots} not in 1-{MAX_SLOTS}")
        if self.sticky_timeout_s is not None:
            if not 1 <= self.sticky_timeout_s <= 86400 * 7:
                raise ValueError(f"{where}: sticky_timeout_s {self.sticky_timeout_s} not in 1-604800")
            if ip.version == 6:
                raise ValueError(f"{where}: sticky is IPv4 only (nftables 1.0.6 aborts on the IPv6 "
                                 "dynamic map update; see docs/health-internals.md)")
        if self.nflog_group is not None:
            if not 0 <= self.nflog_group <= 65535:
                raise ValueError(f"{where}: nflog_group {self.nflog_group} not in 0-65535")
            if self.protocol != "tcp":
                raise ValueError(f"{where}: the reset watcher (nflog_group) needs protocol tcp")

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    def check_backends(self, backends: Iterable[Backend]) -> list[Backend]:
        """The backends as a list, or ValueError naming the first one that cannot serve this redirect."""
        out = list(backends)
        seen = set()
        for b in out:
            if not isinstance(b, Backend):
                raise TypeError(f"redirect {self.name!r}: backends must be Backend, not {type(b).__name__}")
            if b.ip.version != self.version:
                raise ValueError(f"redirect {self.name!r} (IPv{self.version}): backend {b.text()} "
                                 f"is IPv{b.ip.version}; NAT cannot translate between families")
            if (b.ip, b.port) in seen:
                raise ValueError(f"redirect {self.name!r}: backend {b.text()} listed twice")
            seen.add((b.ip, b.port))
        if len(out) > self.slots:
            raise ValueError(f"redirect {self.name!r}: {len(out)} backends do not fit its {self.slots} slots")
        return out
