"""Check scripts (`script HOST PORT`, exit 0 = up) in a bounded pool, never blocking the trio loop.

relayd runs its check scripts one after another in its parent process, so
one hung script delays every other script check. Here each script is a child
process of its own, at most `max_parallel` at a time; the rest wait for a
free place (that wait does not count against the script's timeout: a host is
not down because the pool is busy). A script that overruns its timeout is
killed with its whole process group, so a shell script's children (sleep,
curl) die with it and cannot hold the pool or the stderr pipe.  Every script
starts as the pool's `run_as` (`[node] script_user`; "nobody" for a pool
built without one), with the arguments of meshd/runas.py.

Must not: judge a script's result (checks.py does, through describe_exit), or
leave a child behind: a script that overruns or is cancelled is killed with
its whole process group.
"""

from __future__ import annotations

import math
import signal
import subprocess
from dataclasses import dataclass

import trio

from ..runas import RunAs, default_run_as, kill_group, spawn_options

STDERR_KEEP = 4096          # bytes of stderr kept for the error message; the rest is read and dropped


@dataclass(frozen=True)
class ScriptResult:
    returncode: int | None      # None when it was killed for overrunning its timeout
    stderr_line: str            # first non-empty line of stderr ("" if none)
    timed_out: bool
    seconds: float              # from start to exit (or to the kill)


class ScriptPool:
    """At most max_parallel scripts at a time.

    run() raises OSError when the script cannot be started (missing, not
    executable); everything else is in the ScriptResult.
    """

    def __init__(self, max_parallel: int = 8, run_as: RunAs | None = None):
        if max_parallel < 1:
            raise ValueError(f"script pool: max_parallel must be at least 1, not {max_parallel}")
        self.max_parallel = max_parallel
        # Replaced on reload (scripts started from then on use the new one).
        self.run_as = run_as if run_as is not None else default_run_as()
        self._limiter: trio.CapacityLimiter | None = None
        self.started = 0
        self.killed = 0

    @property
    def limiter(self) -> trio.CapacityLimiter:
        # Created on first use, inside the trio run that uses it.
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(self.max_parallel)
        return self._limiter

    @property
    def running(self) -> int:
        return self.limiter.borrowed_tokens

    @property
    def waiting(self) -> int:
        return self.limiter.statistics().tasks_waiting

    async def run(self, argv: list[str], timeout_s: float) -> ScriptResult:
        async with self.limiter:
            return await run_script(argv, timeout_s, self, run_as=self.run_as)


async def run_script(argv: list[str], timeout_s: float, pool: ScriptPool | None = None, *,
                     run_as: RunAs | None = None) -> ScriptResult:
    """Run argv with stdin and stdout closed, keep the start of stderr, kill at timeout_s.

    It runs as `run_as`, by default "nobody" (meshd/runas.py)."""
    start = trio.current_time()
    options = spawn_options(run_as if run_as is not None else default_run_as())
    # Its own session, and so its own process group: killed as a whole.
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options)
    if pool is not None:
        pool.started += 1
    kept = bytearray()
    timed_out = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_stderr, proc.stderr, kept)
            with trio.move_on_after(timeout_s) as scope:
                await proc.wait()
            if scope.cancelled_caught:
                timed_out = True
                kill_group(proc)
                if pool is not None:
                    pool.killed += 1
                await proc.wait()
            # A grandchild that left the process group may still hold stderr
            # open; what it writes later is not worth waiting for.
            nursery.cancel_scope.deadline = trio.current_time() + 0.2
    finally:
        if proc.returncode is None:     # cancelled from outside: never leave a child behind
            kill_group(proc)
            with trio.CancelScope(shield=True):
                await proc.wait()
        await trio.aclose_forcefully(proc.stderr)
    return ScriptResult(None if timed_out else proc.returncode, _first_line(bytes(kept)), timed_out,
                        trio.current_time() - start)


async def _read_stderr(stream, kept: bytearray) -> None:
    """Read stderr to EOF (so the script never blocks on a full pipe), keeping the first bytes."""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        if not chunk:
            return
        if len(kept) < STDERR_KEEP:
            kept += chunk[:STDERR_KEEP - len(kept)]


def _first_line(data: bytes) -> str:
    for line in data.decode(errors="replace").splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def milliseconds(seconds: float) -> int:
    """Whole milliseconds for messages: 0.2 s -> 200, never 201 from float noise."""
    return math.ceil(seconds * 1000 - 1e-9)


def describe_exit(result: ScriptResult, timeout_s: float) -> str | None:
    """The log phrase for a failed script, None when it succeeded."""
    if result.timed_out:
        return f"timeout after {milliseconds(timeout_s)} ms (script killed)"
    rc = result.returncode
    if rc == 0:
        return None
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        text = f"script killed by {name}"
    else:
        text = f"script exit {rc}"
    return f"{text}: {result.stderr_line}" if result.stderr_line else text
