"""/proc of the lab's meshd processes: status fields, children, the engines."""

from __future__ import annotations

import os
import time


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if proc_status(int(entry)).get("PPid") == str(pid):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def child_pid(meshd_pid: int, module: bytes, uid: int, timeout: float = 10.0,
              not_this: int | None = None) -> int:
    """The pid of meshd's child `python -m module` running as `uid`."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in children(meshd_pid):
            try:
                cmd = cmdline(pid).split(b"\0")
                if module in cmd and pid != not_this and \
                        proc_status(pid).get("Uid", "").split()[:1] == [str(uid)]:
                    return pid
            except OSError:
                continue
        assert time.monotonic() < deadline, f"no {module.decode()} under meshd {meshd_pid}"
        time.sleep(0.05)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_unprivileged(pid: int, uid: int) -> None:
    """Not root in any id, no capability in any set, no new privileges."""
    st = proc_status(pid)
    assert st["Uid"].split() == [str(uid)] * 4, st["Uid"]
    assert st["Gid"].split()[0] != "0" and st["Groups"] == ""
    for cap in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
