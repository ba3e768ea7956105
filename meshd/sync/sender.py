"""The sync socket's way out: a burst of datagrams in one sendmmsg, or one sendto each.

Owns: the choice between the accelerator's sendmmsg (meshd.fastct, one
system call for up to 64 datagrams) and a sendto loop (the pure-Python
fallback, and any socket-like object without a file descriptor, as the
shell's tests use), and the numeric addresses packed as sockaddrs, once each.

Both ways send the datagrams in order, go on after a failure and report
every failure with its position, so the shell's accounting (counted, logged,
a path without a route switched) is the same whichever ran.

Must not: decide where a frame goes (the shell and the path table do), count
or log (the shell does), or raise for a datagram that could not go.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from meshd import fastct

_SOCKADDR_CACHE = 1024      # addresses packed and kept; peers and paths are far fewer
# Fewer datagrams than this go by sendto: the kernel's delivery of each
# datagram (through the veth, in the sender's call) costs the same either way,
# and for one or two the list sendmmsg takes costs more than the calls it
# saves (docs/benchmarks.md, "Levers").
SENDMMSG_FROM = 3


class DatagramSender:
    """Datagrams out of one UDP socket (the state mesh's).

    Args:
      sock: the socket (socket.socket for sendmmsg; anything with sendto
        otherwise).
      family: the socket's, for the packed addresses.
      fast: the accelerator, or None for the sendto loop; default
        meshd.fastct.FAST.
    """

    def __init__(self, sock, family: int, fast=...):
        if fast is ...:
            fast = fastct.FAST
        self.sock = sock
        self.family = family
        self.fast = fast if isinstance(sock, socket.socket) else None
        self._packed: dict[int, dict[str, bytes]] = {}      # port -> address -> sockaddr or b""
        self.calls = 0              # system calls made (sendmmsg or sendto)
        self.batches = 0            # send() calls: one per dispatch of frames
        self.datagrams = 0

    def send(self, datagrams: Sequence[tuple[bytes, str]], port: int) -> list[tuple[int, OSError]]:
        """Send each (data, address) to address:port, in order; returns the failures.

        A failure is (position in datagrams, the OSError a sendto raised or
        would have raised); the datagrams after it still go.
        """
        self.batches += 1
        self.datagrams += len(datagrams)
        if self.fast is None or len(datagrams) < SENDMMSG_FROM:
            failures = []
            sendto = self.sock.sendto
            self.calls += len(datagrams)
            for i, (data, address) in enumerate(datagrams):
                try:
                    sendto(data, (address, port))
                except OSError as e:
                    failures.append((i, e))
            return failures
        packed = self._packed.get(port)
        if packed is None or len(packed) >= _SOCKADDR_CACHE:
            packed = self._packed[port] = {}
        failures: list[tuple[int, OSError]] = []
        run: list[tuple[bytes, bytes]] = []      # (data, sockaddr): one sendmmsg ...
        where: list[int] = []                    # ... of these positions
        for i, (data, address) in enumerate(datagrams):
            sa = packed.get(address)
            if sa is None:
                sa = packed[address] = _pack(self.family, address, port)
            if sa:
                run.append((data, sa))
                where.append(i)
                continue
            # Not numeric (a name): sendto resolves it, or says what is wrong, in its turn.
            if run:
                failures += self._send_run(run, where)
                run, where = [], []
            failures += self._send_each(datagrams, port, (i,))
        if run:
            failures += self._send_run(run, where)
        return failures

    def stats(self) -> dict:
        return {"batches": self.batches, "datagrams": self.datagrams, "calls": self.calls,
                "implementation": "python" if self.fast is None else "c"}

    def _send_run(self, run: list[tuple[bytes, bytes]], where: list[int]) -> list[tuple[int, OSError]]:
        self.calls += (len(run) + 63) // 64
        _sent, failed = self.fast.sendmmsg(self.sock.fileno(), run)
        if not failed:
            return []
        return [(where[j], OSError(err, os.strerror(err))) for j, err in failed]

    def _send_each(self, datagrams, port: int, positions) -> list[tuple[int, OSError]]:
        failures = []
        sendto = self.sock.sendto
        for i in positions:
            data, address = datagrams[i]
            self.calls += 1
            try:
                sendto(data, (address, port))
            except OSError as e:
                failures.append((i, e))
        return failures


def _pack(family: int, address: str, port: int) -> bytes:
    """The sockaddr of a numeric address, or b"" (a name, or not of the family)."""
    try:
        return fastct.pack_sockaddr(family, address, port)
    except (OSError, UnicodeError, ValueError):
        return b""
