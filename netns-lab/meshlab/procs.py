"""Processes started inside lab namespaces, tracked by pid.

Each process runs as `ip netns exec NS argv...` (ip execs the program, so the
pid is the program's own), in a new session (its pid is its process group id,
so anything it forks goes down with it), stdout+stderr to `RUN_DIR/NAME.log`.
Only processes started here are ever signalled, and only by their pid/pgid.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from .topology import nsexec


@dataclass
class Proc:
    name: str
    ns: str
    argv: list[str]
    log: str
    popen: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log: {e.strerror})"
    return "\n".join(data.splitlines()[-lines:])


class Procs:
    """A set of tracked processes writing logs into run_dir."""

    def __init__(self, run_dir: str, env: dict[str, str] | None = None):
        self.run_dir = run_dir
        self.env = env
        self.procs: dict[str, Proc] = {}
        os.makedirs(run_dir, exist_ok=True)
        atexit.register(self.kill_all)

    def start(self, name: str, ns: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: str | None = None, stdout_pipe: bool = False) -> Proc:
        """Start argv in namespace ns.  With stdout_pipe, stdout is a pipe (stderr still logged)."""
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"process {name!r} is already running (pid {self.procs[name].pid})")
        log = os.path.join(self.run_dir, f"{name}.log")
        full_env = dict(os.environ)
        full_env.update(self.env or {})
        full_env.update(env or {})
        with open(log, "ab") as logf:
            logf.write(f"### {time.strftime('%H:%M:%S')} start in {ns}: {' '.join(argv)}\n".encode())
            logf.flush()
            popen = subprocess.Popen(
                nsexec(ns, *argv), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else logf, stderr=logf,
                start_new_session=True, env=full_env, cwd=cwd)
        proc = Proc(name, ns, list(argv), log, popen)
        self.procs[name] = proc
        return proc

    def get(self, name: str) -> Proc:
        return self.procs[name]

    def send_signal(self, which: str | int, sig: int = signal.SIGKILL) -> float:
        """Send sig to a tracked process (by name or pid) and its group; return monotonic send time."""
        proc = self._find(which)
        t = time.monotonic()
        if proc.alive():
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        return t

    def kill(self, which: str | int, sig: int = signal.SIGKILL, wait: float = 5.0) -> int | None:
        """Signal and reap; escalate to SIGKILL after `wait` seconds.  Return the exit code."""
        proc = self._find(which)
        self.send_signal(proc.name, sig)
        try:
            return proc.popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.send_signal(proc.name, signal.SIGKILL)
            return proc.popen.wait(timeout=5)

    def wait(self, which: str | int, timeout: float) -> int | None:
        try:
            return self._find(which).popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_all(self, sig: int = signal.SIGTERM, wait: float = 3.0) -> None:
        """Stop every tracked process: sig first, SIGKILL for any still alive after `wait`."""
        live = [p for p in self.procs.values() if p.alive()]
        for p in live:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for p in live:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.popen.wait(timeout=5)
        for p in self.procs.values():
            if p.popen.stdout:
                p.popen.stdout.close()
            p.popen.poll()

    def logs(self, lines: int = 40) -> str:
        """Log tails of every tracked process, for error messages."""
        parts = []
        for p in self.procs.values():
            state = "running" if p.alive() else f"exited {p.popen.returncode}"
            parts.append(f"----- {p.name} in {p.ns} (pid {p.pid}, {state}) {p.log}\n{p.log_tail(lines)}")
        return "\n".join(parts)

    def _find(self, which: str | int) -> Proc:
        if isinstance(which, int):
            for p in self.procs.values():
                if p.pid == which:
                    return p
            raise KeyError(f"no tracked process with pid {which}")
        return self.procs[which]
