"""Notify hooks: `PROGRAM GROUP <name> <STATE> <priority>`, as keepalived passes them.

Hooks run in order, one at a time, from their own task, so a slow or hung
script can delay later notifications but never the election.  Each run has a
timeout after which the process is killed with its process group; its exit
status and the tail of its output are logged.  Each runs as the run's
`run_as` (`[node] script_user`, meshd/runas.py), in "/", with no other
descriptor of meshd's open.

Must not: block the election (hooks run in the runner's own task, off the
group executors), run two hooks at once, or wait for room: beyond QUEUE_SIZE
waiting runs, a notification is dropped and logged (event=notify_dropped).
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass

import trio

from .runas import RunAs, deliver_kill_group, spawn_options

QUEUE_SIZE = 256


@dataclass(frozen=True)
class HookRun:
    programs: tuple[str, ...]
    group: str
    state: str
    priority: int
    timeout_s: float
    run_as: RunAs           # the configuration's script_user when the state changed


class HookRunner:
    def __init__(self, log):
        self.log = log
        self.send, self.receive = trio.open_memory_channel(QUEUE_SIZE)
        self.dropped = 0

    def submit(self, run: HookRun) -> None:
        if not run.programs:
            return
        try:
            self.send.send_nowait(run)
        except trio.WouldBlock:
            self.dropped += 1
            self.log("notify_dropped", level="error", group=run.group, state=run.state,
                     reason=f"queue of {QUEUE_SIZE} notifications is full", dropped_total=self.dropped)

    async def run(self) -> None:
        async for item in self.receive:
            for program in item.programs:
                await self._run_one(program, item)

    async def _run_one(self, program: str, item: HookRun) -> None:
        argv = [program, "GROUP", item.group, item.state, str(item.priority)]
        start = trio.current_time()
        try:
            with trio.move_on_after(item.timeout_s) as scope:
                # run_process kills the child's group when the scope is cancelled.
                result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                                check=False, stdin=subprocess.DEVNULL,
                                                deliver_cancel=deliver_kill_group,
                                                **spawn_options(item.run_as))
        except OSError as e:
            self.log("notify", level="error", group=item.group, state=item.state,
                     program=program, error=e.strerror or str(e))
            return
        elapsed_ms = round((trio.current_time() - start) * 1000)
        if scope.cancelled_caught:
            self.log("notify", level="error", group=item.group, state=item.state, program=program,
                     error=f"timed out after {math.ceil(item.timeout_s * 1000)} ms, killed")
            return
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        self.log("notify", level="info" if result.returncode == 0 else "warning",
                 group=item.group, state=item.state, program=program, exit=result.returncode,
                 ms=elapsed_ms, output=output[-200:] or None)
