"""Gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6).

After a takeover, hosts and switches on the segment still map the VIPs to the
old master's MAC. Announcing each VIP from the new master's MAC updates the
switches' forwarding tables (from the Ethernet source) and the hosts'
neighbour caches (from the ARP/NA payload).

Frames are built by pure functions (unit-testable without root) and sent on a
raw AF_PACKET socket, which needs CAP_NET_RAW.

Must not: decide when to announce or how often (the election core's Announce
carries the count and interval), or block: the socket is non-blocking, and a
full send buffer is an AnnounceError (the next burst repeats the frame).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct

import trio

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARPHRD_ETHER = 1
SIOCGIFHWADDR = 0x8927
BROADCAST_MAC = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")  # 33:33 + low 32 bits of ff02::1
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80000000, 0x40000000, 0x20000000
ND_OPT_TARGET_LL_ADDR = 2
MIN_FRAME = 60  # minimum Ethernet frame without FCS


class AnnounceError(Exception):
    """Announcing failed (interface gone, down, not Ethernet, no permission)."""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # Accept "addr" or "addr/prefix" (the config's form).
    return ipaddress.ip_interface(text).ip


def _check_mac(mac: bytes) -> None:
    if len(mac) != 6:
        raise ValueError(f"expected a 6-byte MAC address, got {len(mac)} bytes")


def garp_frame(mac: bytes, ip: str) -> bytes:
    """Broadcast ARP request announcing ip at mac (sender IP == target IP).

    A request rather than a reply: a broadcast request is processed by every
    host's ARP code, and RFC 5227 (section 3) chose requests for ARP
    Announcements because some stacks ignore unsolicited replies. Linux
    treats a request with sender IP == target IP as gratuitous and updates an
    existing entry even within its locktime; a gratuitous reply only counts if
    the target MAC also equals the sender MAC. The kernel's own arp_notify
    sends exactly this: request, target MAC zero (RFC 5227: "SHOULD be zero").
    """
    _check_mac(mac)
    addr = _ip(ip)
    if addr.version != 4:
        raise ValueError(f"garp_frame needs an IPv4 address, got {ip}")
    eth = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", ARPHRD_ETHER, 0x0800, 6, 4, 1)  # op 1 = request
    arp += mac + addr.packed + b"\x00" * 6 + addr.packed
    # Pad to the Ethernet minimum ourselves: most NICs pad runts, not all
    # virtual switches/drivers do, and receivers ignore the trailing bytes.
    return (eth + arp).ljust(MIN_FRAME, b"\x00")


def icmpv6_checksum(src: bytes, dst: bytes, payload: bytes) -> int:
    """RFC 4443 checksum: pseudo-header (src, dst, length, next header) + payload."""
    data = src + dst + struct.pack("!I3xB", len(payload), ICMPV6) + payload
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_na_frame(mac: bytes, ip: str, router: bool = False) -> bytes:
    """Unsolicited NA for ip (RFC 4861 7.2.6): to all-nodes, Override set.

    Override set so receivers replace the old master's MAC; Solicited clear
    because nobody asked (receivers then mark the entry STALE and re-verify).
    `router` sets the R flag: it must match whether we forward, because an NA
    with R clear makes hosts drop the sender from their default router list
    (RFC 4861 7.2.5). The Announcer sets it from the interface's forwarding
    sysctl, as the kernel and keepalived do.
    """
    _check_mac(mac)
    addr = _ip(ip)
    if addr.version != 6:
        raise ValueError(f"unsolicited_na_frame needs an IPv6 address, got {ip}")
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    option = struct.pack("!BB", ND_OPT_TARGET_LL_ADDR, 1) + mac  # length in 8-octet units
    body = struct.pack("!I", flags) + addr.packed + option
    icmp = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, 0) + body
    csum = icmpv6_checksum(addr.packed, ALL_NODES.packed, icmp)
    icmp = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, csum) + body
    # Version 6, traffic class 0, flow label 0; hop limit 255 is mandatory
    # (receivers drop ND with any other hop limit: proof it is on-link).
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), ICMPV6, 255) + addr.packed + ALL_NODES.packed
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + icmp


def _read_forwarding(interface: str) -> bool:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{interface}/forwarding") as f:
            return f.read().strip() != "0"
    except OSError:
        return False


class Announcer:
    """Raw AF_PACKET socket on one interface; send() emits one frame per address.

    Protocol 0 in socket()/bind(): the socket only sends, it never receives,
    so no receive queue fills up with the segment's traffic. The MAC comes
    from SIOCGIFHWADDR on the socket rather than /sys/class/net: sysfs shows
    the network namespace it was mounted in, the ioctl the socket's own.
    """

    def __init__(self, interface: str, router: bool | None = None):
        self.interface = interface
        try:
            self.ifindex = socket.if_nametoindex(interface)
        except (OSError, ValueError) as e:
            raise AnnounceError(f"cannot announce on {interface}: no such interface ({e})") from None
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
        except OSError as e:
            raise AnnounceError(f"cannot announce on {interface}: packet socket: {e.strerror}") from None
        try:
            self.sock.bind((interface, 0))
            req = struct.pack("16s16x", interface.encode())
            res = fcntl.ioctl(self.sock.fileno(), SIOCGIFHWADDR, req)
        except OSError as e:
            self.sock.close()
            raise AnnounceError(f"cannot announce on {interface}: {e.strerror}") from None
        hwtype = struct.unpack_from("H", res, 16)[0]  # sockaddr.sa_family, host order
        if hwtype != ARPHRD_ETHER:
            self.sock.close()
            raise AnnounceError(f"cannot announce on {interface}: not an Ethernet interface (type {hwtype})")
        self.mac = res[18:24]
        self.router = _read_forwarding(interface) if router is None else router

    def frame(self, address: str) -> bytes:
        if _ip(address).version == 4:
            return garp_frame(self.mac, address)
        return unsolicited_na_frame(self.mac, address, self.router)

    def send(self, addresses) -> None:
        """One frame per address. Non-blocking; raises AnnounceError on the first failure.

        EAGAIN (send buffer full: ~270 frames in flight) is reported as an
        error too rather than waited out: the next burst repeats the frame.
        """
        for a in addresses:
            try:
                frame = self.frame(a)
            except ValueError as e:
                raise AnnounceError(f"cannot announce {a} on {self.interface}: {e}") from None
            try:
                self.sock.send(frame)
            except OSError as e:
                what = "interface is gone" if e.errno in (errno.ENXIO, errno.ENODEV) else e.strerror
                raise AnnounceError(f"cannot announce {a} on {self.interface}: {what} "
                                    f"({errno.errorcode.get(e.errno, e.errno)})") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Announcer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def announce(interface: str, addresses, count: int, interval_ms: int) -> None:
    """Send `count` bursts (one frame per address), `interval_ms` apart.

    The first burst goes out at once. Socket setup and the sends are
    non-blocking syscalls, so they run inline on the trio thread.
    """
    if count <= 0 or not addresses:
        return
    try:
        ann = Announcer(interface)
    except AnnounceError as e:
        raise AnnounceError(f"{e} (announcing {', '.join(addresses)})") from None
    with ann:
        for i in range(count):
            if i:
                await trio.sleep(interval_ms / 1000)
            ann.send(addresses)
