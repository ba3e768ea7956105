"""Notify hooks and track scripts run real processes (no root needed).

They run as `script_user` (tests/conftest.py): "nobody" when the tests run as
root, in `script_dir`, which that user can reach.
"""


import trio

from meshd.config import TrackScriptConfig
from meshd.hooks import HookRun, HookRunner
from meshd.track.scripts import ScriptTracker, run_check


def script(script_dir, name, body):
    path = script_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)         # script_user must read and run it
    return str(path)


def run_hooks(runs):
    lines = []

    def log(event, **fields):
        lines.append((event, fields))

    async def main():
        runner = HookRunner(log)
        async with trio.open_nursery() as n:
            n.start_soon(runner.run)
            for r in runs:
                runner.submit(r)
            with trio.move_on_after(5):
                while len(lines) < sum(len(r.programs) for r in runs):
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
    trio.run(main)
    return lines


def test_hooks_get_keepalived_arguments_and_run_in_order(script_dir, script_user):
    out = script_dir / "out"
    first = script(script_dir, "a", f'echo "a $*" >> {out}\n')
    second = script(script_dir, "b", f'echo "b $*" >> {out}\nexit 3\n')
    lines = run_hooks([HookRun((first, second), "lan", "MASTER", 245, 5.0, script_user)])
    assert out.read_text().splitlines() == ["a GROUP lan MASTER 245", "b GROUP lan MASTER 245"]
    assert [f["exit"] for _, f in lines] == [0, 3]
    assert lines[1][1]["level"] == "warning"


def test_hung_hook_is_killed_after_its_timeout(script_dir, script_user):
    slow = script(script_dir, "slow", "sleep 30\n")
    lines = run_hooks([HookRun((slow,), "lan", "BACKUP", 255, 0.2, script_user)])
    assert "timed out after 200 ms" in lines[0][1]["error"]


def test_missing_hook_program_is_logged_not_raised(script_dir, script_user):
    lines = run_hooks([HookRun((str(script_dir / "nope"),), "lan", "FAULT", 255, 1.0, script_user)])
    assert lines[0][1]["level"] == "error"


def test_tracker_needs_fall_failures_then_rise_successes():
    t = ScriptTracker(TrackScriptConfig("bgp", ("x",), rise=2, fall=3))
    assert t.healthy
    assert [t.record(False, "e") for _ in range(3)] == [None, None, False]
    assert not t.healthy and t.last_error == "e"
    assert t.record(True) is None
    assert t.record(False) is None      # a failure resets the rise streak
    assert [t.record(True) for _ in range(2)] == [None, True]


def test_run_check_reports_exit_status_and_timeout(script_dir, script_user):
    ok = TrackScriptConfig("ok", ("/bin/true",))
    bad = TrackScriptConfig("bad", (script(script_dir, "bad", "echo broken >&2; exit 4\n"),))
    slow = TrackScriptConfig("slow", (script(script_dir, "slow", "sleep 30\n"),), timeout_ms=100)
    missing = TrackScriptConfig("missing", (str(script_dir / "nope"),))
    assert trio.run(run_check, ok, script_user) == (True, "")
    assert trio.run(run_check, bad, script_user) == (False, "exit 4: broken")
    assert trio.run(run_check, slow, script_user) == (False, "timed out after 100 ms")
    ok_, why = trio.run(run_check, missing, script_user)
    assert not ok_ and "cannot run" in why
