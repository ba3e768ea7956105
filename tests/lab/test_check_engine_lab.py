"""The check engine as its own unprivileged process, on a real node (issue 11).

Two firewalls with health checks; in the server namespace a normal HTTP
backend and two hostile ones: one whose response header is 100 MB long, one
that answers a TLS ClientHello with a malformed record.  What is checked:

* every meshd process's /proc/PID/status: the daemon is root, the check
  engine (its child) is `nobody`, with CapEff 0 and NoNewPrivs 1;
* the hostile backends are found down with their reason, the daemon's RSS
  does not move by anything like 100 MB, and the election goes on;
* a check engine killed: a log line, fw1 demoted (fw2 takes over), the engine
  restarted, the demotion gone and the checks running again.
"""

from __future__ import annotations

import os
import pwd
import signal
import sys
import textwrap
import time

import pytest
from meshlab import meshd_node as md
from meshlab.backends import http_get  # noqa: F401  (the lab's own backend module must import)
from procinfo import child_pid, children, cmdline, proc_status, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("meshd_ready")]

NOBODY = pwd.getpwnam("nobody").pw_uid
WEB1, BIG, BADTLS = "198.51.100.11", "198.51.100.31", "198.51.100.32"

HEALTH = f"""
[health]
rst_burst = 0

[[health.host]]
name = "web1"
address = "{WEB1}"

[[health.host]]
name = "big"
address = "{BIG}"

[[health.host]]
name = "badtls"
address = "{BADTLS}"

[[health.table]]
name = "web"
hosts = ["web1"]
port = 80
interval_ms = 300
check = {{ method = "http", path = "/health", code = 200, timeout_ms = 1000 }}

[[health.table]]
name = "hostile-http"
hosts = ["big"]
port = 80
interval_ms = 300
# A digest check reads the headers (a code check stops at the status line).
check = {{ method = "http", path = "/", digest = "sha256:{"0" * 64}", timeout_ms = 2000 }}

[[health.table]]
name = "hostile-tls"
hosts = ["badtls"]
port = 443
interval_ms = 300
check = {{ method = "tls", timeout_ms = 1000 }}

[[health.redirect]]
name = "www"
address = "192.0.2.1"
port = 80
table = "web"
"""

# The hostile backends: `big` sends a 100 MB header line to every connection,
# `badtls` answers anything with a TLS record of an unknown content type and
# a length beyond the maximum.
HOSTILE = textwrap.dedent("""
    import socket, sys, threading
    mode, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    CHUNK = b"a" * 65536
    def answer(conn):
        try:
            if mode == "big":
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nX-Big: ")
                for _ in range(100 * 16):           # 100 MB, no end of line
                    conn.sendall(CHUNK)
            else:
                conn.recv(4096)
                conn.sendall(b"\\x99\\x03\\x03\\xff\\xff" + b"\\xee" * 300)
        except OSError:
            pass
        finally:
            conn.close()
    s = socket.create_server((address, port))
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=answer, args=(c,), daemon=True).start()
""")


def engine_pid(meshd_pid: int, timeout: float = 10.0, not_this: int | None = None) -> int:
    return child_pid(meshd_pid, b"meshd.health.engine", NOBODY, timeout, not_this)


def hosts(lab, n: int) -> dict[str, dict]:
    answer = md.control(lab.run_dir, n, {"cmd": "show", "what": "hosts"})
    assert answer.get("ok"), answer
    return {r["host"]: r for r in answer["rows"]}


def rss_kib(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def start(lab):
    topo = lab.topo
    for a in (WEB1, BIG, BADTLS):
        topo.ip(topo.server, "addr", "add", f"{a}/24", "dev", "eth0")
    web = lab.procs.start("backend-web1", topo.server,
                          [sys.executable, "-m", "meshlab.backends", "web1", WEB1, "--port", "80"],
                          env=md.child_env(), cwd=md.REPO, stdout_pipe=True)
    assert b"ready" in web.popen.stdout.readline()
    for mode, address, port in (("big", BIG, 80), ("badtls", BADTLS, 443)):
        p = lab.procs.start(f"hostile-{mode}", topo.server,
                            [sys.executable, "-c", HOSTILE, mode, address, str(port)], stdout_pipe=True)
        assert p.popen.stdout.readline().strip() == b"ready", p.log_tail()
    groups = md.default_groups(100)
    for n in (1, 2):
        md.start_meshd(lab.procs, topo, n, groups, 100, extra_toml=HEALTH)
    names = [g["name"] for g in groups]
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=20)
    return names


def test_the_check_engine_is_unprivileged_and_hostile_backends_reach_only_it(lab):
    names = start(lab)
    meshd_pid = lab.procs.get("meshd-fw1").pid
    engine = engine_pid(meshd_pid)
    found = time.monotonic()

    # Every meshd process of fw1: the daemon and its one child.
    main, child = proc_status(meshd_pid), proc_status(engine)
    assert main["Uid"].split()[0] == "0"
    assert [p for p in children(meshd_pid) if b"meshd.health.engine" in cmdline(p)] == [engine]
    assert child["Uid"].split() == [str(NOBODY)] * 4
    assert child["Gid"].split()[0] != "0" and child["Groups"] == ""
    assert int(child["CapEff"], 16) == 0 and int(child["CapPrm"], 16) == 0
    assert int(child["CapAmb"], 16) == 0
    assert child["NoNewPrivs"] == "1"

    # The hostile backends are checked over and over, and found down.
    rss_before = rss_kib(meshd_pid)
    rows = wait_for(lambda: (h := hosts(lab, 1)) and h["big"]["status"] == "down"
                    and h["badtls"]["status"] == "down" and h["web1"]["status"] == "up" and h,
                    20, "the hostile backends down, web1 up")
    assert "more than 65536 bytes" in rows["big"]["last_error"], rows["big"]   # read 64 KiB, no more
    assert "tls" in (rows["badtls"].get("last_error") or ""), rows["badtls"]
    time.sleep(3)                                # ten more rounds of both
    # ... and past trio's 10 s idle-thread timeout: the parent-death signal
    # follows the thread that forked the engine, which must be the loop's.
    time.sleep(max(0.0, found + 12 - time.monotonic()))
    growth_mib = (rss_kib(meshd_pid) - rss_before) / 1024
    assert growth_mib < 20, f"the daemon grew by {growth_mib:.1f} MiB"
    # The engine kept running (or, had it died, was back), the election went on.
    assert engine_pid(meshd_pid) == engine
    st = md.status(lab.run_dir, 1)
    assert st["demotions"].get("all", 0) == 0
    assert st["check_engine"]["up"] and st["check_engine"]["pid"] == engine, st["check_engine"]
    assert st["check_engine"]["uid"] == NOBODY and st["check_engine"]["starts"] == 1
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=5)


def test_a_killed_check_engine_demotes_the_node_until_it_is_back(lab):
    names = start(lab)
    meshd_pid = lab.procs.get("meshd-fw1").pid
    engine = engine_pid(meshd_pid)
    wait_for(lambda: hosts(lab, 1)["web1"]["status"] == "up", 10, "web1 up")

    os.kill(engine, signal.SIGKILL)
    # Demoted at once: fw2 takes the groups over.
    lab.wait_states({1: "BACKUP", 2: "MASTER"}, names, timeout=5)
    exited = md.log_events(lab.procs.get("meshd-fw1").log, "child_exited")
    assert exited and exited[-1]["pid"] == engine and exited[-1]["status"] == "killed by SIGKILL", exited
    restart = md.log_events(lab.procs.get("meshd-fw1").log, "child_restart")
    assert restart and restart[-1]["delay_s"] == 0.5, restart

    # Restarted after the back-off; the demotion goes, fw1 (preferred) is master again.
    new = engine_pid(meshd_pid, not_this=engine)
    assert new != engine
    assert proc_status(new)["NoNewPrivs"] == "1"
    wait_for(lambda: md.status(lab.run_dir, 1)["demotions"].get("all", 0) == 0, 10, "demotion released")
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=10)
    up = md.log_events(lab.procs.get("meshd-fw1").log, "check_engine_up")
    assert len(up) >= 2 and up[-1]["pid"] == new
    engine_status = md.status(lab.run_dir, 1)["check_engine"]
    assert engine_status["up"] and engine_status["pid"] == new and engine_status["starts"] == 2, engine_status
    # The checks resumed: web1 is checked again, and still up.
    wait_for(lambda: (r := hosts(lab, 1)["web1"])["status"] == "up" and r["last_check_ago_s"] < 1.0,
             5, "web1 checked again")
