"""Add and remove virtual addresses through rtnetlink (pyroute2).

Blocking functions; the daemon calls them through trio.to_thread.run_sync.

Addresses are "addr/prefix" strings as the config produces them
(str(ipaddress.ip_interface(...))). Per-address failures come back as error
strings, so a takeover adds every address it can; only a missing interface
raises, since then nothing can be done at all.

Why a fresh IPRoute per call rather than a cached one: pyroute2 0.9's sync
IPRoute keeps its netlink socket and asyncio event loop in thread-local
storage. trio.to_thread runs us on whichever worker thread is free and retires
idle workers, so a cached instance would grow one socket + loop per worker
thread (measured: +1 fd per thread) and need closing from a foreign thread.
Opening and closing one costs ~0.75 ms, small next to the adds themselves,
so per-call is both simpler and leak-free. The interface index comes from
socket.if_nametoindex (one ioctl) instead of IPRoute.link_lookup, which dumps
every link (~1.7 ms here, much more on a firewall with hundreds of VLANs).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from socket import AF_INET, AF_INET6

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

# IPv6: skip duplicate address detection so the VIP is usable at once. With DAD
# the address stays "tentative" (~1 s+) and cannot be used as a source or
# answer neighbour solicitations, which would stall failover. Taking over an
# address that the old master may still hold is the whole point, so DAD would
# only get in the way (it could even mark the VIP dadfailed).
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08


# IPv6 virtual addresses are also added *deprecated* (preferred lifetime 0,
# valid forever): Linux then never picks them as the source of the node's own
# packets, as an IPv4 secondary address is not picked either.  Without it the
# master's unicast adverts would leave from the virtual address, which its
# peers do not know as a peer address.  Traffic to the address is unaffected.
V6_VIRTUAL = {"flags": IFA_F_NODAD, "preferred_lft": 0, "valid_lft": 0xFFFFFFFF}


class AddressError(Exception):
    """The interface does not exist (nothing could be added or removed)."""


def _ifindex(interface: str) -> int:
    try:
        return socket.if_nametoindex(interface)
    except (OSError, ValueError) as e:
        raise AddressError(f"interface {interface!r} does not exist ({e})") from None


def _errtext(code: int) -> str:
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def _parse(address: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(address)


def _parsed(verb: str, interface: str, addresses, errors: list[str]):
    """Yield (text, parsed) for each valid address; note the invalid ones in errors."""
    for a in addresses:
        try:
            yield a, _parse(a)
        except ValueError:
            errors.append(f"{verb} {a} on {interface}: not an address with prefix length")


def _dump(ipr: IPRoute, index: int) -> dict[str, int]:
    """Present addresses of one interface: canonical "addr/prefix" -> flags."""
    out: dict[str, int] = {}
    for msg in ipr.addr("dump", index=index):
        if msg["index"] != index:  # filter is done in userspace; be sure
            continue
        # IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
        # peer on point-to-point links). IPv6 only has IFA_ADDRESS.
        ip = msg.get("local") or msg.get("address")
        if ip is None:
            continue
        # IFA_FLAGS (u32) supersedes the u8 ifa_flags field when present.
        flags = msg.get_attr("IFA_FLAGS")
        if flags is None:
            flags = msg["flags"]
        out[str(ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"))] = flags
    return out


def interface_addresses(interface: str) -> set[str]:
    """Addresses present on the interface, as "addr/prefix" (incl. link-local)."""
    index = _ifindex(interface)
    with IPRoute() as ipr:
        return set(_dump(ipr, index))


def add_addresses(interface: str, addresses: tuple[str, ...]) -> list[str]:
    """Add addresses; already present is fine. Returns one error string per failure."""
    index = _ifindex(interface)
    errors: list[str] = []
    with IPRoute() as ipr:
        for a, ifa in _parsed("add", interface, addresses, errors):
            if ifa.ip.is_unspecified:  # the kernel "succeeds" at adding 0.0.0.0 but ignores it
                errors.append(f"add {a} on {interface}: the unspecified address cannot be added")
                continue
            v6 = ifa.version == 6
            try:
                extra = V6_VIRTUAL if v6 else {}
                ipr.addr("add", index=index, address=str(ifa.ip),
                         prefixlen=ifa.network.prefixlen,
                         family=AF_INET6 if v6 else AF_INET, **extra)
            except NetlinkError as e:
                if e.code == errno.ENODEV:
                    raise AddressError(f"interface {interface!r} disappeared while adding {a}") from None
                if e.code == errno.EEXIST:
                    # IPv4 says EEXIST only for the same address+prefix, but
                    # IPv6 says it for the same address with *any* prefix, so
                    # check before calling it done (rare path: costs a dump).
                    problem = _check_present(ipr, index, ifa)
                    if problem:
                        errors.append(f"add {a} on {interface}: {problem}")
                    continue
                errors.append(f"add {a} on {interface}: {_errtext(e.code)}")
    return errors


def _check_present(ipr: IPRoute, index: int, ifa) -> str | None:
    present = _dump(ipr, index)
    key = str(ifa)
    if key in present:
        if present[key] & IFA_F_DADFAILED:
            return "already present but in DAD-failed state (unusable)"
        return None
    others = [p for p in present if p.split("/")[0] == str(ifa.ip)]
    if others:
        return f"already present with a different prefix length ({', '.join(others)})"
    return _errtext(errno.EEXIST)


def remove_addresses(interface: str, addresses: tuple[str, ...]) -> list[str]:
    """Remove addresses; missing is fine. Returns one error string per failure.

    The kernel matches address *and* prefix length, so "192.0.2.1/24" does not
    remove a present 192.0.2.1/25 (that counts as missing).
    """
    index = _ifindex(interface)
    errors: list[str] = []
    with IPRoute() as ipr:
        for a, ifa in _parsed("remove", interface, addresses, errors):
            try:
                ipr.addr("del", index=index, address=str(ifa.ip),
                         prefixlen=ifa.network.prefixlen,
                         family=AF_INET6 if ifa.version == 6 else AF_INET)
            except NetlinkError as e:
                # EADDRNOTAVAIL: not present. ENODEV here means the interface
                # went away, which removed its addresses too: also done.
                if e.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                    continue
                errors.append(f"remove {a} on {interface}: {_errtext(e.code)}")
    return errors


def node_addresses() -> set[str]:
    """Every address on every interface of this network namespace (no prefix)."""
    out: set[str] = set()
    with IPRoute() as ipr:
        for msg in ipr.addr("dump"):
            ip = msg.get("local") or msg.get("address")
            if ip:
                out.add(str(ipaddress.ip_address(ip)))
    return out
