"""The benchmark's reference pair (keepalived + conntrackd, meshlab.reference) in the netns lab.

Root only (tests/lab/conftest.py), and skipped when keepalived/conntrackd are
missing and cannot be installed.  The main test is the documented
primary-backup story end to end: entries replicated by conntrackd FTFW, the
master SIGKILLed, keepalived moving the addresses and its notify script
committing the replicated entries into the new master's kernel table.
"""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from meshlab import reference as ref_mod
from meshlab import scenarios as sc
from meshlab.nsutil import in_netns
from meshlab.procs import Procs
from meshlab.reference import ProcessRef, ReferenceSystem, parse_stats
from meshlab.topology import VIRTUAL_ADDRESSES, Lab, LabError
from meshlab.watch import start_watch

pytestmark = pytest.mark.lab

ENTRIES = 2000
VIRTUAL_IPS = {a.split("/")[0] for a in VIRTUAL_ADDRESSES}
PRELOAD_NET = ipaddress.ip_network("10.1.0.0/16")        # meshlab.preload's clients, --net 1


@pytest.fixture
def reference_installed():
    try:
        ref_mod.ensure_installed()
    except LabError as e:
        pytest.skip(f"keepalived/conntrackd are missing and cannot be installed: {e}")


def _preloaded_in_kernel(ns: str) -> int:
    """Entries of meshlab.preload's flows (10.1.0.0/16 -> :443) in ns's kernel table."""
    from meshd.kernel import ctnetlink as ct
    from meshd.kernel.conntrack import dump_table
    count = 0
    for e in in_netns(ns, dump_table):
        orig = ct.parse_entry(e.attrs).get("orig") or {}
        src = orig.get("src")
        if src and ":" not in src and ipaddress.ip_address(src) in PRELOAD_NET and orig.get("dport") == 443:
            count += 1
    return count


def _held(lab, n: int) -> set[str]:
    return VIRTUAL_IPS & {a.split("/")[0] for addrs in lab.topo.addresses(lab.fw(n)).values() for a in addrs}


def _wait(predicate, timeout: float, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(poll)


def test_takeover_commits_replicated_entries(reference_installed, lab):
    ref = ReferenceSystem(lab.procs, lab.topo, advbase_ms=100)
    try:
        ref.start()
        assert _held(lab, 1) == VIRTUAL_IPS and not _held(lab, 2)
        assert len(ref.daemon_pids(1)) >= 3, ref.daemon_pids(1)     # keepalived, its VRRP child, conntrackd

        r = sc.run_preload(lab.procs, lab.topo, 1, ENTRIES)
        assert _wait(lambda: ref.external_count(2) >= ENTRIES, 20), \
            f"fw2's external cache holds {ref.external_count(2)} of {ENTRIES}"
        replicated_s = time.monotonic() - r["t_end"]
        assert ref.internal_count(1) >= ENTRIES
        # A backup keeps them in its external cache only: none is in fw2's kernel yet.
        assert _preloaded_in_kernel(lab.fw(2)) == 0

        watch = start_watch(lab.procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=15)
        t_kill = ref.kill(1)
        lab.topo.fw_links(1, up=False)
        ev = watch.wait_result(timeout=15)
        assert ev.get("event") == "present", f"fw2 did not take the virtual addresses: {ev}"
        assert ref.daemon_pids(1) == []

        # keepalived's notify_master ran the documented steps, commit first.
        assert _wait(lambda: any(s["state"] == "master" and s["step"] == "end" and s["start"] >= t_kill
                                 for s in ref.notify_steps(2)), 20), ref.notify_steps(2)
        steps = [s for s in ref.notify_steps(2) if s["state"] == "master" and s["start"] >= t_kill]
        assert [s["step"] for s in steps] == ["begin", "commit", "flush", "resync", "bulk", "end"], steps
        assert all(s["rc"] == 0 for s in steps), steps
        commit = ref.takeover_commit(2, t_kill)
        assert _preloaded_in_kernel(lab.fw(2)) == ENTRIES
        print(json.dumps({"replicated_s": round(replicated_s, 3),
                          "takeover_ms": round((ev["time"] - t_kill) * 1000, 1),
                          "commit_end_ms": round((commit["end"] - t_kill) * 1000, 1)}))

        # stop(): every daemon of fw2 gone, and keepalived let go of the addresses.
        fw2 = [p for p in map(ProcessRef.of, ref.daemon_pids(2)) if p]
        ref.stop()
        assert fw2 and not any(p.still_same() for p in fw2)
        assert not _held(lab, 2)
    finally:
        ref.stop()
        for n in (1, 2):
            lab.topo.reset_fw(n)
            sc.flush_conntrack(lab.topo, n)


def test_three_nodes_refused_before_anything_starts(tmp_path):
    procs = Procs(str(tmp_path))
    ref = ReferenceSystem(procs, Lab("rfnone-", nodes=3))
    with pytest.raises(LabError, match="sequence stream"):
        ref.start((1, 2, 3))
    assert procs.procs == {}


def test_advert_interval_must_be_centiseconds(tmp_path):
    with pytest.raises(LabError, match="multiple of 10"):
        ReferenceSystem(Procs(str(tmp_path)), Lab("rfnone-"), advbase_ms=105)


# `conntrackd -s` of 1.4.7, as printed by a live daemon (the counts changed).
STATS_1_4_7 = """\
cache internal:
current active connections:\t      100000
connections created:\t\t      100000\tfailed:\t           0
connections updated:\t\t           0\tfailed:\t           0
connections destroyed:\t\t           0\tfailed:\t           0

cache external:
current active connections:\t          12
connections created:\t\t          12\tfailed:\t           0
connections updated:\t\t           0\tfailed:\t           0
connections destroyed:\t\t           0\tfailed:\t           0

traffic processed:
                   0 Bytes                         0 Pckts

UDP traffic (active device=sync0):
             8400168 Bytes sent                 5488 Bytes recv
                6089 Pckts sent                  173 Pckts recv
                   0 Error send                    0 Error recv

message tracking:
                   0 Malformed msgs                    0 Lost msgs
"""


def test_parse_stats_of_conntrackd_1_4_7():
    assert parse_stats(STATS_1_4_7) == {"internal": 100000, "external": 12, "pkts_sent": 6089, "pkts_recv": 173}
    assert parse_stats("") == {}
