"""Discovery (issue 12, proto/sync.md 3.2) on real nodes: zeroconf multicast
DNS-SD on the sync bridge, the state mesh's own proof of the key.

One lab, several checks (it is the slow part of the suite):

* fw1..fw3 run with `[sync] discover = true` and no `peers`: they find each
  other, prove the key, and a conntrack entry made on fw1 is replicated to
  fw2 and fw3;
* fw4, on the same sync bridge, holds another cluster key: it announces
  itself, fw1 lists it with the reason ("other cluster: fingerprint
  differs") and it never becomes a peer of anyone;
* a forged announcement, a zeroconf ServiceInfo the test registers itself
  with the right fingerprint (computed from the cluster secret, as an
  attacker who had seen one announcement could copy it) but without the
  key: a candidate, sent bounded heartbeats, listed as "not proven yet",
  never a peer.

Root only (tests/lab/conftest.py).  Namespaces carry the session's pid-based
prefix; the fourth firewall's namespace is named like the lab's own
(`{prefix}fw4`) so that the lab's teardown removes it whatever happens, and
every process is started through the lab's Procs and ended by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
from meshlab import meshd_node as md
from meshlab import scenarios as sc
from meshlab.topology import SYNC4, run

from meshd.sync.discovery import fingerprint

pytestmark = pytest.mark.lab

FORGED_ID = 9
FORGED_ADDRESS = f"{SYNC4}.9"
FOREIGN = 4

FORGER = r"""
import sys, time
from zeroconf import IPVersion, ServiceInfo, Zeroconf
address, port, fp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
info = ServiceInfo("_meshd-sync._udp.local.", "forged (meshd 9)._meshd-sync._udp.local.",
                   port=port, server="forged-9.local.", parsed_addresses=[address],
                   properties={"txtvers": "1", "id": "9", "name": "forged", "port": str(port),
                               "fp": fp, "v": "0.1.0"})
zc.register_service(info)
print("registered", flush=True)
while True:
    time.sleep(1)
"""


def _discovering() -> dict:
    return {"interface": "sync0", "port": md.SYNC_PORT, "discover": True, "heartbeat_ms": 100}


def _discover(lab, n: int) -> dict:
    p = md.meshctl(lab.run_dir, n, "discover", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _rows(view: dict) -> dict[int, dict]:
    return {r["node"]: r for r in view["heard"]}


def test_discovery_forms_the_mesh_and_refuses_the_foreign_and_the_forged(meshd_ready, lab3):
    t0 = time.monotonic()
    lab = lab3
    topo = lab.topo
    # ---- the fourth namespace, on brsync, built like the lab's own links
    fw4 = f"{topo.prefix}fw{FOREIGN}"
    run(["ip", "netns", "add", fw4])
    topo.ip(topo.sw, "link", "add", "f4-sync", "type", "veth", "peer", "name", "sync0", "netns", fw4)
    topo.ip(topo.sw, "link", "set", "f4-sync", "master", "brsync", "up")
    for args in (("link", "set", "lo", "up"), ("link", "set", "sync0", "up"),
                 ("addr", "add", f"{SYNC4}.{FOREIGN}/24", "dev", "sync0"),
                 ("addr", "add", f"{FORGED_ADDRESS}/24", "dev", "sync0")):
        topo.ip(fw4, *args)

    # ---- fw1..3: discover, no peers; fw4: the same, under another key
    for n in (1, 2, 3):
        md.start_meshd(lab.procs, topo, n, sync=_discovering())
    other_key = md.write_secret(lab.run_dir, "other.key")
    config = md.write_config(lab.run_dir, FOREIGN, groups=[
        {"id": 9, "name": "x", "interface": "sync0", "addresses": [f"{SYNC4}.250/24"], "advbase_ms": 100}],
        keys=[{"id": 1, "secret_file": other_key}], sync=_discovering())
    lab.procs.start(md.MESHD_LOG.format(n=FOREIGN), fw4,
                    [sys.executable, "-m", "meshd", "--config", config, "--log-format", "json"],
                    env=md.child_env(), cwd=md.REPO)
    # ---- the forger: the right fingerprint, no key
    with open(os.path.join(lab.run_dir, "cluster.key"), "rb") as f:
        fp = fingerprint(f.read())
    lab.procs.start("forger", fw4, [sys.executable, "-c", FORGER, FORGED_ADDRESS, str(md.SYNC_PORT), fp],
                    env=md.child_env(), cwd=md.REPO)

    # ---- the mesh forms from announcements and proofs alone
    deadline = time.monotonic() + 20
    while True:
        stats = {n: md.sync_stats(lab.run_dir, n) for n in (1, 2, 3)}
        peers = {n: sorted(int(p) for p in (st.get("sync") or {}).get("peers") or {}) for n, st in stats.items()}
        if all(peers[n] == [m for m in (1, 2, 3) if m != n] for n in peers):
            break
        assert time.monotonic() < deadline, f"mesh not formed: {peers}\n{lab.logs(20)}"
        time.sleep(0.2)
    formed = time.monotonic() - t0
    for n, st in stats.items():
        assert sorted(st["sync"]["discovered"]) == [m for m in (1, 2, 3) if m != n], st["sync"]

    # ---- a conntrack entry made on fw1 reaches fw2 and fw3
    sc.run_preload(lab.procs, topo, 1, 10, net=1)
    for n in (2, 3):
        ok, _, seen = md.wait_external(lab.run_dir, n, {1: 10}, timeout=10)
        assert ok, (n, seen)
    dumped = [e for e in md.control_stream(lab.run_dir, 2, {"cmd": "dump", "cache": "external", "peer": 1})
              if (e["entry"].get("orig") or {}).get("src", "").startswith("10.1.")]
    assert len(dumped) >= 10, dumped[:3]

    # ---- what fw1 heard, and why
    deadline = time.monotonic() + 10
    while True:
        view = _discover(lab, 1)
        rows = _rows(view)
        if FOREIGN in rows and FORGED_ID in rows:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    assert rows[1]["reason"] == "this node" and not rows[1]["peer"]
    for m in (2, 3):
        assert rows[m]["peer"] and rows[m]["reason"].startswith("taken as peer since"), rows[m]
        assert rows[m]["address"] == f"{SYNC4}.{m}"
    assert rows[FOREIGN]["reason"] == "other cluster: fingerprint differs", rows[FOREIGN]
    assert rows[FOREIGN]["peer"] is False and rows[FOREIGN]["address"] == f"{SYNC4}.{FOREIGN}"
    assert rows[FORGED_ID]["fingerprint"] == fp and rows[FORGED_ID]["address"] == FORGED_ADDRESS
    assert rows[FORGED_ID]["reason"] == "not proven yet" and rows[FORGED_ID]["peer"] is False
    assert view["candidates"] == [FORGED_ID]
    assert view["announcer"]["address"] == f"{SYNC4}.1" and view["announcer"]["error"] is None
    text = md.meshctl(lab.run_dir, 1, "discover").stdout
    assert f"node {FOREIGN} (fw{FOREIGN}) at {SYNC4}.{FOREIGN}" in text and "other cluster: fingerprint differs" in text
    assert f"node {FORGED_ID} (forged) at {FORGED_ADDRESS}" in text and "not a peer: not proven yet" in text

    # ---- fw4 lists fw1..3 as another cluster; nobody takes the foreign or the forged node
    view4 = _discover(lab, FOREIGN)
    rows4 = _rows(view4)
    assert all(rows4[m]["reason"] == "other cluster: fingerprint differs" for m in (1, 2, 3)), rows4
    assert FORGED_ID not in view4["candidates"]            # the forgery carries our fingerprint, not fw4's
    time.sleep(1.0)                                         # heartbeats to the forged node go on meanwhile
    for n in (1, 2, 3):
        sync = md.sync_stats(lab.run_dir, n)["sync"]
        assert FOREIGN not in sync["discovered"] and FORGED_ID not in sync["discovered"], sync
        assert str(FOREIGN) not in sync["peers"] and str(FORGED_ID) not in sync["peers"], sync["peers"]
        assert FORGED_ID in sync["candidates"]
        # bounded: one heartbeat per candidate every 0.5 s (plus the first)
        alive_s = time.monotonic() - t0
        assert sync["counters"].get("candidate heartbeats", 0) <= 2 * alive_s + 4, sync["counters"]
    st4 = md.sync_stats(lab.run_dir, FOREIGN)["sync"]
    assert not st4["peers"] and not st4["discovered"], st4

    # ---- a stop says goodbye: fw3 leaves fw1's list (and stops in time)
    t_stop = time.monotonic()
    code = lab.procs.kill(md.MESHD_LOG.format(n=3), signal.SIGTERM, wait=5)
    stopped_s = time.monotonic() - t_stop
    assert code == 0 and stopped_s < 4, (code, stopped_s)
    deadline = time.monotonic() + 5
    while 3 in _rows(_discover(lab, 1)):
        assert time.monotonic() < deadline, "fw3's goodbye not heard"
        time.sleep(0.2)
    print(f"mesh formed {formed:.1f} s after the start; whole test {time.monotonic() - t0:.1f} s")
