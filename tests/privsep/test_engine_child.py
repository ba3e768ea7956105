"""The check engine as a real child process (root: it drops to `nobody`).

No namespaces: the checks go to listeners on 127.0.0.1 in this process.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from meshd.health.checkspec import CheckSpec, CheckTarget
from meshd.health.remote import EngineRunner
from meshd.privsep.drop import parse_status

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the check engine drops from root to nobody")

NOBODY = pwd.getpwnam("nobody")
REPO = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self):
        self.results: dict = {}
        self.refused: list = []
        self.engine: list[tuple[bool, str]] = []
        self.logs: list[tuple[str, dict]] = []
        self.up = trio.Event()

    def report(self, check_id, outcome):
        self.results[check_id] = outcome

    def on_engine(self, up, reason):
        self.engine.append((up, reason))
        if up:
            self.up.set()

    def log(self, event, level="info", **fields):
        self.logs.append((event, fields))


def runner(nursery, rec: Recorder) -> EngineRunner:
    return EngineRunner(nursery, rec.report, rec.refused.append, rec.on_engine,
                        uid=NOBODY.pw_uid, gid=NOBODY.pw_gid, log=rec.log)


async def wait_for(predicate, timeout=10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return parse_status(f.read())


def test_checks_run_in_an_unprivileged_child():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def main():
        rec = Recorder()
        async with trio.open_nursery() as nursery:
            r = runner(nursery, rec)
            with trio.fail_after(10):
                await rec.up.wait()
            st = status_of(r.supervisor.pid)
            assert st["PPid"] == str(os.getpid())
            assert st["Uid"].split() == [str(NOBODY.pw_uid)] * 4
            assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
            assert st["NoNewPrivs"] == "1"
            assert r.start(1, CheckTarget("127.0.0.1", port, CheckSpec("tcp")))
            assert r.start(2, CheckTarget("127.0.0.1", 1, CheckSpec("tcp")))
            assert r.start(3, CheckTarget("127.0.0.1", 0, CheckSpec("icmp")))   # the parent's raw socket
            assert not r.start(1, CheckTarget("127.0.0.1", port, CheckSpec("tcp")))  # still running
            await wait_for(lambda: len(rec.results) == 3)
            assert rec.results[1].ok
            assert rec.results[2].error == "connect: connection refused"
            assert rec.results[3].ok, rec.results[3]
            assert r.in_flight == 0
            nursery.cancel_scope.cancel()
        assert rec.engine[0] == (True, "check engine up")

    try:
        trio.run(main)
    finally:
        listener.close()


def test_a_killed_engine_hands_its_checks_back_and_is_restarted():
    # Accepts and never answers: an http check to it stays in flight.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def main():
        rec = Recorder()
        async with trio.open_nursery() as nursery:
            r = runner(nursery, rec)
            with trio.fail_after(10):
                await rec.up.wait()
            first = r.supervisor.pid
            assert r.start(7, CheckTarget("127.0.0.1", port, CheckSpec("http", timeout_s=30)))
            assert r.start(8, CheckTarget("127.0.0.1", port, CheckSpec("http", timeout_s=30)))
            await trio.sleep(0.2)
            assert r.in_flight == 2
            os.kill(first, signal.SIGKILL)
            await wait_for(lambda: len(rec.engine) >= 2)
            up, reason = rec.engine[1]
            assert not up and reason.startswith("check engine down: killed by SIGKILL"), reason
            assert sorted(rec.refused) == [7, 8] and rec.results == {}
            assert not r.start(9, CheckTarget("127.0.0.1", port, CheckSpec("tcp")))  # down: refused
            exited = [f for e, f in rec.logs if e == "child_exited"]
            assert exited and exited[0]["pid"] == first and exited[0]["status"] == "killed by SIGKILL"
            restart = [f for e, f in rec.logs if e == "child_restart"]
            assert restart[0]["delay_s"] == 0.5
            await wait_for(lambda: len(rec.engine) >= 3)
            assert rec.engine[2] == (True, "check engine up")
            assert r.supervisor.pid != first
            assert r.start(9, CheckTarget("127.0.0.1", port, CheckSpec("tcp")))
            await wait_for(lambda: 9 in rec.results)
            assert rec.results[9].ok
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        listener.close()


def _alive(pid: int) -> bool:
    try:
        return status_of(pid)["State"].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


PARENT = textwrap.dedent("""
    import pwd, sys, trio
    from meshd.health.remote import EngineRunner
    nobody = pwd.getpwnam("nobody")
    async def main():
        async with trio.open_nursery() as n:
            def engine(up, reason):
                if up:
                    print(r.supervisor.pid, flush=True)
            r = EngineRunner(n, print, print, engine, uid=nobody.pw_uid, gid=nobody.pw_gid,
                             log=lambda *a, **k: None)
    trio.run(main)
""")


def test_a_dead_parent_takes_the_engine_with_it():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    child = None
    try:
        child = int(parent.stdout.readline())
        assert status_of(child)["PPid"] == str(parent.pid)
        # Stopped, the engine cannot notice the end of its socket and exit by
        # itself: only PR_SET_PDEATHSIG's SIGKILL ends it.
        os.kill(child, signal.SIGSTOP)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "the engine outlived its parent"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and os.path.exists(f"/proc/{child}"):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
