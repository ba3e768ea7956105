"""SyncCore rules, on small meshes of the simulated cluster (tests/sim/cluster/).

Each test names the rule it pins down; the network is lossless unless the
rule is about loss.  The convergence properties under loss, reordering,
duplication and restarts are in test_sync_sim.py.

The nodes are whole NodeCores (commit = "takeover" unless a rule is about
"continuous"; one group that advertises once a minute, so the election
stays out of the way): the core is reached as the daemon reaches it, kernel
events as CtEvents, a resync through a dump of the node's kernel table, a
takeover through the election.  The few tests of a SyncCore method with no
network drive a SyncCore alone.
"""

from __future__ import annotations

import random

import pytest
from cluster import FRAME, OTHER_SYNC_KEYS, SYNC_KEYS, Cluster, group, mesh, node, sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.kernel import ctnetlink as ct
from meshd.sync import (
    NEW,
    ExternalChanged,
    FrameRejected,
    PeerChanged,
    SendFrame,
    SyncCore,
    SyncState,
)
from meshd.sync.frames import FrameType, decode_frame, encode_frame


def snapshot(c: Cluster) -> dict:
    """Every cache of every node, to check that nothing changed."""
    return {n: (dict(sim.sync.dump_internal()), {p: dict(sim.sync.dump_external(p)) for p in sim.sync.peers})
            for n, sim in c.nodes.items() if sim.alive}


def peer_states(c: Cluster, n: int) -> list[str]:
    return [e.state for e in c.nodes[n].of(PeerChanged)]


def sync_states(c: Cluster, n: int) -> list[SyncState]:
    return c.nodes[n].of(SyncState)


# ----------------------------------------------------------------- start, in sync, absent

def test_a_starting_node_is_in_sync_only_after_every_peers_bulk():
    c = Cluster(mesh([1, 2, 3], commit="takeover"), seed=1)
    c.start(1)
    c.start(3)
    c.create(1, 10000)
    c.create(3, 2500)
    c.run_for(0.5)
    c.start(2)
    c.run_for(0.0)
    states = sync_states(c, 2)
    assert states[0] == SyncState(False, "startup: waiting for bulk resync from peers 1, 3")
    at = c.run_for(5, lambda: c.in_sync(2), 0.001)
    assert at is not None
    assert sync_states(c, 2)[-1].in_sync and sync_states(c, 2)[-1].reason == "bulk resync complete"
    # At that moment (no traffic meanwhile) it holds both peers' tables exactly.
    assert dict(c.nodes[2].sync.dump_external(1)) == c.nodes[1].kernel.local
    assert dict(c.nodes[2].sync.dump_external(3)) == c.nodes[3].kernel.local
    # Paced: 10000 entries at 100k entries/s (after a burst of 1000, 10 ms' worth) take about 90 ms.
    assert 0.08 <= at - 0.5 <= 0.2


def test_no_peers_means_in_sync_at_once():
    core = SyncCore(1, [], SYNC_KEYS, 5)
    assert core.start(0.0) == [SyncState(True, "startup: no peers")]
    assert core.local_events([(NEW, b"k", b"a")], 0.1) == []     # nobody to send to


def test_a_silent_peer_is_declared_absent_after_the_timeout():
    c = Cluster(mesh([1, 2], commit="takeover", peer_timeout_ms=1000), seed=1)
    c.start(1)
    at = c.run_for(5, lambda: c.in_sync(1), 0.01)
    assert at == pytest.approx(1.0, abs=0.3)
    assert sync_states(c, 1)[-1] == SyncState(True, "bulk resync complete; absent: peers 2")
    assert peer_states(c, 1) == ["absent"]
    # It comes later: it gets a bulk, and we get its (empty) one; no flap of in_sync.
    c.start(2)
    c.run_for(1)
    assert [s.in_sync for s in sync_states(c, 1)] == [False, True]
    assert peer_states(c, 1) == ["absent", "first contact", "back"]
    assert c.in_sync(2)


def test_operator_resync_fetches_everything_again():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=1)
    c.start_all()
    c.create(1, 300)
    c.run_for(0.5)
    sent = c.nodes[1].sync.counters["records sent bulk"]
    c.call(2, "resync_request")
    assert not c.in_sync(2)
    assert c.run_for(2, lambda: c.in_sync(2), 0.001) is not None
    assert c.nodes[1].sync.counters["records sent bulk"] - sent == 300
    assert sync_states(c, 2)[-2].reason.startswith("operator resync: waiting")


# ----------------------------------------------------------------- replication rules

def test_live_changes_reach_every_peer():
    c = Cluster(mesh([1, 2, 3], commit="takeover"), seed=2)
    c.start_all()
    c.run_for(0.2)
    k1, k2 = c.create(1, 2)
    c.run_for(0.1)
    c.update(1, [k1])
    c.destroy(1, [k2])
    c.run_for(0.1)
    for n in (2, 3):
        assert dict(c.nodes[n].sync.dump_external(1)) == {k1: c.nodes[1].kernel.local[k1]}
    assert c.flows.versions[k1] == 2
    assert c.converged()


def test_a_batch_is_many_records_per_frame_within_max_datagram():
    core = SyncCore(1, [2], SYNC_KEYS, 1, max_datagram=1200)
    events = [(NEW, i.to_bytes(20, "big"), bytes(150)) for i in range(1000)]
    frames = [a.data for a in core.local_events(events, 0.0) if isinstance(a, SendFrame)]
    assert all(len(f) <= 1200 for f in frames)
    assert len(frames) <= 1000 * 180 // 1000 + 1           # about 6 records of 180 bytes each
    records = sum(len(decode_frame(f, SYNC_KEYS).body[3]) for f in frames)
    assert records == 1000


def test_a_resync_after_an_overrun_sends_only_the_differences():
    """Events lost (ENOBUFS): the node dumps its table and sends what differs."""
    c = Cluster(mesh([1, 2], commit="takeover"), seed=3)
    c.start_all()
    keys = c.create(1, 100)
    c.run_for(0.3)
    kernel = c.nodes[1].kernel
    for k in keys[:3]:                           # gone, changed, new: and no event said so
        del kernel.table[k], kernel.local[k]
    for k in keys[3:5]:
        kernel.table[k] = kernel.local[k] = c.flows.next_version(k)
    new, attrs = c.flows.new(1)
    kernel.table[new] = kernel.local[new] = attrs
    before = c.nodes[1].sync.counters["records sent live"]
    c.overrun(1)
    c.run_for(0.01)
    assert c.nodes[1].sync.counters["records sent live"] - before == 6
    c.run_for(0.3)
    assert dict(c.nodes[2].sync.dump_external(1)) == kernel.local


def test_oversized_entries_are_refused_and_counted():
    core = SyncCore(1, [2], SYNC_KEYS, 1, max_datagram=300)
    core.local_events([(NEW, b"big", bytes(400)), (NEW, b"ok", bytes(100))], 0.0)
    assert dict(core.dump_internal()) == {b"ok": bytes(100)}
    assert core.stats()["internal"]["oversized_refused"] == 1


def test_external_changed_actions_rebuild_the_external_cache():
    """commit = "continuous": ExternalChanged carries every change of a peer's
    flows, and the applier keeps the kernel table equal to them."""
    c = Cluster(mesh([1, 2], commit="continuous"), seed=4, loss=0.2, jitter=0.002)
    c.start_all()
    c.load(1.0, 500, random.Random(4), nodes=[1])
    c.run_for(1.0)
    assert c.run_for(10, c.converged, 0.05) is not None, c.differences()
    table: dict[bytes, bytes] = {}
    for a in c.nodes[2].of(ExternalChanged):
        if a.origin == 1:
            for k, _ in a.deletes:
                table.pop(k, None)
            for k, v in a.upserts:
                table[k] = v
    assert table == c.nodes[1].kernel.local
    assert c.nodes[2].kernel.table == c.nodes[1].kernel.local


# ----------------------------------------------------------------- restarts and takeover

def test_a_restarted_peers_entries_are_kept_until_its_bulk_replaces_them():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=5, delay=0.01)
    c.start_all()
    c.create(1, 200)
    c.run_for(0.5)
    old = dict(c.nodes[2].sync.dump_external(1))
    assert old == c.nodes[1].kernel.local and len(old) == 200
    c.restart(1, reboot=True)           # the box rebooted: its kernel table is empty
    c.run_for(0.031)                    # node 2 has proven the new start (1.5 round trips), not had the bulk
    peer = c.nodes[2].sync.peers[1]
    assert peer.epoch == c.nodes[1].epoch
    assert dict(c.nodes[2].sync.dump_external(1)) == old
    assert c.run_for(2, c.converged, 0.01) is not None
    assert dict(c.nodes[2].sync.dump_external(1)) == {}
    assert peer_states(c, 2)[-1] == "restarted"


def failover_mesh(ids, **kw) -> dict[int, str]:
    """Nodes with one group g1 (advbase 100 ms; node 1 preferred, then 2, then 3)."""
    return {n: node(n, [group(1, advskew=50 * (n - 1))], sync=sync(n, ids, commit="takeover", **kw))
            for n in ids}


def test_takeover_commit_then_adopt_moves_entries_to_the_internal_cache():
    c = Cluster(failover_mesh([1, 2, 3]), seed=6)
    c.start_all()
    keys = c.create(1, 100)
    c.run_for(0.5)
    flows = dict(c.nodes[1].kernel.local)
    c.kill(1)                                          # node 1 fails; node 2 takes over
    assert c.run_for(1.0, lambda: c.holders("g1") == {2}) is not None, c.timeline()
    # Committed into node 2's kernel before the addresses moved.
    assert all(c.nodes[2].kernel.table.get(k) == a for k, a in flows.items())
    # The kernel reports some of the committed flows as its own (traffic), before
    # the adoption step (node/takeover.py, ADOPT_DELAY) takes the rest.
    c.update(2, keys[:60])
    assert len(dict(c.nodes[2].sync.dump_external(1))) == 40   # moved as the kernel reported them
    assert len(dict(c.nodes[2].sync.dump_internal())) == 60
    c.run_for(0.3)
    # Node 3 now has them from node 2 as well (node 2 announces its internal cache).
    assert len(dict(c.nodes[3].sync.dump_external(2))) == 60
    # One key once in the commit list, from whichever origin holds it.
    assert len(list(c.nodes[3].sync.external_entries())) == 100
    # Then the adoption: every flow taken over is node 2's.
    c.run_for(0.5)
    assert len(dict(c.nodes[2].sync.dump_internal())) == 100
    assert dict(c.nodes[2].sync.dump_external(1)) == {}


def test_external_entries_of_an_unknown_origin_raise():
    core = SyncCore(1, [2], SYNC_KEYS, 1)
    with pytest.raises(KeyError):
        core.external_entries(9)


def test_flush_external_is_refilled_by_anti_entropy_while_the_origin_lives():
    c = Cluster(mesh([1, 2], commit="takeover", digest_interval_ms=500), seed=7)
    c.start_all()
    c.create(1, 300)
    c.run_for(0.5)
    c.call(2, "flush_external", 1)
    assert dict(c.nodes[2].sync.dump_external(1)) == {}
    assert c.run_for(2, c.converged, 0.01) is not None
    assert c.nodes[2].sync.peers[1].stats["buckets differing"] > 0


def test_flush_internal_then_a_dump_restores_peers_copies():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=8)
    c.start_all()
    c.create(1, 50)
    c.run_for(0.3)
    assert c.flush_internal(1) == 50
    c.run_for(0.3)
    assert c.converged()


# ----------------------------------------------------------------- overflow degrades

def test_queue_overflow_degrades_to_a_bulk_resync_and_converges():
    c = Cluster(mesh([1, 2], commit="takeover", resend_queue=200, peer_timeout_ms=5000), seed=9)
    c.start_all()
    c.run_for(0.5)
    c.partition({1}, {2})                    # node 2 stops acknowledging (not yet absent)
    for _ in range(10):
        c.create(1, 100)
        c.run_for(0.05)
    c.heal()
    assert c.run_for(5, c.converged, 0.01) is not None
    s = c.nodes[1].sync.stats(c.now)
    assert s["counters"]["queue overflows"] >= 1
    assert s["bulk_resyncs_started"].get("resend queue overflow", 0) >= 1
    assert s["peers"][2]["counters"]["degraded: resend queue overflow"] >= 1


# ----------------------------------------------------------------- rejects, forgeries, replays

def test_reject_reasons():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=10)
    c.start_all()
    c.run_for(0.2)
    core2 = c.nodes[2].sync
    own = [d.data for d in c.captured if d.src == 2 and d.kind is FRAME]
    epoch1, boot1 = c.nodes[1].epoch, c.nodes[1].sync.boot_id
    hb = encode_frame(SYNC_KEYS, 1, epoch1, 10**6, FrameType.HEARTBEAT, (0, (), 0, ()), boot_id=boot1)
    cases = [
        (b"\x01" * 10, None, "truncated"),
        (encode_frame(SYNC_KEYS, 9, 1, 1, FrameType.HEARTBEAT, (0, (), 0, ())), None, "unknown sender"),
        (hb, 3, "sender mismatch"),
        (encode_frame(OTHER_SYNC_KEYS, 1, epoch1, 10**6, FrameType.HEARTBEAT, (0, (), 0, ()),
                      boot_id=boot1), None, "bad tag"),
        (encode_frame(SYNC_KEYS, 1, epoch1, 10**6 + 1, FrameType.HEARTBEAT, (1, 2), boot_id=boot1),
         None, "bad body"),
        (encode_frame(SYNC_KEYS, 2, c.nodes[2].epoch + 1, 1, FrameType.HEARTBEAT, (0, (), 0, ())), None,
         "duplicate node id"),
    ]
    for data, hint, reason in cases:
        actions = c.inject_frame(2, data, hint)
        assert [type(a) for a in actions] == [FrameRejected], reason
        assert actions[0].reason == reason
        assert core2.rejected[reason] >= 1
    assert c.inject_frame(2, hb, 1) == []            # accepted once...
    assert c.inject_frame(2, hb, 1)[0].reason == "replayed"
    # Another start of node 1 (an older epoch, or the same one with another
    # boot id), authentic but never proven: counted, not reported (each
    # start of a peer has a few before its proof, proto/sync.md 3.1).
    for epoch, boot in ((epoch1 - 1, boot1), (epoch1, bytes(16))):
        other = encode_frame(SYNC_KEYS, 1, epoch, 5, FrameType.HEARTBEAT, (0, (), 0, ()), boot_id=boot)
        before = core2.rejected["unproven"]
        assert [a for a in c.inject_frame(2, other, 1) if isinstance(a, FrameRejected)] == []
        assert core2.rejected["unproven"] == before + 1
    # Our own multicast looped back: counted, not reported.
    assert own and c.inject_frame(2, own[-1]) == []
    assert core2.rejected["own frame"] == 1


@pytest.fixture(scope="module")
def captured():
    """A lossy 3-node run with restarts; every frame sent, and the final state."""
    c = Cluster(mesh([1, 2, 3], commit="takeover"), seed=11, loss=0.2, jitter=0.002, dup=0.1)
    c.start_all()
    c.load(1.0, 300, random.Random(11))
    c.run_for(0.5)
    c.restart(3)
    c.run_for(0.5)
    assert c.run_for(10, c.quiet, 0.05) is not None
    return c, [(d.src, d.data) for d in c.captured if d.kind is FRAME]


def test_replaying_every_captured_frame_changes_nothing(captured):
    c, frames = captured
    before = snapshot(c)
    for src, data in frames:
        for n in c.alive():
            if n != src:
                c.inject_frame(n, data, src)
    c.run_for(1.0)
    assert snapshot(c) == before
    assert sum(c.nodes[n].sync.rejected["replayed"] + c.nodes[n].sync.rejected["old epoch"]
               + c.nodes[n].sync.rejected["outside window"] for n in c.ids) > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_forged_frames_never_change_caches(captured, data):
    c, frames = captured
    before = snapshot(c)
    src, frame = data.draw(st.sampled_from(frames))
    how = data.draw(st.sampled_from(["flip", "truncate", "resign", "fresh-counter"]))
    if how == "flip":
        bit = data.draw(st.integers(0, len(frame) * 8 - 1))
        b = bytearray(frame)
        b[bit // 8] ^= 1 << (bit % 8)
        forged = bytes(b)
    elif how == "truncate":
        forged = frame[:data.draw(st.integers(0, len(frame) - 1))]
    else:
        f = decode_frame(frame, SYNC_KEYS)
        h = f.header
        counter = h.counter if how == "resign" else h.counter + 10**9
        forged = encode_frame(OTHER_SYNC_KEYS, h.sender, h.epoch, counter, h.type, f.body)
    target = data.draw(st.sampled_from([n for n in c.alive() if n != src]))
    actions = c.inject_frame(target, forged, src)
    assert all(isinstance(a, FrameRejected) for a in actions)
    assert snapshot(c) == before


def test_an_idle_period_does_not_turn_the_next_loss_into_a_bulk_resync():
    """A live peer keeps holding our resend queue even when there was nothing to
    acknowledge for longer than the peer timeout (it is alive: its heartbeats arrive)."""
    c = Cluster(mesh([1, 2, 3], commit="takeover", peer_timeout_ms=1000), seed=12)
    c.start_all()
    c.create(1, 100)
    c.run_for(3.0)                       # idle for three peer timeouts
    c.network.loss = 0.5
    for _ in range(5):
        c.create(1, 50)
        c.run_for(0.02)
    c.network.loss = 0.0
    assert c.run_for(3, c.converged, 0.01) is not None
    assert c.nodes[1].sync.bulks == {"requested": 2}     # the two startup bulks only
    assert c.nodes[1].sync.counters["frames resent"] > 0


def test_stats_say_what_happened():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=13, loss=0.3, dup=0.1)
    c.start_all()
    c.run_for(0.5)
    c.create(1, 500)
    c.run_for(0.05)
    c.inject_frame(2, b"\x00" * 60, 1)
    assert c.run_for(5, c.converged, 0.01) is not None
    s1, s2 = c.nodes[1].sync.stats(c.now), c.nodes[2].sync.stats(c.now)
    assert s1["frames_sent"]["DATA"] > 0 and s2["frames_received"]["DATA"] > 0
    assert s1["counters"]["records sent live"] == 500
    assert s1["counters"]["frames resent"] > 0 and s1["counters"]["records sent resend"] > 0
    assert s2["rejected"]["bad version"] == 1 and s2["rejected"]["replayed"] > 0
    assert s1["internal"]["entries"] == 500 and s1["internal"]["bytes"] > 500 * 80
    peer1 = s2["peers"][1]
    assert peer1["in"]["external_entries"] == 500
    assert peer1["in"]["mcast"]["lag"] == 0 and peer1["in"]["mcast"]["went_missing"] > 0
    assert 0 <= peer1["since_last_frame_s"] < 1 and not peer1["absent"]
    assert peer1["in"]["bulk"]["complete_for_request"] == 1
    assert s1["bulk_resyncs_started"] == {"requested": 1}
    # Per peer too (meshd_sync_peer_bulk_resyncs_sent_total): node 1 sent its bulk to node 2.
    assert s1["peers"][2]["counters"]["bulk resyncs sent"] == 1
    assert s2["peers"][1]["counters"]["bulk resyncs received"] == 1
    assert s2["in_sync"] and s2["sync_reason"] == "bulk resync complete"


def test_restored_replay_marks_refuse_frames_captured_before_a_restart():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=14)
    c.start_all()
    c.create(1, 20)
    c.run_for(0.3)
    frames = [d.data for d in c.captured if d.src == 1 and d.kind is FRAME]
    c.restart(2)                         # with the marks it persisted
    for f in frames:                     # before any frame of the new life arrives
        actions = c.inject_frame(2, f, 1)
        assert not [a for a in actions if isinstance(a, FrameRejected)]   # counted, not reported
    core = c.nodes[2].sync
    assert core.rejected["unproven"] == len(frames) and core.frames_received == {}
    assert dict(core.dump_external(1)) == {}


def _adoptable(c: Cluster, n: int, origin: int) -> dict[bytes, bytes]:
    core = c.nodes[n].sync
    return {k: a for b in range(256) for k, a in core.adoptable_bucket(origin, b)}


def test_only_the_state_from_before_a_takeover_is_adoptable():
    """A preempted master lives on: what it replicates after the takeover runs
    through it, not through the new master, and stays its own."""
    c = Cluster(failover_mesh([1, 2]), seed=7)
    c.start_all()
    c.create(1, 50)
    c.run_for(0.5)
    before = dict(c.nodes[1].kernel.local)
    c.call(1, "operator_demote", "all", 50)          # node 2 takes over from node 1, alive
    assert c.run_for(0.1, lambda: c.holders("g1") == {2}) is not None, c.timeline()
    c.create(1, 30)                                  # node 1's own flows, created later
    key, _ = next(iter(before.items()))
    c.update(1, [key])                               # and a flow updated where it runs
    c.run_for(0.2)                                   # (before the adoption step, 0.5 s on)
    assert len(dict(c.nodes[2].sync.dump_external(1))) == 80
    adoptable = _adoptable(c, 2, 1)
    assert adoptable == {k: a for k, a in before.items() if k != key}
    c.run_for(0.5)                                   # the adoption took exactly those
    assert dict(c.nodes[2].sync.dump_internal()) == adoptable
    c.restart(1)                                     # a new epoch: its bulk is newer than the takeover
    c.run_for(0.05)
    assert c.nodes[2].sync.peers[1].epoch == c.nodes[1].epoch
    assert _adoptable(c, 2, 1) == {}


def test_flows_are_real_ctnetlink_entries():
    """The simulated kernel's flows decode as the daemon decodes them."""
    c = Cluster(mesh([1, 2], commit="takeover"), seed=15)
    (key,) = c.create(1, 1)
    attrs = c.nodes[1].kernel.table[key]
    assert c.flows.event(ct.NEW, attrs).key == key
    assert ct.parse_entry(attrs)["tcp"] == {"state": "ESTABLISHED"}
