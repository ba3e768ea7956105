"""The socket options of a relay's `tcp` table, on its listener (the daemon,
meshd/relay/listeners.py) and on accepted and backend sockets (the engine).

Must not: bind, connect or read.
"""

from __future__ import annotations

import socket

IP_MINTTL = getattr(socket, "IP_MINTTL", 21)
IPV6_MINHOPCOUNT = 73


def set_tcp_options(s: socket.socket, tcp, v6: bool, listener: bool = False) -> None:
    """Buffers, TTL and minimum TTL of a relay's `tcp` table (and nodelay, on a
    connected TCP socket); `tcp` is a RelayTcp or anything with its fields."""
    if tcp.sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, tcp.sndbuf)
    if tcp.rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, tcp.rcvbuf)
    if tcp.ip_ttl is not None:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, tcp.ip_ttl)
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, tcp.ip_ttl)
    if tcp.ip_minttl is not None:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MINHOPCOUNT, tcp.ip_minttl)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_MINTTL, tcp.ip_minttl)
    if not listener and tcp.nodelay and s.type == socket.SOCK_STREAM:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
