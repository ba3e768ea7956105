"""ChildSupervisor against children that misbehave (no root needed: no drop)."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from meshd.health.engineproto import FROM_ENGINE, TO_ENGINE
from meshd.privsep.backoff import Backoff
from meshd.privsep.supervisor import ChildSupervisor, describe_exit

HERE = str(Path(__file__).resolve().parent)


def run_supervisor(monkeypatch, mode: str, until, hello_timeout: float = 5.0):
    monkeypatch.setenv("PYTHONPATH", HERE)
    logs: list[tuple[str, dict]] = []
    seen: dict[str, list] = {"up": [], "message": [], "down": []}

    async def main():
        sup = ChildSupervisor("fake", "fake_child", [mode], FROM_ENGINE, TO_ENGINE,
                              log=lambda e, level="info", **f: logs.append((e, f)),
                              on_up=lambda ch, m: seen["up"].append(m),
                              on_message=seen["message"].append, on_down=seen["down"].append,
                              backoff=Backoff(first=0.05, limit=0.2), hello_timeout=hello_timeout)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            with trio.fail_after(15):
                while not until(seen, logs):
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        return sup

    sup = trio.run(main)
    return sup, seen, logs


def test_bad_messages_are_logged_and_dropped_and_a_lying_length_ends_the_child(monkeypatch):
    sup, seen, logs = run_supervisor(monkeypatch, "garbage", lambda s, lg: len(s["down"]) >= 2)
    rejected = [f for e, f in logs if e == "imsg_rejected"]
    assert rejected[0]["where"] == "message" and "not msgpack" in rejected[0]["what"]
    assert rejected[1]["where"] == "outcome.id" and "expected int" in rejected[1]["what"]
    assert [m.type for m in seen["message"]][:1] == ["log"]       # the valid one got through
    broken = [f for e, f in logs if e == "imsg_channel_broken"]
    assert broken and "1073741824 bytes" in broken[0]["what"]
    # The child was still alive: killed by the supervisor, logged, restarted.
    assert seen["down"][0].startswith("killed by SIGKILL (framing error")
    exited = [f for e, f in logs if e == "child_exited"]
    assert exited[0]["status"] == "killed by SIGKILL"
    delays = [f["delay_s"] for e, f in logs if e == "child_restart"]
    assert delays[:2] == [0.05, 0.1]                               # the back-off doubles
    assert len(seen["up"]) >= 2 and sup.starts >= 2
    assert not os.path.exists(f"/proc/{exited[0]['pid']}")        # reaped


def test_a_child_that_never_says_hello_is_killed_and_restarted(monkeypatch):
    _sup, seen, _logs = run_supervisor(monkeypatch, "silent", lambda s, lg: len(s["down"]) >= 1,
                                      hello_timeout=0.3)
    assert seen["up"] == []
    assert seen["down"][0] == "killed by SIGKILL (no hello within 0.3 s)"


def test_exit_descriptions():
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(70) == "exit status 70"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(None) == "still running"
