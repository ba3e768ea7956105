"""What a configuration reload changes in a running state mesh, on the simulated
cluster (tests/sim/cluster/): each node reloads a new file as the daemon does
(meshd/reload.py plans it, NodeCore.reconfigure calls SyncCore's reload methods).

Each test names the rule; the lab test of the same (real daemons, live TCP
flows, a takeover) is tests/lab/test_reload_lab.py.
"""

from __future__ import annotations

import random

import pytest
from cluster import FRAME, SECRET, SYNC_KEYS, Cluster, mesh, node, quiet_group, sync

from meshd.crypto import SYNC_INFO, KeyRing
from meshd.sync import (
    ExternalChanged,
    FrameRejected,
    PeerChanged,
    SendFrame,
    SyncCore,
    SyncState,
)
from meshd.sync.frames import FrameType, encode_frame, parse_header

NEW_SECRET = b"the rotated-in simulated secret!"


def ring(secrets: dict[int, bytes], send: int) -> KeyRing:
    return KeyRing.from_secrets(secrets, send, SYNC_INFO)


def text(n: int, ids, keys=(1,), send_key=None, **sync_kw) -> str:
    """Node n's file: the quiet group, the state mesh of `ids`, these cluster keys."""
    sync_kw.setdefault("commit", "takeover")
    return node(n, [quiet_group()], sync=sync(n, ids, **sync_kw), keys=keys, send_key=send_key)


def rejects(c: Cluster) -> list:
    return [(n, a.reason) for n in c.ids for a in c.nodes[n].of(FrameRejected)]


# ----------------------------------------------------------------- keys

def test_key_rotation_step_by_step_rejects_no_frame_and_never_repeats_a_nonce():
    """The documented procedure, one node after the other at each step, under
    load, loss and reordering: no frame is rejected at any step."""
    c = Cluster(mesh([1, 2], commit="takeover"), seed=21, loss=0.1, jitter=0.002)
    sealed: list[tuple[int, int, int, int]] = []        # (sender, epoch, counter, key id)

    def tap(dg):
        if dg.kind is FRAME:
            h = parse_header(dg.data)
            sealed.append((h.sender, h.epoch, h.counter, h.key_id))
    c.taps.append(tap)
    c.start_all()
    c.load(4.0, 800, random.Random(21))
    c.run_for(0.5)
    both = {1: SECRET, 2: NEW_SECRET}
    steps = [({"keys": (1, 2), "send_key": 1}, both),       # 1. add the new key everywhere
             ({"keys": (1, 2), "send_key": 2}, both),       # 2. switch send_key everywhere
             ({"keys": (2,), "send_key": 2}, {2: NEW_SECRET})]  # 3. remove the old key everywhere
    switched_at = None
    for i, (keys, secrets) in enumerate(steps):
        for n in (1, 2):
            c.reload(n, text(n, [1, 2], **keys), secrets)
            c.run_for(0.3)
        if i == 1:
            switched_at = len(sealed)
        assert rejects(c) == [], f"after step {i + 1}: {rejects(c)}"
    c.run_for(3.0)
    assert c.run_for(10, c.converged, 0.05) is not None, c.differences()
    assert rejects(c) == []
    # Sealed under the new key once both had switched; every (sender, epoch, counter) once.
    assert {k for *_, k in sealed[switched_at:]} == {2}
    nonces = [(s, e, n) for s, e, n, _ in sealed]
    assert len(nonces) == len(set(nonces))
    for n in (1, 2):
        assert c.nodes[n].sync.counters["key changes"] == 3


def test_a_removed_key_opens_nothing_even_if_it_opened_frames_before():
    """The opener caches one AESGCM per (key id, sender, epoch): a rotation must drop
    the entries of a key that is gone, or that key would go on opening frames."""
    c = Cluster(mesh([1, 2], commit="takeover"), seed=22)
    c.start_all()
    c.run_for(0.5)                           # node 2 has opened node 1's frames under key 1
    for n in (1, 2):
        c.reload(n, text(n, [1, 2], keys=(1, 2), send_key=2), {1: SECRET, 2: NEW_SECRET})
    c.run_for(0.2)
    for n in (1, 2):
        c.reload(n, text(n, [1, 2], keys=(2,), send_key=2), {2: NEW_SECRET})
    c.run_for(0.2)
    forged = encode_frame(SYNC_KEYS, 1, c.nodes[1].epoch, 10**9, FrameType.HEARTBEAT, (0, (), 0))
    actions = c.inject_frame(2, forged, 1)
    assert [a.reason for a in actions] == ["unknown key"]
    # A secret changed under the same key id: the old secret opens nothing either.
    c.reload(2, text(2, [1, 2], keys=(2,), send_key=2), {2: b"z" * 32})
    stale = encode_frame(ring({2: NEW_SECRET}, 2), 1, c.nodes[1].epoch, 10**9 + 1,
                         FrameType.HEARTBEAT, (0, (), 0))
    assert [a.reason for a in c.inject_frame(2, stale, 1)] == ["bad tag"]


# ----------------------------------------------------------------- peers

def test_an_added_peer_gets_a_bulk_and_converges_and_nobody_is_demoted():
    c = Cluster(mesh([1, 2, 3], peers={1: [1, 2], 2: [1, 2]}, commit="takeover"), seed=23)
    c.start(1)
    c.start(2)
    c.create(1, 400)
    c.create(2, 300)
    c.run_for(0.5)
    assert c.in_sync(1) and c.in_sync(2)
    c.start(3)                               # knows 1 and 2; they do not know it yet
    c.create(3, 200)
    c.run_for(0.1)
    assert {r for _, r in rejects(c)} == {"unknown sender"}    # its frames, before the reload
    before = {n: c.nodes[n].of(SyncState) for n in (1, 2)}
    for n in (1, 2):
        c.reload(n, text(n, [1, 2, 3]))
    assert c.run_for(5, c.converged, 0.01) is not None, c.differences()
    assert dict(c.nodes[1].sync.dump_external(3)) == c.nodes[3].kernel.local
    assert dict(c.nodes[3].sync.dump_external(1)) == c.nodes[1].kernel.local
    assert c.in_sync(3)
    for n in (1, 2):
        # In sync all along: no "not in sync" (it would demote every group).
        assert c.nodes[n].of(SyncState) == before[n] and c.in_sync(n)
        events = [(e.peer, e.state) for e in c.nodes[n].of(PeerChanged)]
        assert (3, "added") in events and (3, "first contact") in events
        assert c.nodes[n].sync.bulks["requested"] >= 2         # its startup bulk, and node 3's
    with pytest.raises(ValueError):
        c.nodes[1].sync.add_peer(3, c.now)


def test_a_removed_peer_is_forgotten_and_nothing_waits_on_it():
    c = Cluster(mesh([1, 2, 3], commit="takeover", peer_timeout_ms=3000), seed=24)
    c.start_all()
    c.create(3, 200)
    c.run_for(0.5)
    assert len(dict(c.nodes[1].sync.dump_external(3))) == 200
    c.kill(3)
    # Node 1 asks everyone for a resync (as after an overrun of its own): without the
    # removal it would wait the peer timeout for node 3's bulk, not in sync meanwhile.
    c.call(1, "resync_request")
    c.create(1, 100)                         # held for node 2 and node 3's acknowledgements
    c.run_for(0.2)
    assert not c.in_sync(1)
    core = c.nodes[1].sync
    assert core.mcast.held_items > 0         # node 3 never acknowledges
    removed_at = c.now
    c.reload(1, text(1, [1, 2], peer_timeout_ms=3000))
    assert core.mcast.held_items == 0        # node 2 had acknowledged everything already
    at = c.run_for(1.0, lambda: c.in_sync(1), 0.01)
    assert at is not None and at - removed_at < 0.5, c.nodes[1].of(SyncState)[-1:]
    assert 3 not in core.peers
    with pytest.raises(KeyError):
        core.dump_external(3)
    assert not any(isinstance(a, SendFrame) and a.peer == 3
                   for a in core.handle_timer(c.now + 0.5))
    assert [(e.peer, e.state) for e in c.nodes[1].of(PeerChanged)][-1] == (3, "removed")
    # Its frames are refused from now on; its replay mark stays for a later re-add.
    assert 3 in core.replay.streams


def test_removing_a_peer_keeps_a_node_in_sync():
    c = Cluster(mesh([1, 2, 3], commit="takeover"), seed=25)
    c.start_all()
    c.run_for(0.5)
    states = c.nodes[1].of(SyncState)
    c.reload(1, text(1, [1, 2]))
    c.run_for(0.5)
    assert c.nodes[1].of(SyncState) == states and c.in_sync(1)


# ----------------------------------------------------------------- timers and commit mode

def test_timers_change_live():
    c = Cluster(mesh([1, 2], commit="takeover", peer_timeout_ms=3000), seed=26)
    beats: list[float] = []
    c.taps.append(lambda dg: beats.append(c.now)
                  if dg.src == 1 and dg.kind is FRAME and dg.peer is None
                  and parse_header(dg.data).type == FrameType.HEARTBEAT else None)
    c.start_all()
    c.run_for(1.0)
    slow = len([t for t in beats if t > 0.0])
    c.reload(1, text(1, [1, 2], heartbeat_ms=50, digest_interval_ms=5000, peer_timeout_ms=500))
    t0 = c.now
    c.run_for(1.0)
    fast = len([t for t in beats if t > t0])
    assert slow <= 6 and fast >= 18, (slow, fast)
    c.kill(2)
    killed = c.now
    assert c.run_for(2.0, lambda: any(e.state == "absent" for e in c.nodes[1].of(PeerChanged)),
                     0.01) - killed < 0.7
    with pytest.raises(ValueError):
        c.nodes[1].sync.set_timers(1.0, 5.0, 1.5, c.now)
    assert c.nodes[1].sync.heartbeat_s == 0.05       # a refused change changes nothing


def test_switching_to_continuous_commit_puts_every_replicated_flow_into_the_kernel_first():
    """commit takeover -> continuous: the flows replicated so far reach the applier
    (and so the kernel) at once, then the changes that follow, in order."""
    c = Cluster(mesh([1, 2], commit="takeover"), seed=27)
    c.start_all()
    c.create(1, 300)
    c.run_for(0.5)
    assert c.nodes[2].of(ExternalChanged) == []        # takeover mode: nothing to apply
    actions = c.reload(2, text(2, [1, 2], commit="continuous"))
    assert [type(a) for a in actions] == [ExternalChanged]
    c.load(0.5, 500, random.Random(27), nodes=[1])
    c.run_for(0.6)
    assert c.run_for(5, c.converged, 0.01) is not None
    assert c.nodes[2].kernel.table == c.nodes[1].kernel.local     # node 2 has no flows of its own
    assert c.nodes[2].sync.set_report_external_changes(True, c.now) == []    # already on
    c.reload(2, text(2, [1, 2], commit="takeover"))
    count = len(c.nodes[2].of(ExternalChanged))
    c.create(1, 10)
    c.run_for(0.2)
    assert len(c.nodes[2].of(ExternalChanged)) == count


def test_a_stricter_filter_removes_the_ignored_flows_at_the_peers():
    """A new filter is applied by dumping the table through it: the flows it now
    ignores leave the internal cache and the peers' copies."""
    c = Cluster(mesh([1, 2], commit="takeover"), seed=28)
    c.start_all()
    keys = c.create(1, 100)
    c.run_for(0.3)
    tuples = c.flows.tuples
    ignored = [".".join(map(str, tuples[k].src)) for k in keys[:40]]
    kept = {k: a for k, a in c.nodes[1].kernel.local.items() if k not in keys[:40]}
    c.reload(1, text(1, [1, 2], filter={"ignore_addresses": ignored}))
    c.run_for(0.3)
    assert dict(c.nodes[1].sync.dump_internal()) == kept
    assert dict(c.nodes[2].sync.dump_external(1)) == kept


def test_add_peer_asks_it_for_a_bulk_at_once_and_set_timers_moves_deadlines_closer():
    core = SyncCore(1, [2], SYNC_KEYS, 1, heartbeat_s=1.0, digest_interval_s=5.0)
    core.start(0.0)
    core.handle_timer(0.0)
    assert core.heartbeat_at == 1.0 and core.digest_at == 5.0
    core.set_timers(0.1, 1.0, 1.0, 0.5)
    assert core.heartbeat_at == pytest.approx(0.6) and core.digest_at == pytest.approx(1.5)
    actions = core.add_peer(3, 0.5)
    sent = [a for a in actions if isinstance(a, SendFrame)]
    assert [(a.peer, parse_header(a.data).type) for a in sent] == [(3, FrameType.RESYNC_REQUEST)]
    assert core.in_sync is False and core.round == {2: 1}     # the startup round, unchanged
