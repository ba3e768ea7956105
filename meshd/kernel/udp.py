"""UDP ports that no other socket can share: the election's and the state mesh's.

Linux lets a second UDP socket bind an address and port already bound when
*both* sockets set SO_REUSEADDR (any user may), or both set SO_REUSEPORT (the
same effective uid only).  Unicast datagrams then go to one of the sockets,
the last bound: a local user who bound the election port that way got the
adverts meant for meshd, which took its silent master for dead (issue 11).
With both options off on meshd's socket, any other bind of the port on an
address meshd's wildcard covers (the node's addresses, loopback, a multicast
group, and for a dual-stack IPv6 socket the IPv4 ones too) fails with
EADDRINUSE, whoever tries, with whatever options.  Off is the kernel's
default; `bind_exclusive` sets it anyway, so that the intent is in the code
and a later change cannot quietly turn sharing back on.

meshd itself never needs to share: one socket per family and port (the
election's IPv6 socket is IPV6_V6ONLY, so it does not collide with the IPv4
one), and multicast is received on that one socket, joined per interface.

Must not: set socket options other than these two, or keep any state.
"""

from __future__ import annotations

import errno
import socket


def bind_exclusive(sock: socket.socket, address: tuple) -> None:
    """Turn SO_REUSEADDR and SO_REUSEPORT off, then bind.

    Raises OSError; EADDRINUSE (the port held by another socket, maybe a
    local user's, before meshd started) says so and how to find the holder.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
    try:
        sock.bind(address)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        port = address[1]
        raise OSError(e.errno, f"{e.strerror}: another socket holds UDP port {port} "
                               f"(`ss -uapn sport = :{port}` names its process)") from None
