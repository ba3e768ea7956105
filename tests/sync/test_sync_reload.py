"""What a configuration reload changes in a running state mesh (SyncCore's reload
methods), on the simulated network (tests/sync/simnet.py).

Each test names the rule; the lab test of the same (real daemons, live TCP
flows, a takeover) is tests/lab/test_reload_lab.py.
"""

from __future__ import annotations

import pytest
from simnet import KEYS, SECRET, SimNet

from meshd.crypto import SYNC_INFO, KeyRing
from meshd.sync import NEW, ExternalChanged, SendFrame, SyncCore
from meshd.sync.frames import FrameType, encode_frame, parse_header

NEW_SECRET = b"the rotated-in simulated secret!"


def ring(secrets: dict[int, bytes], send: int) -> KeyRing:
    return KeyRing.from_secrets(secrets, send, SYNC_INFO)


def load(net: SimNet, n: int, count: int) -> None:
    net.local(n, [(NEW, net.new_key(n), net.attrs()) for _ in range(count)])


def rejects(net: SimNet) -> list:
    return [(n, a.reason) for n in net.ids for _, a in net.nodes[n].rejects]


# ----------------------------------------------------------------- keys

def test_key_rotation_step_by_step_rejects_no_frame_and_never_repeats_a_nonce():
    """The documented procedure, one node after the other at each step, under
    load, loss and reordering: no frame is rejected at any step."""
    net = SimNet([1, 2], seed=21, loss=0.1, jitter=0.002)
    sealed: list[tuple[int, int, int, int]] = []        # (sender, epoch, counter, key id)

    def tap(src, peer, data):
        h = parse_header(data)
        sealed.append((h.sender, h.epoch, h.counter, h.key_id))
    net.taps.append(tap)
    net.start_all()
    net.load(4.0, 800)
    net.run_for(0.5)
    steps = [ring({1: SECRET, 2: NEW_SECRET}, 1),      # 1. add the new key everywhere
             ring({1: SECRET, 2: NEW_SECRET}, 2),      # 2. switch send_key everywhere
             ring({2: NEW_SECRET}, 2)]                 # 3. remove the old key everywhere
    switched_at = None
    for i, keys in enumerate(steps):
        for n in (1, 2):
            net.call(n, "set_keys", keys)
            net.run_for(0.3)
        if i == 1:
            switched_at = len(sealed)
        assert rejects(net) == [], f"after step {i + 1}: {rejects(net)}"
    net.run_for(3.0)
    assert net.run_for(10, net.converged, 0.05) is not None, net.differences()
    assert rejects(net) == []
    # Sealed under the new key once both had switched; every (sender, epoch, counter) once.
    assert {k for *_, k in sealed[switched_at:]} == {2}
    nonces = [(s, e, c) for s, e, c, _ in sealed]
    assert len(nonces) == len(set(nonces))
    for n in (1, 2):
        assert net.nodes[n].core.counters["key changes"] == 3


def test_a_removed_key_opens_nothing_even_if_it_opened_frames_before():
    """The opener caches one AESGCM per (key id, sender, epoch): a rotation must drop
    the entries of a key that is gone, or that key would go on opening frames."""
    net = SimNet([1, 2], seed=22)
    net.start_all()
    net.run_for(0.5)                         # node 2 has opened node 1's frames under key 1
    both = ring({1: SECRET, 2: NEW_SECRET}, 2)
    for n in (1, 2):
        net.call(n, "set_keys", both)
    net.run_for(0.2)
    for n in (1, 2):
        net.call(n, "set_keys", ring({2: NEW_SECRET}, 2))
    net.run_for(0.2)
    forged = encode_frame(KEYS, 1, net.nodes[1].epoch, 10**9, FrameType.HEARTBEAT, (0, (), 0))
    actions = net.inject(2, forged, 1)
    assert [a.reason for a in actions] == ["unknown key"]
    # A secret changed under the same key id: the old secret opens nothing either.
    net.call(2, "set_keys", ring({2: b"z" * 32}, 2))
    stale = encode_frame(ring({2: NEW_SECRET}, 2), 1, net.nodes[1].epoch, 10**9 + 1,
                         FrameType.HEARTBEAT, (0, (), 0))
    assert [a.reason for a in net.inject(2, stale, 1)] == ["bad tag"]


# ----------------------------------------------------------------- peers

def test_an_added_peer_gets_a_bulk_and_converges_and_nobody_is_demoted():
    net = SimNet([1, 2, 3], seed=23)
    net.start(1, peers=[2])
    net.start(2, peers=[1])
    load(net, 1, 400)
    load(net, 2, 300)
    net.run_for(0.5)
    assert net.in_sync(1) and net.in_sync(2)
    net.start(3)                             # knows 1 and 2; they do not know it yet
    load(net, 3, 200)
    net.run_for(0.1)
    assert {r for _, r in rejects(net)} == {"unknown sender"}    # its frames, before the reload
    before = {n: list(net.nodes[n].states) for n in (1, 2)}
    for n in (1, 2):
        net.call(n, "add_peer", 3)
    assert net.run_for(5, net.converged, 0.01) is not None, net.differences()
    assert dict(net.nodes[1].core.dump_external(3)) == net.nodes[3].kernel
    assert dict(net.nodes[3].core.dump_external(1)) == net.nodes[1].kernel
    assert net.in_sync(3)
    for n in (1, 2):
        # In sync all along: no "not in sync" (it would demote every group).
        assert net.nodes[n].states == before[n] and net.in_sync(n)
        events = [(e.peer, e.state) for _, e in net.nodes[n].peer_events]
        assert (3, "added") in events and (3, "first contact") in events
        assert net.nodes[n].core.bulks["requested"] >= 2         # its startup bulk, and node 3's
    with pytest.raises(ValueError):
        net.nodes[1].core.add_peer(3, net.now)


def test_a_removed_peer_is_forgotten_and_nothing_waits_on_it():
    net = SimNet([1, 2, 3], seed=24, peer_timeout_s=3.0)
    net.start_all()
    load(net, 3, 200)
    net.run_for(0.5)
    assert len(dict(net.nodes[1].core.dump_external(3))) == 200
    net.kill(3)
    # Node 1 asks everyone for a resync (as after an overrun of its own): without the
    # removal it would wait peer_timeout_s for node 3's bulk, not in sync meanwhile.
    net.call(1, "request_resync")
    load(net, 1, 100)                        # held for node 2 and node 3's acknowledgements
    net.run_for(0.2)
    assert not net.in_sync(1)
    core = net.nodes[1].core
    assert core.mcast.held_items > 0         # node 3 never acknowledges
    removed_at = net.now
    net.call(1, "remove_peer", 3)
    assert core.mcast.held_items == 0        # node 2 had acknowledged everything already
    at = net.run_for(1.0, lambda: net.in_sync(1), 0.01)
    assert at is not None and at - removed_at < 0.5, net.nodes[1].states[-1:]
    assert 3 not in core.peers
    with pytest.raises(KeyError):
        core.dump_external(3)
    assert not any(isinstance(a, SendFrame) and a.peer == 3
                   for a in core.handle_timer(net.now + 0.5))
    assert [(e.peer, e.state) for _, e in net.nodes[1].peer_events][-1] == (3, "removed")
    # Its frames are refused from now on; its replay mark stays for a later re-add.
    assert 3 in core.replay.streams


def test_removing_a_peer_keeps_a_node_in_sync():
    net = SimNet([1, 2, 3], seed=25)
    net.start_all()
    net.run_for(0.5)
    states = list(net.nodes[1].states)
    net.call(1, "remove_peer", 3)
    net.run_for(0.5)
    assert net.nodes[1].states == states and net.in_sync(1)


# ----------------------------------------------------------------- timers and commit mode

def test_timers_change_live():
    net = SimNet([1, 2], seed=26, heartbeat_s=0.25, peer_timeout_s=3.0)
    beats: list[float] = []
    net.taps.append(lambda src, peer, data: beats.append(net.now)
                    if src == 1 and peer is None and parse_header(data).type == FrameType.HEARTBEAT
                    else None)
    net.start_all()
    net.run_for(1.0)
    slow = len([t for t in beats if t > 0.0])
    net.call(1, "set_timers", 0.05, 5.0, 0.5)
    t0 = net.now
    net.run_for(1.0)
    fast = len([t for t in beats if t > t0])
    assert slow <= 6 and fast >= 18, (slow, fast)
    net.kill(2)
    killed = net.now
    assert net.run_for(2.0, lambda: any(e.state == "absent" for _, e in net.nodes[1].peer_events),
                       0.01) - killed < 0.7
    with pytest.raises(ValueError):
        net.nodes[1].core.set_timers(1.0, 5.0, 1.5, net.now)
    assert net.nodes[1].core.heartbeat_s == 0.05       # a refused change changes nothing


def test_switching_to_continuous_commit_reports_every_replicated_flow_first():
    """commit takeover -> continuous: the flows replicated so far reach the applier
    (and so the kernel) at once, then the changes that follow, in order."""
    net = SimNet([1, 2], seed=27)
    net.start_all()
    load(net, 1, 300)
    net.run_for(0.5)
    assert net.external_changes == []                  # takeover mode: nothing to apply
    actions = net.call(2, "set_report_external_changes", True)
    assert [type(a) for a in actions] == [ExternalChanged]
    net.load(0.5, 500, nodes=[1])
    net.run_for(0.6)
    assert net.run_for(5, net.converged, 0.01) is not None
    kernel: dict[bytes, bytes] = {}                    # node 2's kernel, rebuilt from what it applied
    for node, a in net.external_changes:
        if node == 2:
            for k, _ in a.deletes:
                kernel.pop(k, None)
            kernel.update(a.upserts)
    assert kernel == net.nodes[1].kernel
    assert net.call(2, "set_report_external_changes", True) == []    # already on
    net.call(2, "set_report_external_changes", False)
    count = len(net.external_changes)
    load(net, 1, 10)
    net.run_for(0.2)
    assert len(net.external_changes) == count


def test_a_stricter_filter_then_a_resync_removes_the_ignored_flows_at_the_peers():
    """The shell applies a new filter by dumping the table through it (local_resync):
    the flows it now ignores leave the internal cache and the peers' copies."""
    net = SimNet([1, 2], seed=28)
    net.start_all()
    load(net, 1, 100)
    net.run_for(0.3)
    ignored = set(list(net.nodes[1].kernel)[:40])
    kept = {k: a for k, a in net.nodes[1].kernel.items() if k not in ignored}
    net.call(1, "local_resync", kept)
    net.run_for(0.3)
    assert dict(net.nodes[1].core.dump_internal()) == kept
    assert dict(net.nodes[2].core.dump_external(1)) == kept


def test_add_peer_asks_it_for_a_bulk_at_once_and_set_timers_moves_deadlines_closer():
    core = SyncCore(1, [2], KEYS, 1, heartbeat_s=1.0, digest_interval_s=5.0)
    core.start(0.0)
    core.handle_timer(0.0)
    assert core.heartbeat_at == 1.0 and core.digest_at == 5.0
    core.set_timers(0.1, 1.0, 1.0, 0.5)
    assert core.heartbeat_at == pytest.approx(0.6) and core.digest_at == pytest.approx(1.5)
    actions = core.add_peer(3, 0.5)
    sent = [a for a in actions if isinstance(a, SendFrame)]
    assert [(a.peer, parse_header(a.data).type) for a in sent] == [(3, FrameType.RESYNC_REQUEST)]
    assert core.in_sync is False and core.round == {2: 1}     # the startup round, unchanged
