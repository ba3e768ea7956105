"""Health checks and the nftables load balancer, end to end: meshd on two
firewalls, a redirect on the virtual address 192.0.2.1:80 to three HTTP
backends and a backup table, real processes killed and restarted, new
connections counted by the backend that answered (netns-lab/meshlab/lb.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from meshlab import meshd_node as md
from meshlab.lb import SORRY, WEB, LbRun, Traffic
from meshlab.topology import VIRTUAL_ADDRESSES, nsexec
from meshlab.watch import start_watch

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("meshd_ready")]

# Up hosts are checked slowly, so that the reset watcher's effect shows: a
# backend killed just after a check is found long before its next one.
INTERVAL_MS, FAST_MS, DOWN_MS, FALL, RISE = 3000, 100, 400, 2, 2
# A dead host is out within fall checks: one interval until the next check at
# worst, then fall - 1 fast intervals, each check bounded by its timeout.
# Doubled, plus a second, as slack for a loaded 2-core machine.
DETECT_BOUND_S = 2 * (INTERVAL_MS + (FALL - 1) * FAST_MS + FALL * 300) / 1000 + 1.0
# Jitter is 10 %: the next regular check comes at least this long after the last.
NEXT_CHECK_S = 0.9 * INTERVAL_MS / 1000


def last_check_ago(run_dir: str, n: int, host: str) -> float | None:
    answer = md.control(run_dir, n, {"cmd": "show", "what": "hosts"})
    return next((r["last_check_ago_s"] for r in answer.get("rows", []) if r["host"] == host), None)


def settle(lab, names) -> None:
    """Both nodes' demotion released and fw1 master again: while the first checks
    answer, a node whose hosts are still unknown is demoted, and the other may
    hold the addresses for that moment."""
    deadline = time.monotonic() + 15
    while any(md.status(lab.run_dir, n)["demotions"].get("all", 0) for n in (1, 2)):
        assert time.monotonic() < deadline, "health demotion not released"
        time.sleep(0.05)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=10)
    time.sleep(0.3)                             # neighbours follow the last move (GARP)


def summary(run_dir: str, n: int) -> dict[str, str]:
    """`meshctl show summary` of fw n as {"type name": status}."""
    answer = md.control(run_dir, n, {"cmd": "show", "what": "summary"})
    assert answer.get("ok"), answer
    return {f"{r['type']} {r['name']}": r["status"] for r in answer["rows"]}


def test_redirect_follows_backend_health_across_a_failover(lab):
    run = LbRun(lab.procs, lab.topo, interval_ms=INTERVAL_MS, fall=FALL, rise=RISE,
                fast_interval_ms=FAST_MS, down_interval_ms=DOWN_MS, demote="all")
    try:
        run.add_backend_addresses()
        for name in {**WEB, **SORRY}:
            run.start_backend(name)
        names = run.start_meshd()
        lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=15)
        web = set(WEB.values())
        run.wait_slots(1, web, timeout=15)
        run.wait_slots(2, web, timeout=15)          # the backup checks too
        settle(lab, names)

        # New connections are spread over the three live hosts.
        before = run.counts(30)
        assert before == {"web1": 10, "web2": 10, "web3": 10}, before
        assert summary(lab.run_dir, 1)["redirect www"] == "active"

        # A backend killed just after a check: the client connecting meanwhile
        # gets resets from it, the watcher sees the burst and the host is
        # checked at once, long before its next regular check.
        deadline = time.monotonic() + 10
        while (ago := last_check_ago(lab.run_dir, 1, "web2")) is None or ago > 0.2:
            assert time.monotonic() < deadline, f"web2 last checked {ago} s ago"
            time.sleep(0.02)
        traffic = Traffic(run)
        t_kill = run.kill_backend("web2")
        run.wait_slots(1, web - {WEB["web2"]}, timeout=DETECT_BOUND_S)
        detection = time.monotonic() - t_kill
        traffic.stop()
        bursts = md.log_events(lab.procs.get("meshd-fw1").log, "health_rst_burst")
        assert bursts and bursts[0].get("address") == WEB["web2"], bursts
        assert detection < NEXT_CHECK_S - 0.2, f"out after {detection:.2f} s: the burst did not speed it up"
        down = [r for r in md.log_events(lab.procs.get("meshd-fw1").log, "health_host")
                if r.get("status") == "down"]
        assert down and "198.51.100.12:80" in down[-1].get("message", ""), down
        after = run.counts(30)
        assert set(after) == {"web1", "web3"}, after

        # Every main host down: the backup table serves.
        run.kill_backend("web1")
        run.kill_backend("web3")
        run.wait_slots(1, set(SORRY.values()), timeout=DETECT_BOUND_S)
        assert run.counts(6) == {"sorry1": 6}
        assert summary(lab.run_dir, 1)["redirect www"] == "active (using backup table)"
        assert md.status(lab.run_dir, 1)["demotions"].get("all", 0) == 0

        # Nothing left: new connections are refused and the redirect's demotion
        # counter is raised (relayd's carp demote), until a host is back.
        # (Both nodes demote; fw2 may preempt for the moment it sees the hosts
        # alive while fw1 does not: wait until both agree and fw1 is back.)
        run.kill_backend("sorry1")
        run.wait_slots(1, set(), timeout=DETECT_BOUND_S)
        run.wait_slots(2, set(), timeout=DETECT_BOUND_S)
        lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=10)
        for n in (1, 2):
            assert md.status(lab.run_dir, n)["demotions"]["all"] >= 100
        assert summary(lab.run_dir, 1)["redirect www"] == "down"
        assert run.counts(3) == {"refused": 3}
        run.start_backend("sorry1")
        run.wait_slots(1, set(SORRY.values()), timeout=DETECT_BOUND_S)
        assert md.status(lab.run_dir, 1)["demotions"].get("all", 0) == 0

        # A host brought back returns after `rise` good checks.
        for name in ("web1", "web2", "web3"):
            run.start_backend(name)
        run.wait_slots(1, web, timeout=DETECT_BOUND_S + RISE * INTERVAL_MS / 1000)
        assert set(run.counts(9)) == {"web1", "web2", "web3"}

        # meshctl host disable drains: out of the map, no new connection, not checked.
        p = subprocess.run([sys.executable, "-m", "meshd.control.meshctl", "--socket",
                            md.control_socket(lab.run_dir, 1), "host", "disable", "web3"],
                           capture_output=True, text=True, env={**os.environ, **md.child_env()})
        assert p.returncode == 0, p.stderr
        assert "web3 is now disabled" in p.stdout
        run.wait_slots(1, {WEB["web1"], WEB["web2"]}, timeout=5)
        assert "web3" not in run.counts(10)
        assert summary(lab.run_dir, 1)["host web3"] == "disabled"

        # Failover: fw2 has been checking all along and forwards to live hosts only.
        run.kill_backend("web1")
        run.wait_slots(2, {WEB["web2"], WEB["web3"]}, timeout=DETECT_BOUND_S)
        watch = start_watch(lab.procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=15)
        lab.procs.send_signal("meshd-fw1", signal.SIGKILL)
        lab.topo.fw_links(1, up=False)
        assert watch.wait_result(timeout=15).get("event") == "present"
        deadline = time.monotonic() + 5      # neighbours learn the new holder (GARP)
        while run.connect().startswith("error") and time.monotonic() < deadline:
            pass
        got = run.counts(10)
        assert set(got) == {"web2", "web3"}, got

        # Stop: meshd removes its table (and only its own: the lab's stays).
        lab.procs.kill("meshd-fw2", signal.SIGTERM, wait=10)
        assert run.slot_addresses(2) is None
        tables = subprocess.run(nsexec(lab.fw(2), "nft", "list", "tables"), capture_output=True, text=True)
        assert "inet meshd" not in tables.stdout and "inet lab" in tables.stdout
    finally:
        run.close()

