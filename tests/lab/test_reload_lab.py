"""Reload in the netns lab: the cluster key rotated under live TCP flows, then a
takeover; a refused reload that changes nothing and says which key.

Root only (tests/lab/conftest.py skips otherwise).  The rotation follows
docs/operation.md, "Rotating the cluster secret without downtime", on both
nodes, with `meshctl reload` for some steps and SIGHUP for the others, and
checks after each step what an operator would check: no group moved or
was demoted, the state mesh is in sync, nothing was rejected.  Bounds are
generous (a loaded 2-core machine shared with other lab runs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time

import pytest
from meshlab import meshd_node as md
from meshlab import scenarios as sc
from meshlab.flows import summarize
from meshlab.nsutil import in_netns, ns_socket

pytestmark = pytest.mark.lab

FLOWS = 50
GROUPS = ["lan", "srv"]


# --------------------------------------------------------------------------- helpers


def log_events(lab, n: int, event: str) -> list[dict]:
    return md.log_events(lab.procs.get(md.MESHD_LOG.format(n=n)).log, event)


def wait_log(lab, n: int, event: str, count: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        recs = log_events(lab, n, event)
        if len(recs) >= count:
            return recs[count - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"fw{n} logged {len(recs)} {event} event(s), expected {count}\n"
                                 f"{lab.logs(30)}")
        time.sleep(0.1)


def meshctl_reload(lab, n: int) -> dict:
    """`meshctl reload --json` on fw n: its answer."""
    p = md.meshctl(lab.run_dir, n, "reload", "--json", timeout=40)
    assert p.stdout.strip(), f"meshctl reload on fw{n} printed nothing (exit {p.returncode}): {p.stderr}"
    answer = json.loads(p.stdout.strip().splitlines()[-1])
    assert (p.returncode == 0) == answer.get("ok"), (p.returncode, answer, p.stderr)
    return answer


def sighup(lab, n: int) -> None:
    os.kill(lab.procs.get(md.MESHD_LOG.format(n=n)).pid, signal.SIGHUP)


def reject_counters(lab, nodes=(1, 2)) -> dict:
    """{node: (rejected adverts by reason, rejected sync frames by reason)} from status and stats."""
    out = {}
    for n in nodes:
        st, stats = md.status(lab.run_dir, n), md.sync_stats(lab.run_dir, n)
        assert st.get("ok") and stats.get("ok"), (st, stats)
        out[n] = (st.get("rejected") or {}, (stats.get("sync") or {}).get("rejected") or {})
    return out


def election_view(lab, nodes=(1, 2)) -> dict:
    """{node: {group: (state, transitions, demotion)}}."""
    out = {}
    for n, st in lab.statuses(nodes).items():
        assert st.get("ok"), st
        out[n] = {g["name"]: (g["state"], g["transitions"], g["demotion"]) for g in st["groups"]}
    return out


def frames_received(lab, n: int) -> int:
    return sum(((md.sync_stats(lab.run_dir, n).get("sync") or {}).get("frames_received") or {}).values())


def capture_key_ids(lab, n: int, ifname: str, port: int, timeout: float = 5.0) -> set[int]:
    """Key ids of the election adverts (port 7112) or sync frames (7113) that fw n
    sees arriving on `ifname` from the other firewall, for a second or so."""
    from meshd.election.wire import HEADER as ADVERT_HEADER
    s = ns_socket(lab.fw(n), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    ids: set[int] = set()
    try:
        s.bind((ifname, 0x0800))
        s.settimeout(0.2)
        # At least a second (a few packets of each kind), longer while nothing came.
        deadline, enough = time.monotonic() + timeout, time.monotonic() + 1.0
        while time.monotonic() < (enough if ids else deadline):
            try:
                pkt, addr = s.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            ip = pkt[14:] if pkt[12:14] == b"\x08\x00" else pkt
            if len(ip) < 28 or ip[9] != 17:
                continue
            ihl = (ip[0] & 15) * 4
            _sport, dport, length, _ = struct.unpack_from("!HHHH", ip, ihl)
            payload = ip[ihl + 8: ihl + length]
            if dport != port:
                continue
            if port == md.SYNC_PORT and len(payload) >= 20:
                ids.add(payload[2])                     # header: version, type, key id, ...
            elif port != md.SYNC_PORT and len(payload) >= ADVERT_HEADER.size:
                ids.add(ADVERT_HEADER.unpack_from(payload)[6])
    finally:
        s.close()
    return ids


# --------------------------------------------------------------------------- rotation


def test_key_rotation_under_live_flows_then_takeover(meshd_ready, lab):
    groups, names = sc.mesh_groups()
    table = {n: md.sync_section((1, 2)) for n in (1, 2)}
    old_key = md.write_secret(lab.run_dir)
    new_key = md.write_secret(lab.run_dir, "cluster-2.key")
    for n in (1, 2):
        md.start_meshd(lab.procs, lab.topo, n, groups, sync=table[n])
    sc.wait_mesh(lab.procs, (1, 2), names, timeout=30)
    flows = sc.FlowRun(lab.procs, lab.topo, FLOWS)
    w = sc.wait_caught_up(lab.run_dir, 1, (2,), 30.0, want=FLOWS)
    assert w["reached"], w
    time.sleep(1.0)                       # steady state: the flows' ESTABLISHED updates replicated
    view = election_view(lab)
    rejects = reject_counters(lab)
    assert view == {1: {g: ("MASTER", view[1][g][1], 0) for g in names},
                    2: {g: ("BACKUP", view[2][g][1], 0) for g in names}}, view

    # The documented procedure; (keys, send_key, fw1's way, fw2's way, what each applies).
    both = [{"id": 1, "secret_file": old_key}, {"id": 2, "secret_file": new_key}]
    steps = [(both, 1, "meshctl", "sighup", "cluster.keys: key 2 added"),
             (both, 2, "sighup", "meshctl", "cluster.send_key: 1 -> 2"),
             ([{"id": 2, "secret_file": new_key}], 2, "meshctl", "sighup", "cluster.keys: key 1 removed")]
    for i, (keys, send_key, way1, way2, line) in enumerate(steps, start=1):
        for n, way in ((1, way1), (2, way2)):
            md.write_config(lab.run_dir, n, groups, extra_cluster={"send_key": send_key},
                            sync=table[n], keys=keys)
            if way == "meshctl":
                answer = meshctl_reload(lab, n)
                assert answer == {"ok": True, "applied": [line]}, (i, n, answer)
            else:
                sighup(lab, n)
            rec = wait_log(lab, n, "reloaded", i)
            assert rec["changes"] == [line], (i, n, rec)
        time.sleep(1.5)                   # a few heartbeats, adverts and digests under the new keys
        after = election_view(lab)
        assert after == view, f"step {i}: a group moved or was demoted: {view} -> {after}"
        stats = {n: md.sync_stats(lab.run_dir, n) for n in (1, 2)}
        assert all(md.in_sync(s) for s in stats.values()), f"step {i}: not in sync: {stats}"
        assert reject_counters(lab) == rejects, f"step {i}: rejections: {rejects} -> {reject_counters(lab)}"
    assert not any(log_events(lab, n, e) for n in (1, 2)
                   for e in ("reload_refused", "reload_failed", "sync_frame_rejected", "advert_rejected"))

    # Both protocols really use key 2 now, and frames still flow.
    assert capture_key_ids(lab, 2, "sync0", md.SYNC_PORT) == {2}
    assert capture_key_ids(lab, 2, "lan0", 7112) == {2}
    received = frames_received(lab, 2)
    time.sleep(0.5)
    assert frames_received(lab, 2) > received

    # A takeover under the new key: every flow survives, nothing rejected.
    t_kill = lab.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGKILL)
    lab.topo.fw_links(1, up=False)
    lab.wait_states({2: "MASTER"}, names, timeout=15)
    time.sleep(max(0.0, t_kill + 4.0 - time.monotonic()))
    result = summarize(flows.stop(), t_fail=t_kill)
    print(f"after the rotation and a takeover: {result}")
    assert result["survived"] == FLOWS and result["reset"] == 0, result
    assert reject_counters(lab, (2,))[2] == rejects[2], "fw2 rejected adverts or frames after the takeover"


# --------------------------------------------------------------------------- refusal


def test_refused_reload_changes_nothing_and_names_the_key(meshd_ready, lab):
    groups, names = sc.mesh_groups()
    table = md.sync_section((1, 2))
    for n in (1, 2):
        md.start_meshd(lab.procs, lab.topo, n, groups, sync=table)
    sc.wait_mesh(lab.procs, (1, 2), names, timeout=30)
    view = election_view(lab)
    rejects = reject_counters(lab)
    config1 = os.path.join(md.node_dir(lab.run_dir, 1), "meshd.toml")

    # A live change (advskew), a key switch fw2 cannot follow, and sync.port: all refused.
    new_key = md.write_secret(lab.run_dir, "cluster-2.key")
    keys = [{"id": 1, "secret_file": md.write_secret(lab.run_dir)}, {"id": 2, "secret_file": new_key}]
    tuned = [dict(g, advskew={1: 5, 2: 10}) for g in groups]
    md.write_config(lab.run_dir, 1, tuned, extra_cluster={"send_key": 2}, keys=keys,
                    sync=dict(table, port=7200))
    answer = meshctl_reload(lab, 1)
    refusal = (f"{config1}: sync.port: changing it needs a restart (7113 -> 7200; "
               "the state mesh's socket is bound at start)")
    assert answer == {"ok": False, "error": "reload refused: 1 change(s) need a restart",
                      "refused": [refusal]}, answer
    p = md.meshctl(lab.run_dir, 1, "reload")
    assert p.returncode == 1 and f"  refused: {refusal}" in p.stderr, (p.returncode, p.stderr)
    rec = wait_log(lab, 1, "reload_refused", 2)
    assert rec["level"] == "error" and rec["refused"] == [refusal], rec
    time.sleep(1.0)
    # Nothing applied: fw1 still signs with key 1 (fw2 has no key 2 and would reject it),
    # advskew is still 0, nothing moved.
    assert election_view(lab) == view
    assert reject_counters(lab) == rejects
    assert [g["advskew"] for g in md.status(lab.run_dir, 1)["groups"]] == [0, 0]
    assert log_events(lab, 1, "reloaded") == []

    # A file that does not parse: the errors in the answer, nothing applied.
    md.write_config(lab.run_dir, 1, [dict(g, advskew=300) for g in groups], sync=table)
    answer = meshctl_reload(lab, 1)
    assert answer["ok"] is False and "refused" not in answer, answer
    assert answer["error"].startswith("reload failed (2 error(s) in the file") and \
        f"{config1}: group[0].advskew" in answer["error"], answer
    wait_log(lab, 1, "reload_failed", 1)

    # The live change alone applies; the same file again changes nothing.
    md.write_config(lab.run_dir, 1, tuned, sync=table)
    assert meshctl_reload(lab, 1) == {"ok": True, "applied": ["group lan: advskew 0 -> 5",
                                                              "group srv: advskew 0 -> 5"]}
    assert meshctl_reload(lab, 1) == {"ok": True, "applied": []}
    wait_log(lab, 1, "reload_unchanged", 1)
    assert [g["advskew"] for g in md.status(lab.run_dir, 1)["groups"]] == [5, 5]
    assert election_view(lab) == view


# --------------------------------------------------------------------------- [sync] live


def preloaded_in_kernel(lab, n: int) -> int:
    """meshlab.preload's flows (10.1.x.y -> :443, TCP) in fw n's kernel table."""
    from meshd.kernel import ctnetlink as ct
    from meshd.kernel.conntrack import dump_table
    count = 0
    for e in in_netns(lab.fw(n), dump_table):
        orig = ct.parse_entry(e.attrs).get("orig") or {}
        if (orig.get("src") or "").startswith("10.1.") and orig.get("dport") == 443:
            count += 1
    return count


def wait_for(what: str, fn, lab, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{lab.logs(30)}")
        time.sleep(0.2)
    return value


def test_commit_mode_and_filter_change_live(meshd_ready, lab):
    """commit takeover -> continuous puts the replicated flows into the backup's
    kernel; a filter that now ignores TCP empties the internal cache and the
    peer's copy, and lifting it brings them back; nobody is demoted."""
    groups, names = sc.mesh_groups()
    count = 2000
    table = md.sync_section((1, 2), commit="takeover")
    for n in (1, 2):
        md.start_meshd(lab.procs, lab.topo, n, groups, sync=table)
    sc.wait_mesh(lab.procs, (1, 2), names, timeout=30)
    sc.flush_conntrack(lab.topo, 2)
    sc.run_preload(lab.procs, lab.topo, 1, count)
    assert sc.wait_caught_up(lab.run_dir, 1, (2,), 60, want=count)["reached"]
    assert preloaded_in_kernel(lab, 2) == 0           # takeover mode: nothing committed yet
    view = election_view(lab)

    md.write_config(lab.run_dir, 2, groups, sync=dict(table, commit="continuous"))
    assert meshctl_reload(lab, 2) == {"ok": True, "applied": ["sync.commit: takeover -> continuous"]}
    wait_for(f"{count} replicated flows in fw2's kernel", lambda: preloaded_in_kernel(lab, 2) >= count, lab)
    print(f"fw2's kernel holds {preloaded_in_kernel(lab, 2)} of fw1's {count} flows after the switch")

    tcp_off = dict(table, filter={"ignore_protocols": ["tcp"]})
    md.write_config(lab.run_dir, 1, groups, sync=tcp_off)
    sighup(lab, 1)
    rec = wait_log(lab, 1, "reloaded", 1)
    assert rec["changes"] == [("sync.filter.ignore_protocols: [] -> [tcp] "
                               "(the internal cache is rebuilt from the kernel table)")], rec
    wait_for("fw1's copy at fw2 emptied of the TCP flows",
             lambda: md.external_count(md.sync_stats(lab.run_dir, 2), 1) < count // 10, lab)
    assert any(r.get("reason") == "filter changed" for r in log_events(lab, 1, "ct_resync"))
    md.write_config(lab.run_dir, 1, groups, sync=table)
    assert meshctl_reload(lab, 1)["applied"] == [
        "sync.filter.ignore_protocols: [tcp] -> [] (the internal cache is rebuilt from the kernel table)"]
    assert sc.wait_caught_up(lab.run_dir, 1, (2,), 60, want=count)["reached"]
    assert election_view(lab) == view
    assert all(md.in_sync(md.sync_stats(lab.run_dir, n)) for n in (1, 2))
