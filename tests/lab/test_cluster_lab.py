"""`meshctl cluster` on two real nodes: each lists the other by name, with its
groups, version and sync state, and names the one setting that differs.

Root only (tests/lab/conftest.py).  The ABOUT frames go over the real sync
link, sealed like every frame (proto/sync.md, 4.7); the split-brain rule is
tested in the simulator (tests/sim/test_cluster_view.py)."""

from __future__ import annotations

import json
import time

import pytest
from meshlab import meshd_node as md

from meshd import __version__

pytestmark = pytest.mark.lab

GROUP_NAMES = [g["name"] for g in md.default_groups()]


def test_meshctl_cluster_lists_the_peer_and_the_setting_that_differs(meshd_ready, lab):
    for n in (1, 2):
        filt = {"only_assured": n == 2}
        md.start_meshd(lab.procs, lab.topo, n, sync=md.sync_section(filter=filt))
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUP_NAMES, timeout=10)
    md.wait_in_sync(lab.run_dir, (1, 2), timeout=15, procs=lab.procs)
    deadline = time.monotonic() + 6                   # an ABOUT every 2 s
    while True:
        p = md.meshctl(lab.run_dir, 1, "cluster", "--json")
        view = json.loads(p.stdout)
        nodes = view.get("nodes") or []
        if nodes and nodes[0].get("settings") and all(g["state"] == "BACKUP" for g in nodes[0]["groups"]):
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    (fw2,) = nodes
    assert fw2["id"] == 2 and fw2["name"] == "fw2" and fw2["version"] == __version__
    assert sorted(g["name"] for g in fw2["groups"]) == sorted(GROUP_NAMES)
    assert fw2["sync"]["absent"] is False and fw2["epoch"]
    assert fw2["settings"]["agree"] is False and fw2["settings"]["complete"] is True
    assert fw2["settings"]["differences"] == ["sync.filter.only_assured: false here, true on fw2"]
    assert view["split_brain"] == {} and sorted(view["masters"]) == sorted(GROUP_NAMES)
    assert all(v == [1] for v in view["masters"].values())
    text = md.meshctl(lab.run_dir, 1, "cluster").stdout
    assert "node fw2 (id 2), meshd " in text and "sync.filter.only_assured: false here, true on fw2" in text


def test_a_key_id_changed_by_accident_is_named_by_meshctl_cluster(meshd_ready, lab):
    """Issue 12's case at run time: fw2's file says key id 2 (same secret).  Each
    node rejects the other's adverts and frames as `unknown key`, both become
    master; `meshctl cluster` on fw1 says which setting explains it."""
    secret = md.write_secret(lab.run_dir)
    for n in (1, 2):
        kid = 1 if n == 1 else 2
        md.start_meshd(lab.procs, lab.topo, n, sync=md.sync_section(),
                       keys=[{"id": kid, "secret_file": secret}], extra_cluster={"send_key": kid})
    lab.wait_states({1: "MASTER", 2: "MASTER"}, GROUP_NAMES, timeout=10)
    deadline = time.monotonic() + 6
    while True:
        view = json.loads(md.meshctl(lab.run_dir, 1, "cluster", "--json").stdout)
        fw2 = (view.get("nodes") or [{}])[0]
        if (fw2.get("settings") or {}).get("differences"):
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    assert fw2["id"] == 2 and fw2["settings"]["agree"] is False
    (hint,) = fw2["settings"]["differences"]
    assert hint.startswith("cluster keys: its frames are sealed under key id 2, the cluster keys here are {1}"), hint
    assert fw2["sync"]["rejected"].get("unknown key", 0) > 0
    text = md.meshctl(lab.run_dir, 1, "cluster").stdout
    assert "frames rejected: unknown key" in text and "cluster keys: its frames are sealed under key id 2" in text
