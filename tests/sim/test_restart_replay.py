"""Frames captured before a node restarted are refused after it (issue 11).

The finding: a node restarts with the replay marks it saved 10 s before it
crashed (the daemon saves them periodically); the frames its peer sent in
those 10 s, captured and replayed after the restart, were all accepted again
and re-created flows the origin had already closed.  With the proof of
liveness (proto/sync.md, section 3.1) a restarted node accepts a peer's
frames only from the first heartbeat that echoes its new boot id: whatever
its marks, nothing sealed before its start gets in, and it still resyncs at
once by bulk.
"""

from __future__ import annotations

import pytest
from cluster import FRAME, Cluster, mesh

from meshd.sync.actions import FrameRejected, SendFrame


def _crash_with_old_marks(c: Cluster, n: int, marks: dict | None) -> None:
    """Node n crashes; on disk are `marks` (None: the state_dir was lost)."""
    c.kill(n)
    c.nodes[n].sync_marks = {} if marks is None else marks
    c.nodes[n].election_marks = {}
    c.start(n, restore_replay=True)


@pytest.mark.parametrize("marks_age", ["saved 10 s before the crash", "lost"])
def test_frames_captured_before_a_restart_are_refused_after_it(marks_age):
    c = Cluster(mesh([1, 2], commit="takeover"), seed=3)
    c.start_all()
    c.create(1, 40)
    c.run_for(1.0)
    saved = c.nodes[2].sync.replay.snapshot()      # the periodic save, 10 s before the crash
    since = c.now
    keys = c.create(1, 60)
    c.run_for(4.0)
    c.destroy(1, keys[:43])                        # flows the origin closes before the crash
    c.run_for(6.0)
    captured = [d for d in c.captured if d.src == 1 and d.kind is FRAME and d.time >= since]
    assert len(captured) > 50
    assert dict(c.nodes[2].sync.dump_external(1)) == dict(c.nodes[1].sync.dump_internal())

    _crash_with_old_marks(c, 2, saved if marks_age != "lost" else None)
    core = c.nodes[2].sync
    accepted = []
    for dg in captured:                            # before any frame of node 1 reaches it
        received, rejected = sum(core.frames_received.values()), sum(core.rejected.values())
        actions = c.replay(2, dg)
        # Refused: counted as a reject, never handled; at most, the first one
        # teaches node 2 the boot id its heartbeat echoes (no FrameRejected:
        # "unproven" is counted, not reported).
        if sum(core.frames_received.values()) != received or sum(core.rejected.values()) != rejected + 1 \
                or any(not isinstance(a, (FrameRejected, SendFrame)) for a in actions):
            accepted.append(dg)
    assert not accepted, f"{len(accepted)} of {len(captured)} captured frames accepted"
    assert core.frames_received == {}
    assert dict(c.nodes[2].sync.dump_external(1)) == {}

    # And the restarted node still resyncs at once, with none of the closed flows.
    assert c.run_for(1.0, lambda: c.in_sync(2)) is not None
    ext = dict(c.nodes[2].sync.dump_external(1))
    assert ext == dict(c.nodes[1].sync.dump_internal())
    assert not set(keys[:43]) & set(ext)


def test_frames_of_a_peers_earlier_start_are_refused_after_it_restarted():
    """The echo proves "sealed after my start", not "after the peer's latest
    start": a capture of the peer's earlier start (its proof included) must
    not take the place of the start running now."""
    c = Cluster(mesh([1, 2], commit="takeover"), seed=4)
    c.start_all()
    c.run_for(0.5)
    since = c.now
    keys = c.create(1, 30)
    c.run_for(0.5)
    c.destroy(1, keys[:10])
    c.run_for(0.5)
    old_start = [d for d in c.captured if d.src == 1 and d.kind is FRAME]
    c.restart(1)                                   # node 1's daemon restarts, its kernel keeps the flows
    core = c.nodes[2].sync
    assert c.run_for(1.0, lambda: core.peers[1].session[0] == c.nodes[1].epoch and c.converged()) \
        is not None
    proven = core.peers[1].session
    received = sum(core.frames_received.values())
    for dg in old_start:
        c.replay(2, dg)
    assert core.peers[1].session == proven
    assert sum(core.frames_received.values()) == received
    assert [d for d in old_start if d.time >= since]
    assert dict(core.dump_external(1)) == dict(c.nodes[1].sync.dump_internal())
