"""Discovery's rules (proto/sync.md, 3.2) on the simulated cluster.

An announcement is what the DNS-SD browser of SyncShell hands the node core
(`NodeCore.announced`); here the test plays the link and announces nodes
itself.  What is checked: a discovered node is a peer only once it proved
the cluster key through the state mesh's authenticated exchange; a node of
another cluster, a forged announcement (right fingerprint, no key) and an
announcement that contradicts a configured peer never become one; what a
forged announcement can make a node send is bounded.
"""

from __future__ import annotations

from cluster import SECRET, Cluster, address, node, quiet_group

from meshd.sync import PeerChanged
from meshd.sync.discovery import MAX_ADDRESSES, fingerprint
from meshd.sync.membership import CANDIDATE_INTERVAL_S, DISCOVERY_WINDOW_S, MAX_CANDIDATES

FP = fingerprint(SECRET)
OTHER_SECRET = b"another cluster's secret, 32 byt"
OTHER_FP = fingerprint(OTHER_SECRET)
PORT = 7113


def discovering(n: int, peers=(), **kw) -> str:
    sync = {"discover": True, "interface": "sync0", "heartbeat_ms": 250, "commit": "takeover", **kw}
    if peers:
        sync["peers"] = [{"id": p, "address": address(p)} for p in peers]
    return node(n, [quiet_group()], sync=sync)


def announce(c: Cluster, to: int, who: int, fp: str = FP, at: str | None = None, port: int = PORT,
             key: str | None = None) -> None:
    c.call(to, "announced", key or f"node{who}@{at or address(who)}", who, f"fw{who}",
           at or address(who), port, fp)


def announce_all(c: Cluster, ids) -> None:
    for to in ids:
        for who in ids:
            if who != to:
                announce(c, to, who)


def reasons(c: Cluster, n: int) -> dict:
    return {(r["node"], r["address"]): r["reason"] for r in c.nodes[n].node.discover_view(c.now)["heard"]}


def sent_to(c: Cluster, n: int, peer: int, since: float = 0.0) -> int:
    return sum(1 for dg in c.captured if dg.src == n and dg.peer == peer and dg.time >= since)


def test_three_nodes_without_peers_find_each_other_prove_the_key_and_replicate():
    ids = [1, 2, 3]
    c = Cluster({n: discovering(n) for n in ids}, seed=1)
    c.start_all()
    c.run_for(0.3)
    assert all(not c.nodes[n].sync.peers for n in ids)     # nothing configured, nothing heard
    announce_all(c, ids)
    c.run_for(3)
    for n in ids:
        core = c.nodes[n].sync
        assert sorted(core.peers) == [m for m in ids if m != n]
        assert not core.candidates
        states = [e for e in c.nodes[n].of(PeerChanged) if e.state == "discovered"]
        assert sorted(e.peer for e in states) == [m for m in ids if m != n]
        assert all(r.startswith("taken as peer since") for r in reasons(c, n).values())
    keys = c.create(1, 50)
    c.run_for(1)
    for n in (2, 3):
        assert sorted(dict(c.nodes[n].sync.dump_external(1))) == sorted(keys)
    assert c.converged()


def test_a_node_with_another_key_is_listed_and_never_a_peer():
    ids = [1, 2]
    c = Cluster({1: discovering(1), 2: discovering(2)}, seed=2,
                secrets={2: {1: OTHER_SECRET}})
    c.start_all()
    announce(c, 1, 2, fp=OTHER_FP)
    announce(c, 2, 1, fp=FP)
    c.run_for(3)
    assert reasons(c, 1) == {(2, address(2)): "other cluster: fingerprint differs"}
    assert not c.nodes[1].sync.peers and not c.nodes[1].sync.candidates
    assert sent_to(c, 1, 2) == 0                       # not even a heartbeat
    del ids


def test_a_forged_announcement_with_the_right_fingerprint_never_becomes_a_peer():
    # Node 2 holds another key but announces our fingerprint (copied off the link):
    # it is a candidate, sent bounded heartbeats, and its frames fail the AEAD.
    c = Cluster({1: discovering(1), 2: discovering(2)}, seed=3, secrets={2: {1: OTHER_SECRET}})
    c.start_all()
    announce(c, 1, 2, fp=FP)
    announce(c, 2, 1, fp=OTHER_FP)
    c.nodes[2].node.discovery.fingerprints = frozenset({FP})   # and it believes ours too
    announce(c, 2, 1, fp=FP)
    c.run_for(10)
    core = c.nodes[1].sync
    assert not core.peers and list(core.candidates) == [2]
    assert reasons(c, 1) == {(2, address(2)): "not proven yet"}
    assert core.rejected["bad tag"] > 0 and not core.discovered
    assert not [e for e in c.nodes[1].of(PeerChanged)]
    # The bound: one heartbeat every CANDIDATE_INTERVAL_S, plus the first.
    assert sent_to(c, 1, 2) <= 10 / CANDIDATE_INTERVAL_S + 1


def test_a_forger_cannot_become_a_peer_by_replaying_a_real_nodes_frames():
    # Node 3 (real, with the key) is heard by node 1 only through a forged
    # announcement of id 3 at an address that is not node 3's: its frames come
    # from its own address, so they are no candidate's; and nothing is sent to
    # its real address.
    c = Cluster({1: discovering(1), 3: discovering(3)}, seed=4)
    c.start_all()
    announce(c, 1, 3, at="10.0.0.66")
    announce(c, 3, 1)
    c.run_for(3)
    assert not c.nodes[1].sync.peers
    assert reasons(c, 1) == {(3, "10.0.0.66"): "not proven yet"}
    assert c.nodes[1].sync.rejected["unknown sender"] > 0


def test_configured_peers_take_precedence():
    c = Cluster({1: discovering(1, peers=[2]), 2: discovering(2, peers=[1])}, seed=5)
    c.start_all()
    announce(c, 1, 2)
    announce(c, 1, 2, at="10.0.0.99")
    c.run_for(DISCOVERY_WINDOW_S)
    assert reasons(c, 1) == {(2, address(2)): "configured peer",
                             (2, "10.0.0.99"): "configured peer, at 10.0.0.2: announcement ignored"}
    assert not c.nodes[1].sync.candidates and not c.nodes[1].sync.discovered
    assert c.in_sync(1) and c.in_sync(2)


def test_a_discovered_peer_is_not_moved_by_an_announcement_at_another_address():
    c = Cluster({1: discovering(1), 2: discovering(2)}, seed=6)
    c.start_all()
    announce(c, 1, 2)
    announce(c, 2, 1)
    c.run_for(2)
    assert list(c.nodes[1].sync.peers) == [2]
    announce(c, 1, 2, at="10.0.0.77")
    c.run_for(2)
    assert reasons(c, 1)[(2, "10.0.0.77")] == \
        "taken as peer at 10.0.0.2: announcement at another address ignored"
    assert c.nodes[1].node.discovery.peer_address == {2: address(2)}
    assert not c.nodes[1].sync.candidates
    one = c.nodes[2].sync.peers[1]                          # frames still go to 10.0.0.2
    assert not one.absent and c.now - one.last_heard < 0.5


def test_candidates_are_bounded():
    c = Cluster({1: discovering(1)}, seed=7)
    c.start_all()
    for who in range(10, 10 + 3 * MAX_CANDIDATES):
        announce(c, 1, who, at=f"10.9.0.{who}")
    for k in range(2 * MAX_ADDRESSES):                    # many addresses for one id
        announce(c, 1, 10, at=f"10.8.0.{k}")
    c.run_for(5)
    core = c.nodes[1].sync
    assert len(core.candidates) == MAX_CANDIDATES
    assert len(c.nodes[1].node.discovery.candidate_addresses(10)) == MAX_ADDRESSES
    full = [r for r in reasons(c, 1).values() if r.endswith("the candidate table is full")]
    assert len(full) == 2 * MAX_CANDIDATES
    # What the forgeries cost node 1: at most one heartbeat per candidate per interval.
    heartbeats = core.counters["candidate heartbeats"]
    assert heartbeats <= MAX_CANDIDATES * (5 / CANDIDATE_INTERVAL_S + 1)


def test_a_withdrawn_candidate_is_forgotten():
    c = Cluster({1: discovering(1)}, seed=8)
    c.start_all()
    announce(c, 1, 5, key="x")
    assert list(c.nodes[1].sync.candidates) == [5]
    c.call(1, "withdrawn", "x")
    assert not c.nodes[1].sync.candidates
    before = c.nodes[1].sync.counters["candidate heartbeats"]
    c.run_for(2)
    assert c.nodes[1].sync.counters["candidate heartbeats"] == before


def test_a_node_restarted_with_discovery_finds_its_peers_again():
    ids = [1, 2]
    c = Cluster({n: discovering(n) for n in ids}, seed=9)
    c.start_all()
    announce_all(c, ids)
    c.run_for(2)
    c.create(2, 20)
    c.run_for(0.5)
    c.restart(1)
    announce(c, 1, 2)
    c.run_for(3)
    assert list(c.nodes[1].sync.peers) == [2]
    assert len(dict(c.nodes[1].sync.dump_external(2))) == 20
    # Node 2 kept node 1 as its peer and saw a restart, not a new discovery.
    assert [e.state for e in c.nodes[2].of(PeerChanged) if e.peer == 1][-1] in ("restarted", "back")


def test_discovery_hold_a_restarted_discovered_only_node_stays_demoted_until_it_has_its_peers_flows():
    """Issue 12, the hold: without it, a node whose peers are all discovered has
    none at start, so its round says "no peers" and it is in sync (undemoted)
    with an empty cache.  With it, the start-up round stays open for
    DISCOVERY_WINDOW_S and the peers proven meanwhile join it: the node is in
    sync only once their bulks are in."""
    ids = [1, 2, 3]
    c = Cluster({n: discovering(n) for n in ids}, seed=10)
    c.start_all()
    announce_all(c, ids)
    c.run_for(DISCOVERY_WINDOW_S + 1)
    assert all(c.in_sync(n) for n in ids)
    keys = c.create(2, 40) + c.create(3, 30)
    c.run_for(1)
    c.restart(1, reboot=True)
    group = c.group_names()[0]
    seen: list[tuple[float, bool, int, int]] = []      # (time, in sync, flows held, demotion)

    def sample():
        core = c.nodes[1].sync
        held = sum(len(dict(core.dump_external(o))) for o in (2, 3) if o in core.peers)
        seen.append((c.now, c.in_sync(1), held, c.priority(1, group)[0]))
    c.every(0.05, sample)
    restarted_at = c.now
    # The link's browser hears the others a while after the start (zeroconf's
    # probing and announcement take about a second).
    c.at(c.now + 1.5, lambda: [announce(c, 1, who) for who in (2, 3)])
    c.run_for(DISCOVERY_WINDOW_S + 3)
    assert not any(ok for t, ok, _, _ in seen if t < restarted_at + DISCOVERY_WINDOW_S - 0.3), \
        "in sync within the discovery window"
    assert all(dem > 0 for t, ok, _, dem in seen if not ok)
    first = next((s for s in seen if s[1]), None)
    assert first is not None, seen[-1]
    assert first[2] == len(keys), f"in sync at {first[0] - restarted_at:.2f} s holding {first[2]} of {len(keys)}"
    assert first[3] == 0
    assert c.nodes[1].sync.sync_reason == "bulk resync complete"


def test_discovery_hold_ends_for_a_node_that_finds_no_one():
    c = Cluster({1: discovering(1)}, seed=11)
    c.start_all()
    c.run_for(DISCOVERY_WINDOW_S - 0.5)
    assert not c.in_sync(1)
    assert c.nodes[1].sync.sync_reason.startswith("startup: discovery window")
    c.run_for(1)
    assert c.in_sync(1)
