"""SyncCore rules, on small meshes of the simulator (tests/sync/simnet.py).

Each test names the rule it pins down; the network is lossless unless the
rule is about loss.  The convergence properties under loss, reordering,
duplication and restarts are in test_sync_sim.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.sync import DESTROY, NEW, UPDATE, FrameRejected, SendFrame, SyncCore, SyncState
from meshd.sync.frames import FrameType, decode_frame, encode_frame
from simnet import KEYS, OTHER_KEYS, SimNet


def snapshot(net: SimNet) -> dict:
    """Every cache of every node, to check that nothing changed."""
    return {n: (dict(node.core.dump_internal()),
                {p: dict(node.core.dump_external(p)) for p in node.core.peers})
            for n, node in net.nodes.items() if node.alive}


def load(net: SimNet, n: int, count: int) -> None:
    net.local(n, [(NEW, net.new_key(n), net.attrs()) for _ in range(count)])


# ----------------------------------------------------------------- start, in sync, absent

def test_a_starting_node_is_in_sync_only_after_every_peers_bulk():
    net = SimNet([1, 2, 3], seed=1, bulk_rate=20_000)
    net.start(1)
    net.start(3)
    load(net, 1, 2000)
    load(net, 3, 500)
    net.run_for(0.5)
    net.start(2)
    states = net.nodes[2].states
    assert states[0][1] == SyncState(False, "startup: waiting for bulk resync from peers 1, 3")
    at = net.run_for(5, lambda: net.in_sync(2), 0.001)
    assert at is not None
    assert states[-1][1].in_sync and states[-1][1].reason == "bulk resync complete"
    # At that moment (no traffic meanwhile) it holds both peers' tables exactly.
    assert dict(net.nodes[2].core.dump_external(1)) == net.nodes[1].kernel
    assert dict(net.nodes[2].core.dump_external(3)) == net.nodes[3].kernel
    # Paced: 2000 entries at 20k entries/s (after a 10 ms burst) take about 90 ms.
    assert 0.08 <= at - 0.5 <= 0.2


def test_no_peers_means_in_sync_at_once():
    core = SyncCore(1, [], KEYS, 5)
    assert core.start(0.0) == [SyncState(True, "startup: no peers")]
    assert core.local_events([(NEW, b"k", b"a")], 0.1) == []     # nobody to send to


def test_a_silent_peer_is_declared_absent_after_the_timeout():
    net = SimNet([1, 2], seed=1, peer_timeout_s=1.0)
    net.start(1)
    at = net.run_for(5, lambda: net.in_sync(1), 0.01)
    assert at == pytest.approx(1.0, abs=0.3)
    assert net.nodes[1].states[-1][1] == SyncState(True, "bulk resync complete; absent: peers 2")
    assert [e.state for _, e in net.nodes[1].peer_events] == ["absent"]
    # It comes later: it gets a bulk, and we get its (empty) one; no flap of in_sync.
    net.start(2)
    net.run_for(1)
    assert [s.in_sync for _, s in net.nodes[1].states] == [False, True]
    assert [e.state for _, e in net.nodes[1].peer_events] == ["absent", "first contact", "back"]
    assert net.in_sync(2)


def test_operator_resync_fetches_everything_again():
    net = SimNet([1, 2], seed=1)
    net.start_all()
    load(net, 1, 300)
    net.run_for(0.5)
    sent = net.nodes[1].core.counters["records sent bulk"]
    net.call(2, "request_resync")
    assert not net.in_sync(2)
    assert net.run_for(2, lambda: net.in_sync(2), 0.001) is not None
    assert net.nodes[1].core.counters["records sent bulk"] - sent == 300
    assert net.nodes[2].states[-2][1].reason.startswith("operator resync: waiting")


# ----------------------------------------------------------------- replication rules

def test_live_changes_reach_every_peer():
    net = SimNet([1, 2, 3], seed=2)
    net.start_all()
    net.run_for(0.2)
    k1, k2 = net.new_key(1), net.new_key(1)
    net.local(1, [(NEW, k1, b"one"), (NEW, k2, b"two")])
    net.run_for(0.1)
    net.local(1, [(UPDATE, k1, b"one'"), (DESTROY, k2, None)])
    net.run_for(0.1)
    for n in (2, 3):
        assert dict(net.nodes[n].core.dump_external(1)) == {k1: b"one'"}
    assert net.converged()


def test_a_batch_is_many_records_per_frame_within_max_datagram():
    core = SyncCore(1, [2], KEYS, 1, max_datagram=1200)
    events = [(NEW, i.to_bytes(20, "big"), bytes(150)) for i in range(1000)]
    frames = [a.data for a in core.local_events(events, 0.0) if isinstance(a, SendFrame)]
    assert all(len(f) <= 1200 for f in frames)
    assert len(frames) <= 1000 * 180 // 1000 + 1           # about 6 records of 180 bytes each
    records = sum(len(decode_frame(f, KEYS).body[3]) for f in frames)
    assert records == 1000


def test_local_resync_sends_only_the_differences():
    net = SimNet([1, 2], seed=3)
    net.start_all()
    load(net, 1, 100)
    net.run_for(0.3)
    kernel = dict(net.nodes[1].kernel)
    gone, changed = list(kernel)[:3], list(kernel)[3:5]
    for k in gone:
        del kernel[k]
    for k in changed:
        kernel[k] = b"changed"
    kernel[b"new flow"] = b"fresh"
    before = net.nodes[1].core.counters["records sent live"]
    net.nodes[1].kernel = dict(kernel)
    net.call(1, "local_resync", dict(kernel))
    assert net.nodes[1].core.counters["records sent live"] - before == 6
    net.run_for(0.3)
    assert dict(net.nodes[2].core.dump_external(1)) == kernel


def test_oversized_entries_are_refused_and_counted():
    core = SyncCore(1, [2], KEYS, 1, max_datagram=300)
    core.local_events([(NEW, b"big", bytes(400)), (NEW, b"ok", bytes(100))], 0.0)
    assert dict(core.dump_internal()) == {b"ok": bytes(100)}
    assert core.stats()["internal"]["oversized_refused"] == 1


def test_external_changed_actions_rebuild_the_external_cache():
    net = SimNet([1, 2], seed=4, loss=0.2, jitter=0.002, report_external_changes=True)
    net.start_all()
    net.load(1.0, 500, nodes=[1])
    net.run_for(1.0)
    assert net.run_for(10, net.converged) is not None
    table: dict[bytes, bytes] = {}
    for node, a in net.external_changes:
        if node == 2 and a.origin == 1:
            for k, _ in a.deletes:
                table.pop(k, None)
            for k, v in a.upserts:
                table[k] = v
    assert table == net.nodes[1].kernel


# ----------------------------------------------------------------- restarts and takeover

def test_a_restarted_peers_entries_are_kept_until_its_bulk_replaces_them():
    net = SimNet([1, 2], seed=5, delay=0.01)
    net.start_all()
    load(net, 1, 200)
    net.run_for(0.5)
    old = dict(net.nodes[2].core.dump_external(1))
    assert old == net.nodes[1].kernel and len(old) == 200
    net.restart(1, reboot=True)          # the box rebooted: its kernel table is empty
    net.run_for(0.011)                  # node 2 has heard the new epoch, not the whole bulk
    peer = net.nodes[2].core.peers[1]
    assert peer.epoch == net.nodes[1].epoch
    assert dict(net.nodes[2].core.dump_external(1)) == old
    assert net.run_for(2, net.converged, 0.01) is not None
    assert dict(net.nodes[2].core.dump_external(1)) == {}
    assert [e.state for _, e in net.nodes[2].peer_events][-1] == "restarted"


def test_takeover_commit_then_adopt_moves_entries_to_the_internal_cache():
    net = SimNet([1, 2, 3], seed=6)
    net.start_all()
    load(net, 1, 100)
    net.run_for(0.5)
    net.kill(1)                                        # node 1 fails; node 2 takes over
    committed = list(net.nodes[2].core.external_entries(1))
    assert sorted(committed) == sorted(net.nodes[1].kernel.values())
    net.call(2, "adopt", 1)
    # The kernel reports the committed flows as new local flows (ctnetlink events).
    by_attrs = {a: k for k, a in net.nodes[1].kernel.items()}
    net.local(2, [(NEW, by_attrs[a], a) for a in committed[:60]])
    ext = dict(net.nodes[2].core.dump_external(1))
    assert len(ext) == 40                              # moved as the kernel reported them
    assert len(dict(net.nodes[2].core.dump_internal())) == 60
    net.run_for(0.3)
    # Node 3 now has them from node 2 as well (node 2 announces its internal cache).
    assert len(dict(net.nodes[3].core.dump_external(2))) == 60
    # One key once in the commit list, from whichever origin holds it.
    assert len(list(net.nodes[3].core.external_entries())) == 100


def test_external_entries_of_an_unknown_origin_raise():
    core = SyncCore(1, [2], KEYS, 1)
    with pytest.raises(KeyError):
        core.external_entries(9)


def test_flush_external_is_refilled_by_anti_entropy_while_the_origin_lives():
    net = SimNet([1, 2], seed=7, digest_interval_s=0.5)
    net.start_all()
    load(net, 1, 300)
    net.run_for(0.5)
    net.nodes[2].core.flush_external(1)
    assert dict(net.nodes[2].core.dump_external(1)) == {}
    assert net.run_for(2, net.converged, 0.01) is not None
    assert net.nodes[2].core.peers[1].stats["buckets differing"] > 0


def test_flush_internal_then_local_resync_restores_peers_copies():
    net = SimNet([1, 2], seed=8)
    net.start_all()
    load(net, 1, 50)
    net.run_for(0.3)
    assert net.nodes[1].core.flush_internal() == 50
    net.call(1, "local_resync", dict(net.nodes[1].kernel))
    net.run_for(0.3)
    assert net.converged()


# ----------------------------------------------------------------- overflow degrades

def test_queue_overflow_degrades_to_a_bulk_resync_and_converges():
    net = SimNet([1, 2], seed=9, resend_queue=200, peer_timeout_s=5.0)
    net.start_all()
    net.run_for(0.5)
    net.partition({1}, {2})                  # node 2 stops acknowledging (not yet absent)
    for _ in range(10):
        load(net, 1, 100)
        net.run_for(0.05)
    net.heal()
    assert net.run_for(5, net.converged, 0.01) is not None
    s = net.nodes[1].core.stats(net.now)
    assert s["counters"]["queue overflows"] >= 1
    assert s["bulk_resyncs_started"].get("resend queue overflow", 0) >= 1
    assert s["peers"][2]["counters"]["degraded: resend queue overflow"] >= 1


# ----------------------------------------------------------------- rejects, forgeries, replays

def test_reject_reasons():
    net = SimNet([1, 2], seed=10)
    net.start_all()
    net.run_for(0.2)
    core2 = net.nodes[2].core
    own = [a.data for a in net.nodes[2].core.handle_timer(net.now + 1) if isinstance(a, SendFrame)]
    hb = encode_frame(KEYS, 1, net.nodes[1].epoch, 10**6, FrameType.HEARTBEAT, (0, (), 0))
    cases = [
        (b"\x01" * 10, None, "truncated"),
        (encode_frame(KEYS, 9, 1, 1, FrameType.HEARTBEAT, (0, (), 0)), None, "unknown sender"),
        (hb, 3, "sender mismatch"),
        (encode_frame(OTHER_KEYS, 1, net.nodes[1].epoch, 10**6, FrameType.HEARTBEAT, (0, (), 0)),
         None, "bad tag"),
        (encode_frame(KEYS, 1, net.nodes[1].epoch - 1, 5, FrameType.HEARTBEAT, (0, (), 0)), None,
         "old epoch"),
        (encode_frame(KEYS, 1, net.nodes[1].epoch, 10**6 + 1, FrameType.HEARTBEAT, (1, 2)), None,
         "bad body"),
        (encode_frame(KEYS, 2, net.nodes[2].epoch + 1, 1, FrameType.HEARTBEAT, (0, (), 0)), None,
         "duplicate node id"),
    ]
    for data, hint, reason in cases:
        actions = net.inject(2, data, hint)
        assert [type(a) for a in actions] == [FrameRejected], reason
        assert actions[0].reason == reason
        assert core2.rejected[reason] >= 1
    assert net.inject(2, hb, 1) == []            # accepted once...
    assert net.inject(2, hb, 1)[0].reason == "replayed"
    # Our own multicast looped back: counted, not reported.
    assert own and net.inject(2, own[0]) == []
    assert core2.rejected["own frame"] == 1


@pytest.fixture(scope="module")
def captured():
    """A lossy 3-node run with restarts; every datagram sent, and the final state."""
    net = SimNet([1, 2, 3], seed=11, loss=0.2, jitter=0.002, dup=0.1)
    frames: list[tuple[int, bytes]] = []
    net.taps.append(lambda src, peer, data: frames.append((src, data)))
    net.start_all()
    net.load(1.0, 300)
    net.run_for(0.5)
    net.restart(3)
    net.run_for(0.5)
    assert net.run_for(10, net.quiet) is not None
    return net, frames


def test_replaying_every_captured_frame_changes_nothing(captured):
    net, frames = captured
    before = snapshot(net)
    for src, data in frames:
        for n in net.alive():
            if n != src:
                net.inject(n, data, src)
    net.run_for(1.0)
    assert snapshot(net) == before
    assert sum(net.nodes[n].core.rejected["replayed"] + net.nodes[n].core.rejected["old epoch"]
               + net.nodes[n].core.rejected["outside window"] for n in net.ids) > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_forged_frames_never_change_caches(captured, data):
    net, frames = captured
    before = snapshot(net)
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
        f = decode_frame(frame, KEYS)
        h = f.header
        counter = h.counter if how == "resign" else h.counter + 10**9
        forged = encode_frame(OTHER_KEYS, h.sender, h.epoch, counter, h.type, f.body)
    target = data.draw(st.sampled_from([n for n in net.alive() if n != src]))
    actions = net.inject(target, forged, src)
    assert all(isinstance(a, FrameRejected) for a in actions)
    assert snapshot(net) == before


def test_an_idle_period_does_not_turn_the_next_loss_into_a_bulk_resync():
    """A live peer keeps holding our resend queue even when there was nothing to
    acknowledge for longer than peer_timeout_s (it is alive: its heartbeats arrive)."""
    net = SimNet([1, 2, 3], seed=12, peer_timeout_s=1.0)
    net.start_all()
    load(net, 1, 100)
    net.run_for(3.0)                       # idle for three peer timeouts
    net.loss = 0.5
    for _ in range(5):
        load(net, 1, 50)
        net.run_for(0.02)
    net.loss = 0.0
    assert net.run_for(3, net.converged, 0.01) is not None
    assert net.nodes[1].core.bulks == {"requested": 2}     # the two startup bulks only
    assert net.nodes[1].core.counters["frames resent"] > 0


def test_stats_say_what_happened():
    net = SimNet([1, 2], seed=13, loss=0.3, dup=0.1)
    net.start_all()
    net.run_for(0.5)
    load(net, 1, 500)
    net.run_for(0.05)
    net.inject(2, b"\x00" * 40, 1)
    assert net.run_for(5, net.converged, 0.01) is not None
    s1, s2 = net.nodes[1].core.stats(net.now), net.nodes[2].core.stats(net.now)
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
    assert s2["in_sync"] and s2["sync_reason"] == "bulk resync complete"


def test_restored_replay_marks_refuse_frames_captured_before_a_restart():
    from meshd.replay import ReplayGuard
    net = SimNet([1, 2], seed=14)
    frames: list[bytes] = []
    net.taps.append(lambda src, peer, data: frames.append(data) if src == 1 else None)
    net.start_all()
    load(net, 1, 20)
    net.run_for(0.3)
    marks = net.nodes[2].core.replay.snapshot()
    guard = ReplayGuard(window=4096)
    guard.restore(marks)
    core = SyncCore(2, [1], KEYS, net.nodes[2].epoch + 1, replay=guard)
    core.start(net.now)
    for f in frames:
        actions = core.receive(f, 1, net.now)
        assert [a.reason for a in actions] in (["replayed"], ["outside window"])
    assert dict(core.dump_external(1)) == {}


def _adoptable(net, n: int, origin: int) -> dict[bytes, bytes]:
    core = net.nodes[n].core
    return {k: a for b in range(256) for k, a in core.adoptable_bucket(origin, b)}


def test_only_the_state_from_before_a_takeover_is_adoptable():
    """A preempted master lives on: what it replicates after the takeover runs
    through it, not through the new master, and stays its own."""
    net = SimNet([1, 2], seed=7)
    net.start_all()
    load(net, 1, 50)
    net.run_for(0.5)
    before = dict(net.nodes[1].kernel)
    net.call(2, "adopt", 1)                          # node 2 took over from node 1, alive
    load(net, 1, 30)                                 # node 1's own flows, created later
    key, attrs = next(iter(before.items()))
    net.local(1, [(UPDATE, key, attrs + b"x")])      # and a flow updated where it runs
    net.run_for(0.5)
    assert len(dict(net.nodes[2].core.dump_external(1))) == 80
    adoptable = _adoptable(net, 2, 1)
    assert adoptable == {k: a for k, a in before.items() if k != key}
    net.restart(1)                                   # a new epoch: its bulk is newer than the takeover
    net.run_for(0.05)
    assert net.nodes[2].core.peers[1].epoch == net.nodes[1].epoch
    assert _adoptable(net, 2, 1) == {}
