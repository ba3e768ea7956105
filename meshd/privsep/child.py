"""What every engine child does the same way (meshd/health/engine.py,
meshd/wire/engine.py): its common arguments, the signals it leaves to meshd,
the drop before it reads anything, and a log that goes to the daemon.

Must not: know what the child does.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from .drop import PrivilegeError, drop_privileges

EXIT_PRIVILEGES = 70          # EX_SOFTWARE: the drop failed, do not run

# Signals sent to meshd's whole process group (a terminal's ^C, a group
# kill, `kill -HUP -PGID`) are meshd's to act on: an engine ends when meshd
# closes its socket or dies (PR_SET_PDEATHSIG), never on its own.
IGNORED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")


def parser(prog: str) -> argparse.ArgumentParser:
    """--fd (the socketpair), --parent (meshd's pid), --uid and --gid (the user)."""
    p = argparse.ArgumentParser(prog=prog)
    for option in ("--fd", "--parent", "--uid", "--gid"):
        p.add_argument(option, type=int, required=True)
    return p


def child_main(name: str, args: argparse.Namespace, preload: Callable[[], None], serve) -> int:
    """Load the code, drop to args.uid/gid, then `trio.run(serve, args, notes)`."""
    for sig in IGNORED_SIGNALS:
        signal.signal(getattr(signal, sig), signal.SIG_IGN)
    preload()
    try:
        notes = drop_privileges(args.uid, args.gid, args.parent)
    except PrivilegeError as e:
        print(f"meshd {name}: {e}; not running", file=sys.stderr, flush=True)
        return EXIT_PRIVILEGES
    import trio
    trio.run(serve, args, "; ".join(notes))
    return 0


class ChildLog:
    """An event logger for a child: a `log` message to the daemon once
    `channel` is set and has room, stderr (the daemon's journal) otherwise."""

    def __init__(self, name: str):
        self.name = name
        self.channel = None

    def __call__(self, event: str, level: str = "warning", **fields) -> None:
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if self.channel is None or not self.channel.send_nowait("log", event=event[:64], level=level,
                                                                text=text[:1024]):
            print(f"meshd {self.name}: {event} {text}", file=sys.stderr, flush=True)
