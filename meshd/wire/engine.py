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

from ..privsep.drop import PrivilegeError, drop_privileges

EXIT_PRIVILEGES = 70          # EX_SOFTWARE: the drop failed, do not run
RECV_BURST = 64               # datagrams read per wake-up (then a checkpoint)
MAX_RECV = 65535

# Signals sent to meshd's whole process group are meshd's to act on: the
# engine ends when meshd closes its socket or dies (PR_SET_PDEATHSIG).
IGNORED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="meshd-wire-engine")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("--election4", type=int)
    p.add_argument("--election6", type=int)
    p.add_argument("--sync", type=int)
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
    import signal
    for name in IGNORED_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    args = _args(argv)
    _preload()
    try:
        notes = drop_privileges(args.uid, args.gid, args.parent)
    except PrivilegeError as e:
        print(f"meshd wire engine: {e}; not running", file=sys.stderr, flush=True)
        return EXIT_PRIVILEGES
    import trio
    trio.run(_serve, args, "; ".join(notes))
    return 0


async def _serve(args: argparse.Namespace, notes: str) -> None:
    import socket

    import trio

    from ..election.transport import MAX_DATAGRAM, datagram_of
    from ..privsep.supervisor import Channel
    from .proto import FROM_WIRE, TICK_S, TO_WIRE, rings_from
    from .screen import Screen

    channel: Channel | None = None

    def log(event: str, level: str = "warning", **fields) -> None:
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if channel is None or not channel.send_nowait("log", event=event[:64], level=level,
                                                      text=text[:1024]):
            print(f"meshd wire engine: {event} {text}", file=sys.stderr, flush=True)

    channel = Channel(socket.socket(fileno=args.fd), TO_WIRE, FROM_WIRE, log, "daemon")
    screen = Screen(None, None)
    keyed = trio.Event()

    async def election(family: int, sock: socket.socket) -> None:
        sock.setblocking(False)
        await keyed.wait()
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(RECV_BURST):
                try:
                    data, ancillary, _flags, addr = sock.recvmsg(MAX_DATAGRAM, 256)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log("receive_error", family=family, error=e.strerror or str(e))
                    await trio.sleep(0.01)
                    break
                d = datagram_of(family, data, ancillary, addr)
                if screen.advert(d.data, d.source):
                    await channel.send("advert", family=family, data=d.data, source=d.source,
                                       ttl=d.ttl, interface=d.interface)

    async def sync(sock: socket.socket) -> None:
        sock.setblocking(False)
        await keyed.wait()
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(RECV_BURST):
                try:
                    data, addr = sock.recvfrom(MAX_RECV)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log("sync_receive_error", error=e.strerror or str(e))
                    await trio.sleep(0.01)
                    break
                if screen.frame(data, addr[0]):
                    await channel.send("frame", data=data, source=addr[0])

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
                nursery.start_soon(election, family, socket.socket(fileno=fd))
        if args.sync is not None:
            nursery.start_soon(sync, socket.socket(fileno=args.sync))
        nursery.start_soon(report)
        channel.send_nowait("hello", pid=os.getpid(), uid=os.getuid(), notes=notes)
        await channel.messages(handle)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
