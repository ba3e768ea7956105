"""The relays' listening sockets, bound by the daemon and handed to the relay
engine at exec.

The daemon is root: it can bind a port below 1024, and it binds with
IP_FREEBIND, so a backup node listens on a virtual address before it holds
it (the kernel delivers to the socket as soon as the address arrives; no
rebind at failover).  The engine, an unprivileged process without
CAP_NET_BIND_SERVICE, only accepts on what it is given.  A DNS relay gets a
TCP and a UDP socket on the same port.

Socket options from the relay's `tcp` table that belong to the listener
(backlog, buffers, TTL, minimum TTL) are set here; accepted sockets inherit
them.  nodelay is set per accepted socket by the engine.

Must not: accept a connection or read a byte (the engine does).
"""

from __future__ import annotations

import socket

from .sockopts import set_tcp_options

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def bind_relay(relay) -> list[socket.socket]:
    """The listening sockets of one `HealthRelay` (TCP, and UDP for dns).
    Raises OSError (the port taken, say); nothing is left open then."""
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if relay.protocol == "dns" else [])
    out: list[socket.socket] = []
    try:
        for kind in kinds:
            out.append(_bind(relay, kind))
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def _bind(relay, kind: int) -> socket.socket:
    v6 = ":" in relay.address
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        set_tcp_options(s, relay.tcp, v6, listener=True)
        s.bind((relay.address, relay.port))
        if kind == socket.SOCK_STREAM:
            s.listen(relay.tcp.backlog)
        s.set_inheritable(False)
    except OSError:
        s.close()
        raise
    return s
