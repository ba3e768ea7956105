"""Track scripts: a check program run every interval; its health feeds demotion.

The counting is a small sans-I/O object (`ScriptTracker`) so rise/fall logic is
tested without processes; `run_track_script` is the trio loop around it.
A script is assumed healthy at start, so a daemon restart does not demote the
node before the script has had a chance to fail `fall` times.

Each run starts as `[node] script_user` of the running configuration (the
`run_as` callable is asked before every run, so a reload that changes it
applies from the next run), with the arguments of meshd/runas.py; at its
timeout it is killed with its process group.

Must not: decide what a flip does (NodeCore.track_script turns it into a
demotion, or a FAULT with weight 0), or run a script twice at once: each run
waits for the previous one and its interval.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import trio

from ..config import TrackScriptConfig
from ..runas import RunAs, deliver_kill_group, spawn_options


class ScriptTracker:
    def __init__(self, config: TrackScriptConfig):
        self.config = config
        self.healthy = True
        self.streak = 0          # consecutive results disagreeing with `healthy`
        self.last_error = ""

    def record(self, ok: bool, error: str = "") -> bool | None:
        """Feed one result; return the new health when it flips, else None."""
        if not ok:
            self.last_error = error
        if ok == self.healthy:
            self.streak = 0
            return None
        self.streak += 1
        needed = self.config.rise if ok else self.config.fall
        if self.streak >= needed:
            self.healthy = ok
            self.streak = 0
            return ok
        return None


async def run_check(config: TrackScriptConfig, run_as: RunAs) -> tuple[bool, str]:
    try:
        with trio.move_on_after(config.timeout_ms / 1000) as scope:
            result = await trio.run_process(list(config.command), capture_stdout=True,
                                            capture_stderr=True, check=False,
                                            stdin=subprocess.DEVNULL,
                                            deliver_cancel=deliver_kill_group,
                                            **spawn_options(run_as))
    except OSError as e:
        return False, f"cannot run {config.command[0]}: {e.strerror or e}"
    if scope.cancelled_caught:
        return False, f"timed out after {config.timeout_ms} ms"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).decode(errors="replace").strip()[-120:]
        return False, f"exit {result.returncode}" + (f": {tail}" if tail else "")
    return True, ""


async def run_track_script(config: TrackScriptConfig, on_change, log,
                           run_as: Callable[[], RunAs]) -> None:
    """Loop forever; `on_change(config, healthy, reason)` is called on each flip."""
    tracker = ScriptTracker(config)
    while True:
        ok, error = await run_check(config, run_as())
        flipped = tracker.record(ok, error)
        if flipped is not None:
            reason = "recovered" if flipped else error
            log("track_script", level="info" if flipped else "warning", name=config.name,
                healthy=flipped, reason=reason)
            on_change(config, flipped, reason)
        await trio.sleep(config.interval_ms / 1000)
