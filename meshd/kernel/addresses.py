"""Add and remove virtual addresses through rtnetlink (adds raw, the rest with pyroute2).

Blocking functions.  The election shell calls the add inline (raw rtnetlink,
well under a millisecond) and everything else through trio.to_thread.run_sync.

Addresses are "addr/prefix" strings as the config produces them
(str(ipaddress.ip_interface(...))). Per-address failures come back as error
strings, so a takeover adds every address it can; only a missing interface
raises AddressError, since then nothing can be done at all (a netlink socket
that fails raises its OSError).

Why a fresh IPRoute per call rather than a cached one: pyroute2 0.9's sync
IPRoute keeps its netlink socket and asyncio event loop in thread-local
storage. trio.to_thread runs us on whichever worker thread is free and retires
idle workers, so a cached instance would grow one socket + loop per worker
thread (measured: +1 fd per thread) and need closing from a foreign thread.
Opening and closing one costs ~0.75 ms, small next to the adds themselves,
so per-call is both simpler and leak-free. The interface index comes from
socket.if_nametoindex (one ioctl) instead of IPRoute.link_lookup, which dumps
every link (~1.7 ms here, much more on a firewall with hundreds of VLANs).

Must not: decide which addresses a node holds (the election core does), or
renew them (kernel/leases.py does, on its own thread and socket).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
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


# IPv6 virtual addresses are also added *deprecated* (preferred lifetime 0):
# Linux then never picks them as the source of the node's own packets, as an
# IPv4 secondary address is not picked either.  Without it the master's unicast
# adverts would leave from the virtual address, which its peers do not know as
# a peer address.  Traffic to the address is unaffected.
V6_FLAGS = IFA_F_NODAD
FOREVER = 0xFFFFFFFF          # IFA_CACHEINFO's "infinite" lifetime


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


def add_addresses(interface: str, addresses: tuple[str, ...], lifetime_s: int = 0) -> list[str]:
    """Add addresses; already present is fine. Returns one error string per failure.

    lifetime_s > 0 gives them that valid lifetime (see kernel/leases.py: the
    kernel drops them unless they are renewed); 0 adds them for good.
    The adds go out as raw RTM_NEWADDR requests in one sendmsg (a takeover
    waits for them: ~0.2 ms instead of ~3 ms through pyroute2's encoders);
    pyroute2 is used only for the rare "already there?" check.
    """
    return list(add_addresses_detail(interface, addresses, lifetime_s).values())


def add_addresses_detail(interface: str, addresses: tuple[str, ...],
                         lifetime_s: int = 0) -> dict[str, str]:
    """As add_addresses, keyed: address -> its error (only the failed ones, in order)."""
    index = _ifindex(interface)
    found: dict[int, str] = {}           # position in `addresses` -> error (errors keep that order)
    todo = []
    for i, a in enumerate(addresses):
        parse_errors: list[str] = []
        for _a, ifa in _parsed("add", interface, (a,), parse_errors):
            if ifa.ip.is_unspecified:  # the kernel "succeeds" at adding 0.0.0.0 but ignores it
                found[i] = f"add {a} on {interface}: the unspecified address cannot be added"
            else:
                todo.append((i, a, ifa))
        if parse_errors:
            found[i] = parse_errors[0]
    exists = []
    if todo:
        for (i, a, ifa), code in zip(todo, newaddr(index, [ifa for _i, _a, ifa in todo], lifetime_s)):
            if code == errno.ENODEV:
                raise AddressError(f"interface {interface!r} disappeared while adding {a}")
            if code == errno.EEXIST:
                exists.append((i, a, ifa))
            elif code:
                found[i] = f"add {a} on {interface}: {_errtext(code)}"
    if exists:
        # IPv4 says EEXIST only for the same address+prefix, but IPv6 says it
        # for the same address with *any* prefix, so check before calling it
        # done (rare path: costs a dump).
        with IPRoute() as ipr:
            for i, a, ifa in exists:
                problem = _check_present(ipr, index, ifa)
                if problem:
                    found[i] = f"add {a} on {interface}: {problem}"
    return {addresses[i]: found[i] for i in sorted(found)}


RTM_NEWADDR = 20
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
NLMSG_ERROR = 2
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO, IFA_FLAGS = 1, 2, 6, 8
_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")


def _rta(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) & 3)


def newaddr_message(index: int, ifa: ipaddress.IPv4Interface | ipaddress.IPv6Interface, seq: int,
                    lifetime_s: int = 0, renew: bool = False) -> bytes:
    """One acked RTM_NEWADDR request, as pyroute2's addr("add") builds it.

    An add is exclusive (EEXIST tells an address already there); a renewal
    replaces the lifetime of a present address (and creates it if it is not:
    the kernel does not honour a missing NLM_F_CREATE for addresses).
    lifetime_s 0 means valid forever.
    """
    v6 = ifa.version == 6
    packed = ifa.ip.packed
    valid = lifetime_s or FOREVER
    attrs = _rta(IFA_ADDRESS, packed)
    if v6:
        attrs += _rta(IFA_FLAGS, struct.pack("=I", V6_FLAGS))
        attrs += _rta(IFA_CACHEINFO, struct.pack("=IIII", 0, valid, 0, 0))    # deprecated
    else:
        attrs = _rta(IFA_LOCAL, packed) + attrs
        if lifetime_s:
            attrs += _rta(IFA_CACHEINFO, struct.pack("=IIII", valid, valid, 0, 0))
    body = _IFADDRMSG.pack(AF_INET6 if v6 else AF_INET, ifa.network.prefixlen,
                           V6_FLAGS if v6 else 0, 0, index) + attrs
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | (NLM_F_REPLACE if renew else NLM_F_EXCL)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWADDR, flags, seq, 0) + body


def open_rtnetlink(timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.settimeout(timeout)
    except OSError:
        sock.close()
        raise
    return sock


def newaddr(index: int, ifas: list, lifetime_s: int = 0, renew: bool = False,
            sock: socket.socket | None = None) -> list[int]:
    """Send the requests in one batch; the errno of each (0 = done), in order.

    With `sock`, that (blocking, bound) rtnetlink socket is used and kept open.
    """
    own = sock is None
    if own:
        sock = open_rtnetlink()
    try:
        sock.sendall(b"".join(newaddr_message(index, ifa, seq, lifetime_s, renew)
                              for seq, ifa in enumerate(ifas, 1)))
        results: dict[int, int] = {}
        while len(results) < len(ifas):
            data = sock.recv(65536)
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                mlen, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, pos)
                if mlen < _NLMSGHDR.size:
                    break
                if mtype == NLMSG_ERROR and 1 <= seq <= len(ifas):
                    results[seq] = -struct.unpack_from("=i", data, pos + _NLMSGHDR.size)[0]
                pos += (mlen + 3) & ~3
        return [results[seq] for seq in range(1, len(ifas) + 1)]
    except socket.timeout:
        raise OSError(errno.ETIMEDOUT, "no answer from rtnetlink to RTM_NEWADDR") from None
    finally:
        if own:
            sock.close()


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
