"""Redundant sync paths in the netns lab: the dedicated link (sync0) cut half-way
through replicating 100k conntrack entries; the LAN (lan0) carries the rest.

Root only (tests/lab/conftest.py skips otherwise).  On failure the daemons'
logs are in the report section "lab daemon logs".
"""

from __future__ import annotations

import json
import time

import pytest

from meshlab import meshd_node as md
from meshlab import scenarios as sc
from meshlab.nsutil import in_netns
from meshlab.topology import LAN4, SYNC4, fw_host

pytestmark = pytest.mark.lab

ENTRIES = 100_000


def _paths(n: int, m: int) -> list[dict]:
    """fw n's peer m, by the sync link first and the LAN as the backup."""
    return [{"id": m, "addresses": [f"{SYNC4}.{m}", f"{LAN4}.{fw_host(m)}"]}]


def _path_status(run_dir: str, n: int, peer: int) -> dict:
    paths = md.sync_stats(run_dir, n).get("paths") or {}
    return paths.get(str(peer)) or paths.get(peer) or {}


def _wait_active(run_dir: str, want: dict[int, int], timeout: float) -> dict[int, dict]:
    """Until fw n sends to its peer over path want[n] (0: sync0, 1: lan0); the last statuses."""
    deadline = time.monotonic() + timeout
    while True:
        last = {n: _path_status(run_dir, n, 3 - n) for n in want}
        if all(last[n].get("active") == i for n, i in want.items()) or time.monotonic() > deadline:
            return last
        time.sleep(0.1)


def _events(lab, n: int, event: str) -> list[dict]:
    return md.log_events(lab.procs.get(md.MESHD_LOG.format(n=n)).log, event)


WATCHED = ("demotion", "sync_state", "sync_peer", "sync_path")


def _log_marks(lab) -> dict[tuple[int, str], int]:
    """How many records of each watched event each daemon has logged so far."""
    return {(n, e): len(_events(lab, n, e)) for n in (1, 2) for e in WATCHED}


def _start(lab, **options) -> list[str]:
    """Both nodes with two paths to each other, on the sync link."""
    names = sc.start_mesh(lab.procs, lab.topo, (1, 2), sync_options={
        "peers": {1: _paths(1, 2), 2: _paths(2, 1)}, "path_return_ms": 2000, **options})
    sc.wait_mesh(lab.procs, (1, 2), names)
    before = _wait_active(lab.run_dir, {1: 0, 2: 0}, 5)
    assert all(s.get("active") == 0 and s["paths"][1]["up"] for s in before.values()), before
    return names


@pytest.mark.parametrize("transport,entries", [("unicast", ENTRIES), ("multicast", 20_000)])
def test_a_cut_sync_link_loses_nothing_and_the_mesh_comes_back_to_it(meshd_ready, lab, transport, entries):
    """With multicast on sync0, what is meant for every peer goes to the group
    and, to a peer on the LAN, by unicast over it."""
    names = _start(lab, **({"multicast_group": "239.255.71.13"} if transport == "multicast" else {}))

    marks = _log_marks(lab)

    # Half of the entries over sync0, then sync0 cut (fw2's end loses its carrier)
    # while the other half is injected.
    t0 = time.monotonic()
    sc.run_preload(lab.procs, lab.topo, 1, entries // 2, name="preload-first-half")
    # So far over sync0 (to the group, with multicast): nothing failed to go out,
    # and the LAN carried heartbeats only.
    assert md.sync_stats(lab.run_dir, 1)["send_errors"] == 0
    assert _path_status(lab.run_dir, 2, 1)["paths"][1]["frames"] < 100
    lab.topo.ip(lab.fw(1), "link", "set", "sync0", "down")
    t_cut = time.monotonic()
    sc.run_preload(lab.procs, lab.topo, 1, entries // 2, first=entries // 2, name="preload-second-half")
    w = sc.wait_caught_up(lab.run_dir, 1, (2,), 30, want=entries)
    on_lan = _wait_active(lab.run_dir, {1: 1, 2: 1}, 5)
    print(json.dumps({"cut_after_s": round(t_cut - t0, 2), "caught_up_after_cut_s": round(w["at"] - t_cut, 2),
                      "seen": w["seen"], "paths": on_lan}))
    assert w["reached"], f"fw2 holds {w['seen']} of fw1's {entries} entries: {on_lan}"
    assert all(s.get("active") == 1 and s["switches"] >= 1 for s in on_lan.values()), on_lan
    assert all(not s["paths"][0]["up"] for s in on_lan.values()), on_lan
    # What fw2 heard from fw1 over the LAN: far more than heartbeats (half of the
    # entries, some 10 a frame).
    assert on_lan[2]["paths"][1]["frames"] > entries // 50, on_lan
    # In fw2's kernel too (commit = "continuous"): every injected flow, from a dump.
    from meshd.kernel.conntrack import dump_table
    deadline = time.monotonic() + 10
    while True:
        in_kernel = len(in_netns(lab.fw(2), dump_table))
        if in_kernel >= entries or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert in_kernel >= entries, f"fw2's kernel holds {in_kernel} entries"

    # sync0 back: both return to it once it has held for path_return_ms.
    lab.topo.ip(lab.fw(1), "link", "set", "sync0", "up")
    t_up = time.monotonic()
    back = _wait_active(lab.run_dir, {1: 0, 2: 0}, 15)
    print(json.dumps({"back_after_s": round(time.monotonic() - t_up, 2), "paths": back}))
    assert all(s.get("active") == 0 and s["switches"] >= 2 for s in back.values()), back

    # Nobody demoted, no peer absent, nothing refused as a replay; the switches logged.
    for n in (1, 2):
        st = md.status(lab.run_dir, n)
        assert all(g["demotion"] == 0 for g in st["groups"]), st["groups"]
        since = {e: _events(lab, n, e)[marks[(n, e)]:] for e in WATCHED}
        assert not since["demotion"], f"fw{n}: {since['demotion']}"
        assert not since["sync_state"], f"fw{n}: {since['sync_state']}"
        assert not [r for r in since["sync_peer"] if r.get("state") in ("absent", "restarted")], \
            f"fw{n}: {since['sync_peer']}"
        stats = md.sync_stats(lab.run_dir, n)
        assert "replayed" not in stats["sync"]["rejected"], stats["sync"]["rejected"]
        assert stats["sync"]["counters"].get("copies over another path", 0) > 0
        switches = [(r["old"], r["new"]) for r in since["sync_path"]]
        peer = 3 - n
        assert switches == [(f"{SYNC4}.{peer}", f"{LAN4}.{fw_host(peer)}"),
                            (f"{LAN4}.{fw_host(peer)}", f"{SYNC4}.{peer}")], switches
    assert md.group_states(md.status(lab.run_dir, 1)) == {g: "MASTER" for g in names}


def test_a_loss_in_one_direction_moves_both_ends(meshd_ready, lab):
    """fw2 drops every sync datagram arriving on sync0: fw1 still hears fw2 over
    it, so only fw2's choice of the LAN (its frames come that way) tells fw1
    that its own frames are lost; both move, nothing is lost, both come back."""
    _start(lab)
    sc.run_preload(lab.procs, lab.topo, 1, 5000, name="preload-before")
    sc.add_loss(lab.topo, 2, 100)
    sc.run_preload(lab.procs, lab.topo, 1, 5000, first=5000, name="preload-after")
    w = sc.wait_caught_up(lab.run_dir, 1, (2,), 20, want=10_000)
    moved = _wait_active(lab.run_dir, {1: 1, 2: 1}, 5)
    assert sc.loss_dropped(lab.topo, 2), "the drop rule dropped nothing"
    sc.remove_loss(lab.topo, 2)
    back = _wait_active(lab.run_dir, {1: 0, 2: 0}, 15)
    print(json.dumps({"caught_up": w, "moved": moved, "back": back}))
    assert w["reached"], (w, moved)
    assert all(s.get("active") == 1 for s in moved.values()), moved
    assert "does not hear us" in moved[1]["last_switch"]["reason"], moved[1]
    assert all(s.get("active") == 0 for s in back.values()), back
    # And it stays there: neither side waits for the other on the LAN.
    time.sleep(2.5)
    later = _wait_active(lab.run_dir, {1: 0, 2: 0}, 0)
    assert all(later[n]["switches"] == back[n]["switches"] for n in (1, 2)), later
