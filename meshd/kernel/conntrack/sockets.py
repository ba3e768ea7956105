"""The NETLINK_NETFILTER sockets of the reader, the dump and the committer.

Owns: opening a socket with its buffers (SO_*BUFFORCE when we may, the plain
option with a warning when not), the netlink socket options the three parts
share, the receive size, errno names as ctnetlink spells them, and the log
signature the parts take.

Must not: bind, subscribe or send (each part does that on its own socket),
keep state, or import the other rooms of this package.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from meshd.kernel import ctnetlink as ct

SOL_NETLINK = 270
NETLINK_NO_ENOBUFS, NETLINK_CAP_ACK = 5, 10
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
_RECV_SIZE = 1 << 16            # kernel dump datagrams are at most 32 KiB, events far less

Log = Callable[..., None]


def _no_log(event: str, level: str = "info", **fields) -> None:
    pass


def errno_name(err: int) -> str:
    # errno.errorcode[95] is ENOTSUP; ctnetlink's sources and docs say EOPNOTSUPP.
    if err == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno.errorcode.get(err, f"E{err}")


def _socket(rcvbuf: int, log: Log, what: str, sndbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, ct.NETLINK_NETFILTER)
    try:
        set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf, log, what)
        if sndbuf:
            set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf, log, what)
    except BaseException:
        sock.close()
        raise
    return sock


def set_buffer(sock: socket.socket, force: int, plain: int, size: int, log: Log, what: str) -> int:
    """Set a socket buffer past net.core.[rw]mem_max if we may (CAP_NET_ADMIN), else as far as allowed.

    Returns the size the kernel granted (it doubles the request for bookkeeping).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError as e:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
        granted = sock.getsockopt(socket.SOL_SOCKET, plain)
        log("netlink_buffer_limited", level="warning", socket=what, wanted=size, granted=granted // 2,
            error=e.strerror, hint="raise net.core.rmem_max / wmem_max or grant CAP_NET_ADMIN")
        return granted
    return sock.getsockopt(socket.SOL_SOCKET, plain)

