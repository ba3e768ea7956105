"""Reject logs are bounded per reason, whatever the sources; the counts stay exact.

A flood of forged adverts or frames, each from a new source address, must
give a bounded number of log lines (issue 11: 20,000 forged packets gave
20,000 lines), while `meshctl status` / `meshctl stats` still count every
reject.  Checked at three levels: RejectLog itself, the daemon's dispatch of
AdvertRejected, and the sync shell's carrying out of FrameRejected.
"""

from __future__ import annotations

import io
import json
import random

import trio

from meshd.election.actions import AdvertRejected
from meshd.log import EventLog, RejectLog
from meshd.sync.actions import FrameRejected


class Lines:
    """An EventLog stand-in that keeps the calls."""

    def __init__(self):
        self.lines: list[tuple[str, dict]] = []

    def __call__(self, event, level="info", **fields):
        self.lines.append((event, {"level": level, **fields}))


def flood(rlog: RejectLog, n: int, reasons, rng: random.Random, rate: float = 50_000.0) -> dict[str, int]:
    """n rejects at `rate` per second, each from a new source; their count per reason."""
    sent: dict[str, int] = {}
    for i in range(n):
        reason = rng.choice(reasons)
        sent[reason] = sent.get(reason, 0) + 1
        rlog(reason, i / rate, source=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", detail="x")
    return sent


def test_a_flood_from_new_sources_gives_one_line_per_reason_per_period():
    lines = Lines()
    rlog = RejectLog(lines, "advert_rejected", period=10.0)
    reasons = ["bad mac", "truncated", "unknown key", "replayed"]
    sent = flood(rlog, 200_000, reasons, random.Random(1))      # 4 s at 50k/s
    # 4 s < one period: exactly the first line of each reason.
    assert len(lines.lines) == len(reasons)
    assert {f["reason"] for _, f in lines.lines} == set(reasons)
    stats = rlog.stats()
    assert stats["seen"] == sent
    for r in reasons:
        assert stats["logged"][r] + stats["suppressed"][r] == sent[r]
        assert stats["logged"][r] == 1


def test_the_line_let_through_says_how_many_were_suppressed():
    lines = Lines()
    rlog = RejectLog(lines, "sync_frame_rejected", period=10.0)
    for t in range(25):                  # one a second: logged at 0, 10, 20
        rlog("bad tag", float(t), peer=None, detail=str(t))
    assert [f["detail"] for _, f in lines.lines] == ["0", "10", "20"]
    assert [f.get("suppressed") for _, f in lines.lines] == [None, 9, 9]
    assert rlog.stats() == {"seen": {"bad tag": 25}, "logged": {"bad tag": 3},
                            "suppressed": {"bad tag": 22}}
    # Each line: its reason, its level, the fields of the reject let through.
    event, fields = lines.lines[1]
    assert event == "sync_frame_rejected" and fields["level"] == "warning" and fields["reason"] == "bad tag"


def test_reasons_are_limited_independently():
    lines = Lines()
    rlog = RejectLog(lines, "advert_rejected", period=10.0)
    assert rlog("bad mac", 0.0)
    assert not rlog("bad mac", 1.0)
    assert rlog("bad ttl", 1.0)          # another reason: its own first line
    assert not rlog("bad ttl", 5.0)
    assert rlog("bad mac", 10.0)


def test_the_bound_holds_over_a_long_flood_and_the_counts_stay_exact():
    """100 s of 2k/s over 12 reasons: at most one line per reason per 10 s."""
    lines = Lines()
    rlog = RejectLog(lines, "advert_rejected", period=10.0)
    reasons = [f"reason {i}" for i in range(12)]
    sent = flood(rlog, 200_000, reasons, random.Random(2), rate=2_000.0)   # 100 s
    assert len(lines.lines) <= len(reasons) * (100 // 10 + 1)
    stats = rlog.stats()
    assert stats["seen"] == sent
    assert sum(stats["logged"].values()) == len(lines.lines)
    for r in reasons:
        assert stats["logged"][r] + stats["suppressed"][r] == sent[r]
    # What the lines report as suppressed is exactly what was suppressed before
    # each reason's last line.
    reported = {}
    for _, f in lines.lines:
        reported[f["reason"]] = reported.get(f["reason"], 0) + (f.get("suppressed") or 0)
    assert all(0 < stats["suppressed"][r] - reported[r] <= 2_000 * 10 for r in reasons)


def test_a_real_event_log_writes_the_suppressed_count():
    buf = io.StringIO()
    rlog = RejectLog(EventLog(buf, fmt="json"), "advert_rejected", period=10.0)
    for t in (0.0, 1.0, 2.0, 12.0):
        rlog("bad mac", t, source="192.0.2.66", detail="d")
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r.get("suppressed") for r in rows] == [None, 2]
    assert rows[1]["event"] == "advert_rejected" and rows[1]["source"] == "192.0.2.66"


# ------------------------------------------------------------------ the daemon and the sync shell


def test_the_daemon_logs_advert_rejects_per_reason_not_per_source(tmp_path):
    from meshd.daemon import Daemon

    lines = Lines()
    d = Daemon.__new__(Daemon)               # only what dispatch touches
    d.log = lines
    d.reject_log = RejectLog(lines, "advert_rejected")
    d.sync = None

    class Timer:
        def kick(self):
            pass
    d.timer = Timer()

    async def main():
        d.dispatch([AdvertRejected("bad mac", "forged", f"198.51.100.{i % 250}") for i in range(5000)])
        d.dispatch([AdvertRejected("truncated", "short", f"203.0.113.{i % 250}") for i in range(5000)])
    trio.run(main)
    assert [(e, f["reason"]) for e, f in lines.lines] == [("advert_rejected", "bad mac"),
                                                          ("advert_rejected", "truncated")]
    assert d.reject_log.stats()["suppressed"] == {"bad mac": 4999, "truncated": 4999}


def test_the_sync_shell_logs_frame_rejects_per_reason():
    from meshd.sync.shell import SyncShell

    lines = Lines()
    shell = SyncShell.__new__(SyncShell)     # only what carry_out touches
    shell.log = lines
    shell.reject_log = RejectLog(lines, "sync_frame_rejected")

    async def main():
        for i in range(20_000):
            shell.carry_out(FrameRejected(("bad tag", "truncated", "unknown sender")[i % 3], "x", None))
    trio.run(main)
    assert sorted(f["reason"] for _, f in lines.lines) == ["bad tag", "truncated", "unknown sender"]
    stats = shell.reject_log.stats()
    assert sum(stats["seen"].values()) == 20_000
    assert sum(stats["suppressed"].values()) == 20_000 - 3
