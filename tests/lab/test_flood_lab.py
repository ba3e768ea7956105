"""A flood of forged adverts and frames while the master dies; a partition that heals.

Root only (tests/lab/conftest.py).  Two meshd nodes with the state mesh; an
attacker on the LAN (the client namespace) multicasts 50k forged adverts per
second, each from its own source address, and a sync-link attacker (in fw1's
namespace, spoofing fw1's sync address) sends forged frames at fw2's sync
port: random bytes, captured headers with bad MACs or tags, and replays of
datagrams captured off the wire (flood_attacker.py).  During the flood fw1
is SIGKILLed.  Checked: no state change before the kill, fw2 takes over
within TAKEOVER_BOUND_S, the daemons' CPU and RSS stay bounded (read from
/proc), the log grows by a few lines (the reject logs are bounded per
reason, meshd/log.py RejectLog), while the counters count every reject.

The bounds are generous (a loaded 2-core machine): they tell a bounded
daemon from a runaway one, not a benchmark.  The groups advertise every
100 ms (master-down 0.3 s).  Before the flood guard (the kernel keeps only
known senders' adverts, meshd/floodguard.py) and the master's not
reading its queue before an advert (ReadFirst), the flood cost fw2 enough of
fw1's adverts for false takeovers at 100 ms in 6 of 7 runs
(docs/security.md, "Threat model" and "The adversarial suite").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from meshlab import meshd_node as md
from meshlab.topology import LAN4, SYNC4, fw_host

from meshd.sync.core import QUIET_REJECTS

pytestmark = pytest.mark.lab

ATTACKER = str(Path(__file__).with_name("flood_attacker.py"))
GROUP_NAMES = [g["name"] for g in md.default_groups()]
ADVERT_RATE = 50_000
FRAME_RATE = 20_000
FLOOD_S = 6.0
KILL_AFTER_S = 3.5          # into the flood (after the attacker's sniffing second)
TAKEOVER_BOUND_S = 2.0
CPU_BOUND = 1.5             # cores: one trio loop, the lease thread, some kernel time
RSS_GROWTH_BOUND = 64 << 20
LOG_BYTES_BOUND = 64 << 10
ADVBASE_MS = 100


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _log_records(path: str, offset: int) -> tuple[list[dict], int, int]:
    """(JSON records, lines, bytes) written to a log after `offset`."""
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read()
    recs = []
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
    return recs, raw.count(b"\n"), len(raw)


def rejected_seen_by(status: dict) -> int:
    return sum((status.get("rejected") or {}).values())


def _attacker_result(proc) -> dict:
    for line in reversed(Path(proc.log).read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"attacker {proc.name} printed no result:\n{proc.log_tail()}")


def test_flood_of_forged_adverts_and_frames_while_the_master_dies(meshd_ready, lab):
    for n in (1, 2):
        md.start_meshd(lab.procs, lab.topo, n, advbase_ms=ADVBASE_MS, sync=md.sync_section())
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUP_NAMES, timeout=10)
    md.wait_in_sync(lab.run_dir, (1, 2), timeout=15, procs=lab.procs)
    p1, p2 = (lab.procs.get(md.MESHD_LOG.format(n=n)) for n in (1, 2))
    logs = {n: p.log for n, p in ((1, p1), (2, p2))}
    offsets = {n: os.path.getsize(path) for n, path in logs.items()}
    rss0 = {1: _proc_rss(p1.pid), 2: _proc_rss(p2.pid)}

    adverts = lab.procs.start("flood-adverts", lab.client, [
        sys.executable, ATTACKER, "adverts", "eth0", "224.0.0.18", "7112", LAN4, str(ADVERT_RATE), str(FLOOD_S)])
    frames = lab.procs.start("flood-frames", lab.fw(1), [
        sys.executable, ATTACKER, "frames", "sync0", f"{SYNC4}.2", str(md.SYNC_PORT), "=", str(FRAME_RATE),
        str(FLOOD_S), "1"])
    time.sleep(1.0)                                    # the attackers sniff for a second
    cpu0, t0 = {1: _proc_cpu(p1.pid), 2: _proc_cpu(p2.pid)}, time.monotonic()
    time.sleep(KILL_AFTER_S - 1.0)
    cpu1 = {1: _proc_cpu(p1.pid) - cpu0[1], 2: _proc_cpu(p2.pid) - cpu0[2]}
    before_kill = time.monotonic() - t0
    rss_flood = {1: _proc_rss(p1.pid), 2: _proc_rss(p2.pid)}
    states_before = {n: _log_records(logs[n], offsets[n])[0] for n in (1, 2)}

    t_kill_wall = time.time()
    lab.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGKILL)
    md.wait_states(lab.run_dir, {2: "MASTER"}, GROUP_NAMES, timeout=TAKEOVER_BOUND_S + 3, procs=lab.procs, poll=0.05)
    for p in (adverts, frames):
        lab.procs.wait(p.name, timeout=FLOOD_S + 10)
    flood_s = time.monotonic() - t0
    cpu2 = _proc_cpu(p2.pid) - cpu0[2]
    rss_end = _proc_rss(p2.pid)
    a, f = _attacker_result(adverts), _attacker_result(frames)
    recs2, lines2, bytes2 = _log_records(logs[2], offsets[2])
    st2 = lab.status(2)
    stats2 = md.sync_stats(lab.run_dir, 2)

    takeovers = [r for r in recs2 if r.get("event") == "state" and r.get("new") == "MASTER"]
    takeover_ms = [md.record_time_ms(r, 0.0, t_kill_wall) for r in takeovers]
    advert_lines = [r for r in recs2 if r.get("event") == "advert_rejected"]
    frame_lines = [r for r in recs2 if r.get("event") == "sync_frame_rejected"]
    print(f"\nflood: adverts {a}, frames {f}")
    print(f"fw1/fw2 CPU before the kill: {cpu1[1] / before_kill:.2f}/{cpu1[2] / before_kill:.2f} cores; "
          f"fw2 over the flood {cpu2 / flood_s:.2f} cores; RSS fw1 {rss0[1] >> 20}->{rss_flood[1] >> 20} MiB, "
          f"fw2 {rss0[2] >> 20}->{rss_end >> 20} MiB")
    print(f"takeover after the kill: {takeover_ms} ms; fw2 log during the flood: {lines2} lines, "
          f"{bytes2} bytes ({len(advert_lines)} advert_rejected, {len(frame_lines)} sync_frame_rejected)")
    print(f"fw2 rejected adverts: {st2.get('rejected')}; sync rejected: {(stats2.get('sync') or {}).get('rejected')}")

    # The attackers did flood, from captured material.
    assert a["replayable"] > 0 and f["captured"] > 0, (a, f)
    assert a["rate"] >= 0.8 * ADVERT_RATE, f"the advert attacker reached {a['rate']}/s only"
    assert f["rate"] >= 0.8 * FRAME_RATE, f"the frame attacker reached {f['rate']}/s only"
    # No false takeover, no state change at all, before the kill.
    for n in (1, 2):
        changes = [r for r in states_before[n] if r.get("event") in ("state", "demotion")]
        assert not changes, f"fw{n} changed state under the flood before the kill: {changes}"
    # The backup took over once, within its bound.
    assert len(takeovers) == len(GROUP_NAMES), takeovers
    assert all(t is not None and 0 <= t < TAKEOVER_BOUND_S * 1000 for t in takeover_ms), takeover_ms
    # Bounded daemons.
    assert cpu1[1] / before_kill < CPU_BOUND and cpu1[2] / before_kill < CPU_BOUND, cpu1
    assert cpu2 / flood_s < CPU_BOUND, cpu2
    assert rss_flood[1] - rss0[1] < RSS_GROWTH_BOUND and rss_end - rss0[2] < RSS_GROWTH_BOUND
    # The flood guard engaged on fw2 (meshd/floodguard.py) and admitted
    # fw1, whose adverts it had accepted; the kernel dropped most of the rest.
    engaged = [r for r in recs2 if r.get("event") == "flood_guard" and r.get("engaged")]
    assert engaged, "fw2's flood guard never engaged"
    assert f"{LAN4}.{fw_host(1)}" in engaged[0]["admitted"].split(","), engaged[0]
    assert st2["flood_guard"]["engagements"] >= 1
    assert rejected_seen_by(st2) < 0.5 * a["sent"], "the kernel should have dropped most forgeries"
    # The state mesh's guard engaged too and admits the configured peer, fw1's
    # sync address (which this attacker spoofs: it gets in, and is rejected by tag).
    sync_engaged = [r for r in recs2 if r.get("event") == "sync_flood_guard" and r.get("engaged")]
    assert sync_engaged and sync_engaged[0]["admitted"] == f"{SYNC4}.1", sync_engaged
    assert stats2["flood_guard"]["engagements"] >= 1
    # The log is bounded, the counters count every reject.
    assert bytes2 < LOG_BYTES_BOUND and lines2 < 200, (lines2, bytes2)
    assert len(advert_lines) <= 20 and len(frame_lines) <= 20, (len(advert_lines), len(frame_lines))
    rejected_adverts = sum((st2.get("rejected") or {}).values())
    assert rejected_adverts > 10 * lines2, rejected_adverts
    assert sum(st2["reject_log"]["seen"].values()) == rejected_adverts
    assert (sum(st2["reject_log"]["logged"].values()) + sum(st2["reject_log"]["suppressed"].values())
            == rejected_adverts)
    # Counted, never reported (nor logged): looped-back multicast, and the
    # frames of a peer's start before its proof of liveness.
    sync_rejected = {k: v for k, v in stats2["sync"]["rejected"].items() if k not in QUIET_REJECTS}
    assert sum(sync_rejected.values()) > 10 * lines2, sync_rejected
    assert stats2["reject_log"]["seen"] == sync_rejected


# --------------------------------------------------------------------------- partition


PARTITION = """\
table inet mshk_partition {
    chain input { type filter hook input priority -300; policy accept; udp dport 7112 drop; }
}
"""
HEAL_BOUND_S = 1.0      # three advert intervals are 0.3 s at 100 ms; the rest is polling and load


def _masters(run_dir: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {g: [] for g in GROUP_NAMES}
    for n in (1, 2):
        st = md.control(run_dir, n, {"cmd": "status"})
        for g in st.get("groups", []) if st.get("ok") else []:
            if g.get("state") == "MASTER":
                out[g["name"]].append(n)
    return out


def test_a_partition_that_heals_leaves_one_master_per_group(meshd_ready, lab):
    for n in (1, 2):
        lab.start_meshd(n, advbase_ms=ADVBASE_MS)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUP_NAMES, timeout=10)
    for n in (1, 2):
        nft(lab, n, PARTITION)
    md.wait_states(lab.run_dir, {1: "MASTER", 2: "MASTER"}, GROUP_NAMES, timeout=5, procs=lab.procs, poll=0.05)
    t_heal = time.monotonic()
    for n in (1, 2):
        nft(lab, n, "delete table inet mshk_partition\n")
    heal_s = None
    while time.monotonic() - t_heal < 5:
        masters = _masters(lab.run_dir)
        if all(len(m) == 1 for m in masters.values()):
            heal_s = time.monotonic() - t_heal
            break
        time.sleep(0.01)
    print(f"\none master per group {heal_s and round(heal_s * 1000)} ms after the heal: {_masters(lab.run_dir)}")
    assert heal_s is not None, f"still two masters 5 s after the heal: {_masters(lab.run_dir)}"
    assert heal_s < HEAL_BOUND_S
    assert _masters(lab.run_dir) == {g: [1] for g in GROUP_NAMES}      # the better node kept them


def nft(lab, n: int, ruleset: str) -> None:
    subprocess.run(lab.topo.exec_argv(lab.fw(n), "nft", "-f", "-"), input=ruleset, text=True, check=True,
                   capture_output=True, timeout=10)
