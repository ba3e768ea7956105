"""The wire engine: every datagram from the network, read and authenticated
in a process without privilege before the daemon sees it.

Started by the daemon (meshd/wire/remote.py, through
meshd/privsep/supervisor.py) as

    python -m meshd.wire.engine --fd N --parent PID --uid UID --gid GID
                                [--election4 FD] [--election6 FD] [--sync FD]

The daemon opens and binds the sockets (the election's UDP port, its
multicast groups; the state mesh's port, bound to its interface, which needs
CAP_NET_RAW) and passes them at exec; it keeps its own descriptor of each to
send on, and never reads them.  The engine loads its code, drops its
privileges before it reads anything (meshd/privsep/drop.py: `[node]
wire_user`, no capability, no new privileges, killed with its parent),
waits for the keys (`keys`), then reads the sockets in bursts: each
datagram goes through the screen (meshd/wire/screen.py); an authentic one
is forwarded whole (`advert` with the TTL and interface the kernel
reported, `frame`), the others are counted and reported every TICK_S
(`rejects`; a `tick` when there is nothing to report, so that the daemon
can tell a hung engine from a quiet link).  A slow daemon slows the engine (`Channel.send` waits), and
the kernel's socket buffers then drop, as they would for one process.

So a bug in what parses a datagram first (the header layouts, the MAC
check, AES-GCM's C code under attacker input) reaches an unprivileged
process that can read no file of meshd's and touch no kernel table: the
worst it can do with the derived keys it holds is what a holder of the keys
can do on the link anyway (docs/security.md).

Must not: decide anything about an advert or a frame beyond its
authenticity (the cores do), send on a socket, or open one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..privsep.child import ChildLog, child_main, parser

RECV_BURST = 64               # datagrams read per wake-up (then a checkpoint)
MAX_RECV = 65535


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("meshd-wire-engine")
    for option in ("--election4", "--election6", "--sync"):
        p.add_argument(option, type=int)
    return p.parse_args(argv)


def _preload() -> None:
    """Every module the engine will use, loaded before the drop (see the check
    engine's _preload: after it, a private interpreter can load nothing)."""
    import msgpack  # noqa: F401
    import trio  # noqa: F401
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401

    from ..election import transport  # noqa: F401
    from ..privsep import supervisor  # noqa: F401
    from . import proto, screen  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    return child_main("wire engine", _args(argv), _preload, _serve)


async def _serve(args: argparse.Namespace, notes: str) -> None:
    import socket

    import trio

    from ..election.transport import MAX_DATAGRAM, datagram_of
    from ..privsep.supervisor import Channel
    from .proto import FROM_WIRE, MAX_FRAMES, MAX_FRAMES_BYTES, TICK_S, TO_WIRE, rings_from
    from .screen import Screen

    log = ChildLog("wire engine")
    channel = log.channel = Channel(socket.socket(fileno=args.fd), TO_WIRE, FROM_WIRE, log, "daemon")
    screen = Screen(None, None)
    keyed = trio.Event()

    async def drain(sock: socket.socket, receive, forward, what: str, flush=None) -> None:
        """Read `sock` in bursts (a checkpoint between them); each datagram to `forward`,
        and `flush` (when given) after each burst."""
        sock.setblocking(False)
        await keyed.wait()
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(RECV_BURST):
                try:
                    got = receive(sock)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log("receive_error", socket=what, error=e.strerror or str(e))
                    await trio.sleep(0.01)
                    break
                await forward(got)
            if flush is not None:
                await flush()

    def election_receive(family: int):
        def receive(sock: socket.socket):
            data, ancillary, _flags, addr = sock.recvmsg(MAX_DATAGRAM, 256)
            return family, datagram_of(family, data, ancillary, addr)
        return receive

    async def advert(got) -> None:
        family, d = got
        if screen.advert(d.data, d.source):
            await channel.send("advert", family=family, data=d.data, source=d.source,
                               ttl=d.ttl, interface=d.interface)

    pending: list[dict] = []                    # screened frames of this burst
    pending_bytes = 0

    async def frame(got) -> None:
        nonlocal pending_bytes
        data, addr = got
        if screen.frame(data, addr[0]):
            if len(pending) >= MAX_FRAMES or pending_bytes + len(data) > MAX_FRAMES_BYTES:
                await flush_frames()
            pending.append({"data": data, "source": addr[0]})
            pending_bytes += len(data)

    async def flush_frames() -> None:
        nonlocal pending_bytes
        if pending:
            items = pending[:]
            pending.clear()
            pending_bytes = 0
            await channel.send("frames", items=items)

    async def report() -> None:
        while True:
            await trio.sleep(TICK_S)
            entries = screen.tally.report()
            if entries:
                await channel.send("rejects", at=time.monotonic(), entries=entries)
            else:
                await channel.send("tick", at=time.monotonic())

    def handle(m) -> None:
        if m.type == "keys":
            screen.set_keys(*rings_from(m.fields))
            keyed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.sender)
        for option, family in (("election4", 4), ("election6", 6)):
            fd = getattr(args, option)
            if fd is not None:
                nursery.start_soon(drain, socket.socket(fileno=fd), election_receive(family), advert,
                                   option)
        if args.sync is not None:
            buf = bytearray(MAX_RECV)
            view = memoryview(buf)

            def receive_frame(sock: socket.socket):
                n, addr = sock.recvfrom_into(buf)       # one buffer, not 64 KiB per datagram
                return bytes(view[:n]), addr
            nursery.start_soon(drain, socket.socket(fileno=args.sync), receive_frame, frame, "sync",
                               flush_frames)
        nursery.start_soon(report)
        channel.send_nowait("hello", pid=os.getpid(), uid=os.getuid(), notes=notes)
        await channel.messages(handle)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
