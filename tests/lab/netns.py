"""Small helpers for lab tests: network namespaces, veth pairs, python in a namespace.

Everything created here is tracked and removed by Netns.close() (and, as a
last resort, at interpreter exit), and only processes started here are killed,
by pid. Deleting a namespace destroys the veth ends inside it.
"""

from __future__ import annotations

import atexit
import itertools
import os
import select
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_counter = itertools.count()
_live: set["Netns"] = set()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Netns:
    """A uniquely named namespace (mshk-<pid>-<n>) with loopback up."""

    def __init__(self, prefix: str = "mshk"):
        self.name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.procs: list[subprocess.Popen] = []
        ip("netns", "add", self.name)
        _live.add(self)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return ip("-n", self.name, *args, check=check)

    def _argv(self, code: str, args) -> list[str]:
        return ["ip", "netns", "exec", self.name, sys.executable, "-c", code, *map(str, args)]

    def run_py(self, code: str, *args, timeout: float = 60) -> str:
        """Run python code in the namespace; return stdout, fail with stderr."""
        p = subprocess.run(self._argv(code, args), capture_output=True, text=True,
                           timeout=timeout, env=_env(), cwd=REPO)
        if p.returncode != 0:
            raise AssertionError(f"python in {self.name} failed ({p.returncode}):\n{p.stderr}")
        return p.stdout

    def start_py(self, code: str, *args) -> subprocess.Popen:
        """Start python code in the background (ip netns exec execs it: same pid)."""
        p = subprocess.Popen(self._argv(code, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env(), cwd=REPO)
        self.procs.append(p)
        return p

    def sysctl(self, key: str, value: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-qw", f"{key}={value}"],
                       check=True, capture_output=True, timeout=30)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        ip("netns", "del", self.name, check=False)
        _live.discard(self)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One stdout line from a started process, or AssertionError after timeout."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from pid {proc.pid} within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"pid {proc.pid} exited: {proc.stderr.read()}")
    return line.strip()


def veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    """veth pair a_name (in a) <-> b_name (in b), both set up."""
    a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    a.ip("link", "set", a_name, "up")
    b.ip("link", "set", b_name, "up")


@atexit.register
def _cleanup_all() -> None:
    for ns in list(_live):
        ns.close()
