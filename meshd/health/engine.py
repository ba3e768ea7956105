"""The check engine: meshd's network health checks in a process of their own.

Started by the daemon (meshd/health/remote.py, through
meshd/privsep/supervisor.py) as

    python -m meshd.health.engine --fd N --parent PID --uid UID --gid GID
                                  [--icmp4 FD] [--icmp6 FD]

It loads its code, then drops its privileges before it reads anything
(meshd/privsep/drop.py: the
`[health] check_user`, no capability, no new privileges, killed with its
parent), then runs the same `CheckRunner` and `run_check` the daemon used to
run itself, for every method but `script`: the engine parses what backends
send (HTTP headers, TLS records, banners), so a bug there or a hostile
backend reaches an unprivileged process and not the daemon that holds the
firewall's addresses and tables.

ICMP: an unprivileged process can open no raw socket, and the default
net.ipv4.ping_group_range ("1 0") allows no ping socket either, so the
daemon opens one raw ICMP socket per family and passes it at exec
(`--icmp4`, `--icmp6`); meshd/health/icmp.py shares it among the echoes.

The daemon's messages are checked against meshd/health/engineproto.py; a bad
one is reported back as a `log` line and dropped.  End of file on the
socket (the daemon closed it or died) ends the engine.

Must not: run scripts, open a listening socket, or decide anything about a
host (it only reports outcomes).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..privsep.child import ChildLog, child_main, parser

ENGINE_CAP = 20000            # the runner's own safety cap (the core's limit is at most 10000)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("meshd-check-engine")
    p.add_argument("--icmp4", type=int)
    p.add_argument("--icmp6", type=int)
    return p.parse_args(argv)


def _preload() -> None:
    """Every module the engine will use, loaded while it may still read them:
    after the drop, an interpreter installed under a private directory (a
    pyenv under /root) can load nothing more.  Loading code is not reading
    input: no byte from a backend or the daemon is read before the drop."""
    import encodings.idna  # noqa: F401  (ssl encodes server names with it)
    import ssl  # noqa: F401
    import stringprep  # noqa: F401
    import unicodedata  # noqa: F401

    import msgpack  # noqa: F401
    import trio  # noqa: F401
    from cryptography import x509  # noqa: F401

    from ..privsep import supervisor  # noqa: F401
    from . import checks, engineproto, icmp  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    return child_main("check engine", _args(argv), _preload, _serve)


async def _serve(args: argparse.Namespace, notes: str) -> None:
    import socket

    import trio

    from ..privsep.supervisor import Channel
    from . import icmp
    from .checks import CheckRunner
    from .engineproto import FROM_ENGINE, TO_ENGINE, outcome_fields, target_from

    log = ChildLog("check engine")

    sock = socket.socket(fileno=args.fd)
    channel = log.channel = Channel(sock, TO_ENGINE, FROM_ENGINE, log, "daemon")

    def report(check_id, outcome) -> None:
        if not channel.send_nowait("outcome", id=check_id, **outcome_fields(outcome)):
            log("engine_outcome_lost", id=check_id)

    async with trio.open_nursery() as nursery:
        for fd in (args.icmp4, args.icmp6):
            if fd is not None:
                nursery.start_soon(icmp.install_shared(socket.socket(fileno=fd)).run)
        runner = CheckRunner(nursery, report, max_in_flight=ENGINE_CAP)

        def handle(m) -> None:
            if m.type == "start":
                target = target_from(m.fields)
                if isinstance(target, str):
                    log("engine_start_refused", id=m.fields["id"], what=target)
                    channel.send_nowait("refused", id=m.fields["id"])
                elif not runner.start(m.fields["id"], target):
                    channel.send_nowait("refused", id=m.fields["id"])
            elif m.type == "cancel":
                runner.cancel(m.fields["id"])

        nursery.start_soon(channel.sender)
        channel.send_nowait("hello", pid=os.getpid(), uid=os.getuid(), notes=notes)
        await channel.messages(handle)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
