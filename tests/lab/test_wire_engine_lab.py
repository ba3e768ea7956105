"""The wire engine on a real pair (issue 11): the datagrams from the network
are read by an unprivileged child, and a node that cannot hear never takes
over on the silence.

* every meshd process's /proc/PID/status: the wire engine (a child of the
  daemon) is `nobody`, with no capability and NoNewPrivs; it is what reads the
  adverts (`meshctl status` counts what it forwarded);
* the backup's wire engine stopped (SIGSTOP: there, and reading nothing) for
  ten master-down intervals: the backup stays a backup (it logs that it is
  deaf), and hears again when the engine goes on;
* the backup's wire engine killed: restarted within a few hundred ms, the
  backup stays a backup meanwhile, and then takes over when the master dies.
"""

from __future__ import annotations

import os
import pwd
import signal
import time

import pytest
from meshlab import meshd_node as md
from procinfo import (
    assert_unprivileged,
    child_pid,
    children,
    cmdline,
    proc_status,
    wait_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("meshd_ready")]

NOBODY = pwd.getpwnam("nobody").pw_uid
WIRE = b"meshd.wire.engine"
GROUP_NAMES = [g["name"] for g in md.default_groups()]


def wire_pid(lab, n: int, not_this: int | None = None) -> int:
    return child_pid(lab.procs.get(f"meshd-fw{n}").pid, WIRE, NOBODY, not_this=not_this)


def states_during(lab, n: int, seconds: float) -> set[str]:
    """Every state node n's groups showed, polled for `seconds`."""
    seen: set[str] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen |= set(md.group_states(lab.status(n)).values())
        time.sleep(0.05)
    return seen


def test_the_wire_engine_reads_the_network_unprivileged_and_a_deaf_backup_holds(lab):
    for n in (1, 2):
        lab.start_meshd(n, advbase_ms=100)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUP_NAMES, timeout=15)
    meshd2 = lab.procs.get("meshd-fw2").pid
    engine = wire_pid(lab, 2)

    # The processes: the daemon is root, its wire engine is not, and is the only one.
    assert proc_status(meshd2)["Uid"].split()[0] == "0"
    assert [p for p in children(meshd2) if WIRE in cmdline(p)] == [engine]
    assert_unprivileged(engine, NOBODY)
    wire = wait_for(lambda: (w := lab.status(2)["wire_engine"])["forwarded"]["advert"] > 10 and w,
                    5, "adverts forwarded by fw2's wire engine")
    assert wire["up"] and wire["pid"] == engine and wire["uid"] == NOBODY and wire["starts"] == 1

    # Stopped: no tick, no advert.  Ten master-down intervals (about 3 s) as a backup.
    os.kill(engine, signal.SIGSTOP)
    try:
        seen = states_during(lab, 2, 3.0)
        assert seen == {"BACKUP"}, f"fw2 showed {seen} while its wire engine was stopped"
        st = lab.status(2)
        assert st["deaf"] and "silent" in st["deaf"], st["deaf"]
    finally:
        os.kill(engine, signal.SIGCONT)
    wait_for(lambda: lab.status(2)["deaf"] is None, 5, "fw2 hearing again")
    log = lab.procs.get("meshd-fw2").log
    assert md.log_events(log, "wire_engine_silent") and md.log_events(log, "wire_engine_heard")
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUP_NAMES, timeout=2)

    # Killed: restarted at once (0.1 s), a backup all the while.
    os.kill(engine, signal.SIGKILL)
    seen = states_during(lab, 2, 1.5)
    assert seen == {"BACKUP"}, f"fw2 showed {seen} while its wire engine restarted"
    new = wire_pid(lab, 2, not_this=engine)
    assert_unprivileged(new, NOBODY)
    exited = md.log_events(log, "child_exited")
    assert exited and exited[-1]["pid"] == engine and exited[-1]["status"] == "killed by SIGKILL"
    wire = wait_for(lambda: (w := lab.status(2)["wire_engine"])["up"] and w["pid"] == new and w,
                    5, "the new wire engine up")
    assert wire["starts"] == 2

    # And it hears: the master dies, fw2 takes over.
    lab.procs.send_signal("meshd-fw1", signal.SIGKILL)
    lab.wait_states({2: "MASTER"}, GROUP_NAMES, timeout=3)
