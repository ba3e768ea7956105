"""What the daemon tells its supervisor, and which signals do what.

Pure helpers (no trio, no sockets): the signal table, the one-line status
that systemd shows, when start-up counts as done (READY=1), and the JSON dumps
written on SIGUSR1 / SIGUSR2.

Signals, as keepalived's where it has one:
- SIGTERM, SIGINT, SIGQUIT and every other signal whose default action ends
  the process and that can be caught (SIGALRM, SIGVTALRM, SIGPROF, SIGIO,
  SIGPWR, SIGXCPU, SIGXFSZ, SIGSTKFLT, the real-time signals): bow out, remove
  the addresses, save state, exit 0.  A stray `kill -ALRM` must not leave a
  node holding addresses that a peer is taking over.
- SIGHUP: reload (and reopen a log file).
- SIGUSR1: state dump, SIGUSR2: statistics dump, as JSON under run_dir.
- SIGTSTP, SIGTTIN, SIGTTOU: ignored (a daemon is not stopped from a terminal).
- Not catchable or not meaningful to catch: SIGKILL, SIGSTOP, and the faults
  (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP): the process
  dies, and its addresses expire with their lifetime (kernel/leases.py).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

STOP_SIGNALS = tuple(s for s in (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGALRM, signal.SIGVTALRM,
    signal.SIGPROF, signal.SIGIO, getattr(signal, "SIGPWR", None), signal.SIGXCPU,
    signal.SIGXFSZ, getattr(signal, "SIGSTKFLT", None),
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) if s is not None)
RELOAD_SIGNALS = (signal.SIGHUP,)
DUMP_SIGNALS = {signal.SIGUSR1: "meshd.state.json", signal.SIGUSR2: "meshd.stats.json"}
IGNORED_SIGNALS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
HANDLED_SIGNALS = (*STOP_SIGNALS, *RELOAD_SIGNALS, *DUMP_SIGNALS)

# Start-up is reported done at the latest this long after the groups started,
# even while the state mesh still waits for a peer's bulk: systemd would
# otherwise kill a node that is running, only demoted (TimeoutStartSec).
READY_WAIT_LIMIT = 30.0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def status_line(groups: list[dict], in_sync: bool | None) -> str:
    """`lan MASTER, srv BACKUP; state mesh in sync` (in_sync None: no state mesh)."""
    text = ", ".join(f"{g['name']} {g['state']}" + (f" (demoted {g['demotion']})" if g.get("demotion") else "")
                     for g in groups) or "no groups"
    if in_sync is not None:
        text += "; state mesh " + ("in sync" if in_sync else "NOT in sync")
    return text


class Readiness:
    """When start-up is done: every group left INIT and the state mesh has
    given its first verdict (in sync), or READY_WAIT_LIMIT has passed.

    Args:
        with_sync: whether a state mesh runs (no verdict to wait for otherwise).
    """

    def __init__(self, with_sync: bool):
        self.waiting_for_sync = with_sync
        self.groups_started_at: float | None = None
        self.ready = False

    def groups_started(self, now: float) -> None:
        self.groups_started_at = now

    def sync_verdict(self, in_sync: bool) -> None:
        if in_sync:
            self.waiting_for_sync = False

    def check(self, now: float, states: list[str]) -> bool:
        """True once, the first time start-up counts as done."""
        if self.ready or self.groups_started_at is None or "INIT" in states:
            return False
        if self.waiting_for_sync and now - self.groups_started_at < READY_WAIT_LIMIT:
            return False
        self.ready = True
        return True


def write_dump(directory: str, name: str, data: dict) -> str:
    """Write `data` as JSON to directory/name atomically (readers never see half); the path."""
    target = Path(directory) / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=str)
            f.write("\n")
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return str(target)
