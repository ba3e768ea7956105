"""Closing a socket that a trio task may be waiting on.

Every kernel adapter whose socket a trio task waits on (links, nflog, the
conntrack reader) closes it through here.

Must not: need trio: outside a trio run it only closes the socket.
"""

from __future__ import annotations

import socket

import trio


def close_socket(sock: socket.socket) -> None:
    """Close sock; inside trio, first wake any task blocked in wait_readable on it
    (closing alone would leave that task waiting on a dead file descriptor)."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pass                                # not in trio: nobody can be waiting
    else:
        trio.lowlevel.notify_closing(sock)
    sock.close()
