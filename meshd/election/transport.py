"""Election carrier: UDP to a link-local multicast group or to unicast peers.

One socket per address family, bound to the election port on the wildcard
address without SO_REUSEADDR or SO_REUSEPORT (meshd/kernel/udp.py: no other
socket, of any user, can share the port), joined to the multicast group on
each group's interface.  Adverts leave with TTL / hop
limit 255 and the receive side reports the TTL it saw, so the core can refuse
anything that crossed a router (the CARP/VRRP link-local guarantee).  Why UDP
rather than raw IP protocol 112 is in proto/election.md.

The daemon opens, binds, joins and sends on these sockets and never reads
them: the wire engine does, in its own process (meshd/wire/engine.py).

Must not: judge an advert (the TTL, the interface and the MAC are checked by
the core), or block: a send is a non-blocking sendto, and a full buffer is an
OSError that the shell reports to the core as a send failure.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

import trio

from ..kernel.udp import bind_exclusive

# Linux values missing from Python's socket module.
IP_PKTINFO = 8
IP_RECVTTL = 12
IP_TTL_CMSG = 2
IP_MULTICAST_ALL = 49

MAX_DATAGRAM = 2048


class TransportError(Exception):
    pass


@dataclass(frozen=True)
class Datagram:
    data: bytes
    source: str
    ttl: int | None
    interface: str | None


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise TransportError(f"interface {name} does not exist") from None


class ElectionSockets:
    def __init__(self, port: int, mcast_v4: str, mcast_v6: str):
        self.port = port
        self.mcast = {4: mcast_v4, 6: mcast_v6}
        self.socks: dict[int, trio.socket.SocketType] = {}
        self.joined: set[tuple[int, int]] = set()

    def open(self, families: set[int]) -> None:
        for family in sorted(families):
            if family not in self.socks:
                self.socks[family] = self._open(family)

    def _open(self, family: int) -> trio.socket.SocketType:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        s = trio.socket.socket(af, socket.SOCK_DGRAM)
        try:
            if family == 4:
                s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                # Only the groups this socket joined, not every group on the host.
                s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                bind_to = ("0.0.0.0", self.port)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                bind_to = ("::", self.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            bind_exclusive(s._sock, bind_to)  # synchronous: this runs before the loop matters
        except OSError as e:
            s.close()
            raise TransportError(f"cannot open IPv{family} election socket on port {self.port}: "
                                 f"{e.strerror}") from None
        return s

    def join(self, family: int, interface: str) -> None:
        """Join the multicast group on an interface; idempotent, repeated after link up."""
        s = self.socks.get(family)
        if s is None:
            return
        index = _ifindex(interface)
        group = ipaddress.ip_address(self.mcast[family]).packed
        try:
            if family == 4:
                mreq = group + struct.pack("=4si", b"\0" * 4, index)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                             group + struct.pack("=I", index))
        except OSError as e:
            if e.errno != 98:  # EADDRINUSE: already a member
                raise TransportError(f"cannot join {self.mcast[family]} on {interface}: {e.strerror}") from None
        self.joined.add((family, index))

    def send(self, family: int, interface: str, peers: tuple[str, ...], data: bytes) -> None:
        """Send one advert; raises OSError for the core to see as a send failure."""
        s = self.socks[family]
        if peers:
            for peer in peers:
                s._sock.sendto(data, (peer, self.port))
            return
        index = _ifindex(interface)
        if family == 4:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                         struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, index))
            s._sock.sendto(data, (self.mcast[4], self.port))
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            s._sock.sendto(data, (self.mcast[6], self.port, 0, index))

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()


def datagram_of(family: int, data: bytes, ancillary, addr) -> Datagram:
    """A datagram as recvmsg gave it, with the TTL (hop limit) and the arrival
    interface from its ancillary data (the wire engine reads the sockets)."""
    ttl = index = None
    for level, kind, payload in ancillary:
        if family == 4 and level == socket.IPPROTO_IP:
            if kind == IP_TTL_CMSG and len(payload) >= 4:
                ttl = struct.unpack("=i", payload[:4])[0]
            elif kind == IP_PKTINFO and len(payload) >= 12:
                index = struct.unpack("=i", payload[:4])[0]
        elif family == 6 and level == socket.IPPROTO_IPV6:
            if kind == socket.IPV6_HOPLIMIT and len(payload) >= 4:
                ttl = struct.unpack("=i", payload[:4])[0]
            elif kind == socket.IPV6_PKTINFO and len(payload) >= 20:
                index = struct.unpack("=I", payload[16:20])[0]
    name = None
    if index:
        try:
            name = socket.if_indextoname(index)
        except OSError:
            pass
    return Datagram(data, addr[0], ttl, name)
