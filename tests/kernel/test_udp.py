"""meshd's UDP ports cannot be shared: meshd/kernel/udp.py and the election's sockets.

Runs in the test's own network namespace on loopback (no root needed for
ports above 1024).  The lab test tests/lab/test_local_users_lab.py does the
same from another uid against a running node.
"""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from meshd.election.transport import ElectionSockets
from meshd.kernel.udp import bind_exclusive

SHARING = [[socket.SO_REUSEADDR], [socket.SO_REUSEPORT], [socket.SO_REUSEADDR, socket.SO_REUSEPORT]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharer_bind(address: tuple, options: list[int]) -> OSError | None:
    """Bind another socket to `address` with `options` on: the error, or None if it got in."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for opt in options:
            s.setsockopt(socket.SOL_SOCKET, opt, 1)
        s.bind(address)
        return None
    except OSError as e:
        return e
    finally:
        s.close()


def test_bind_exclusive_turns_sharing_off_and_refuses_sharers():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as meshd's sockets had
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        bind_exclusive(s, ("0.0.0.0", 0))
        port = s.getsockname()[1]
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        for options in SHARING:
            for address in ("0.0.0.0", "127.0.0.1"):
                err = sharer_bind((address, port), options)
                assert err is not None and err.errno == errno.EADDRINUSE, (address, options)
    finally:
        s.close()


def test_bind_exclusive_names_the_port_when_it_is_taken():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(OSError, match=rf"another socket holds UDP port {port} .*ss -uapn") as e:
                bind_exclusive(s, ("0.0.0.0", port))
            assert e.value.errno == errno.EADDRINUSE


def test_election_socket_port_cannot_be_shared():
    port = free_port()

    async def main():
        sockets = ElectionSockets(port, "224.0.0.18", "ff02::12")
        sockets.open({4})
        try:
            raw = sockets.socks[4]
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
            for options in SHARING:
                for address in ("0.0.0.0", "127.0.0.1", "224.0.0.18"):
                    err = sharer_bind((address, port), options)
                    assert err is not None and err.errno == errno.EADDRINUSE, (address, options)
        finally:
            sockets.close()

    trio.run(main)
