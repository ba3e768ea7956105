"""A bulk resync that cannot hang a node (proto/sync.md, 7.4), on the simulated cluster.

A node that restarts is demoted ("not in sync") until every peer's bulk has
arrived.  A peer that talks but never finishes its bulk (stalled, or so slow
that it never ends) must not keep it demoted for ever: each attempt has a
deadline sized from the size the peer announces (BULK_INFO), a missed
deadline asks again with a new request, and after `bulk_attempts` the peer
is declared out of sync, loudly, and the node is in sync with the others.
"""

from __future__ import annotations

import random

from cluster import Cluster, mesh

from meshd.config import ALL_GROUPS
from meshd.sync.actions import PeerChanged, SyncState
from meshd.sync.bulk import BULK_SLACK

TIMEOUT_MS = 2000
ATTEMPTS = 3


def cluster(seed: int, entries: int, loss: float = 0.0, **kw) -> Cluster:
    c = Cluster(mesh([1, 2], commit="takeover", bulk_timeout_ms=TIMEOUT_MS, bulk_attempts=ATTEMPTS,
                     **kw), seed=seed, loss=loss, delay=0.0005, jitter=0.002)
    c.start_all()
    c.run_for(0.3)
    c.create(2, entries)
    assert c.run_for(10, c.converged, 0.05) is not None, c.differences()
    return c


def stall(core) -> None:
    """Node 2 answers a bulk request with BULK_BEGIN and BULK_INFO, then sends no bucket."""
    for name in ("receive", "handle_timer"):
        real = getattr(core, name)

        def stalled(*args, _real=real):
            out = _real(*args)
            for p in core.peers.values():
                p.repairs.clear()
            return out
        setattr(core, name, stalled)


def sync_demotion(c: Cluster, n: int) -> int:
    return c.nodes[n].election.demotions.get(ALL_GROUPS, {}).get("sync", 0)


def test_a_stalled_bulk_is_retried_then_its_peer_declared_out_of_sync_and_the_demotion_ends():
    c = cluster(seed=1, entries=2000)
    stall(c.nodes[2].sync)
    c.restart(1)
    restarted = c.now
    c.run_for(0.5)
    assert sync_demotion(c, 1) > 0 and not c.in_sync(1)
    # Progress is visible while it waits: the peer's BULK_INFO sized the deadline.
    waiting = c.nodes[1].sync.stats(c.now)["peers"][2]["in"]["bulk"]["waiting"]
    assert waiting["attempt"] == 1 and waiting["attempts"] == ATTEMPTS
    assert waiting["entries_announced"] == 2000 and waiting["buckets_done"] < 256
    span = TIMEOUT_MS / 1000 + BULK_SLACK * 2000 / c.nodes[1].sync.bulk_rate
    assert abs(waiting["deadline_in_s"] - (span - waiting["elapsed_s"])) < 0.01

    bound = ATTEMPTS * span + 1.0
    assert c.run_for(bound, lambda: c.in_sync(1), 0.05) is not None, \
        f"still not in sync {bound} s after the restart: {c.nodes[1].sync.sync_reason}"
    took = c.now - restarted
    assert took >= ATTEMPTS * span - 0.5            # each attempt had its whole deadline
    assert sync_demotion(c, 1) == 0
    changes = [(a.state, a.reason) for a in c.nodes[1].of(PeerChanged, since=restarted) if a.peer == 2]
    retries = [r for s, r in changes if s == "bulk retry"]
    assert len(retries) == ATTEMPTS - 1 and "attempt 3 of 3" in retries[-1], changes
    (given_up,) = [r for s, r in changes if s == "out of sync"]
    assert "did not complete in 3 attempts" in given_up and "2000 announced" in given_up
    final = c.nodes[1].of(SyncState)[-1]
    assert final.in_sync and "out of sync" in final.reason and "peers 2" in final.reason
    summary = c.nodes[1].sync.stats(c.now)["peers"][2]
    assert summary["in"]["bulk"]["out_of_sync"] == given_up and summary["in"]["bulk"]["waiting"] is None
    assert summary["counters"]["bulk deadlines missed"] == ATTEMPTS
    # Every attempt was a new request (the peer starts over on each).
    assert c.nodes[1].sync.peers[2].req_id >= ATTEMPTS

    # Once node 2 works again, an operator resync brings it back in sync.
    c.restart(2)                                   # its daemon restarts: a healthy core
    assert c.run_for(10, lambda: c.nodes[1].sync.peers[2].out_of_sync is None, 0.05) is not None
    assert any(a.state == "in sync" for a in c.nodes[1].of(PeerChanged, since=restarted) if a.peer == 2)
    assert c.run_for(10, c.converged, 0.05) is not None, c.differences()


def test_a_bulk_that_never_ends_at_its_pace_is_given_up_too():
    """The peer sends, but at 50 entries/s its 2000 entries take 40 s: far more than
    it announced room for; every attempt starts over, and none ends."""
    c = cluster(seed=2, entries=2000)
    c.nodes[2].sync.bulk_rate = 50.0
    c.restart(1)
    restarted = c.now
    span = TIMEOUT_MS / 1000 + BULK_SLACK * 2000 / c.nodes[1].sync.bulk_rate
    assert c.run_for(ATTEMPTS * span + 1.0, lambda: c.in_sync(1), 0.05) is not None
    core = c.nodes[1].sync
    assert core.peers[2].out_of_sync is not None
    assert core.peers[2].stats["bulk resyncs received"] >= ATTEMPTS   # it did send, every time
    assert "out of sync" in core.sync_reason


def test_a_healthy_bulk_under_loss_completes_in_its_first_attempt():
    """The deadline is not the bottleneck: 20,000 entries at 20% loss."""
    c = cluster(seed=3, entries=20000, loss=0.2)
    c.restart(1)
    restarted = c.now
    assert c.run_for(TIMEOUT_MS / 1000, lambda: c.in_sync(1), 0.05) is not None
    core = c.nodes[1].sync
    assert core.sync_reason == "bulk resync complete"
    assert core.peers[2].out_of_sync is None and core.counters["bulk deadlines missed"] == 0
    assert not [a for a in c.nodes[1].of(PeerChanged, since=restarted) if a.state == "bulk retry"]
    assert c.now - restarted < TIMEOUT_MS / 1000
