"""Convergence of the state mesh on the simulated cluster (tests/sim/cluster/).

The property: once the load stops and the network heals, every node's
external cache of origin X equals X's internal cache (which equals the flows
through X), for every X, within a bounded simulated time.  The bounds are
the targets of the issue: 20% loss within 5 s, 50% within 30 s (conntrackd
left 18 of 50k entries unreplicated after 120 s at 20% loss).  The tests use
a few thousand entries; tests/sync/bench_core.py measures 50k.

The nodes are whole NodeCores with commit = "takeover" (the state mesh alone:
their one group advertises once a minute and never takes over within a run);
a restart builds the internal cache from the kernel table before the node
starts, as the daemon does.  Every run is deterministic for its seed: loss,
delays (2 ms jitter, so frames reorder), duplication (5%) and the workload
all come from it.
"""

from __future__ import annotations

import random

import pytest
from cluster import Cluster, mesh
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.sync.actions import PeerChanged, SyncState

BOUND = {0.0: 1.0, 0.2: 5.0, 0.5: 30.0}
RESULTS: list[str] = []


def run(nodes: int, loss: float, seed: int, *, restarts=(), partition=None, duration=2.0,
        rate=1500.0, **sync_kw) -> tuple[Cluster, float | None]:
    """Load every node for `duration` s; restart / partition during it; return the time to
    converge after the load stopped and the network healed (None: not within the bound)."""
    ids = list(range(1, nodes + 1))
    c = Cluster(mesh(ids, commit="takeover", **sync_kw), seed=seed, loss=loss, delay=0.0005,
                jitter=0.002, dup=0.05, capture=False)
    c.start_all()
    c.run_for(0.3)
    t0 = c.now
    c.load(duration, rate, random.Random(seed), p_new=0.6, p_update=0.25)
    for at, n, reboot in restarts:
        c.at(t0 + at, c.restart, n, reboot)
    if partition:
        at, length, sides = partition
        c.at(t0 + at, c.partition, *sides)
        c.at(t0 + at + length, c.heal)
    c.run_until(t0 + duration)
    end = c.now
    at = c.run_for(BOUND[loss], c.converged, 0.05)
    return c, (None if at is None else at - end)


def sizes(c: Cluster) -> str:
    return "/".join(str(len(c.nodes[n].kernel.local)) for n in c.ids)


@pytest.mark.parametrize("loss", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("nodes", [2, 3])
def test_converges_under_loss_reordering_and_duplication(nodes, loss):
    c, took = run(nodes, loss, seed=100 + nodes)
    assert took is not None, f"not converged within {BOUND[loss]} s: {c.differences()}"
    RESULTS.append(f"{nodes} nodes, {loss:.0%} loss, entries {sizes(c)}: {took:.2f} s")
    assert all(c.in_sync(n) for n in c.ids)
    assert all(len(c.nodes[n].kernel.local) > 1000 for n in c.ids)


@pytest.mark.parametrize("loss", [0.0, 0.2, 0.5])
def test_converges_across_restarts_and_a_partition(loss):
    c, took = run(3, loss, seed=7, restarts=[(0.5, 2, False), (1.2, 3, True)],
                  partition=(0.8, 0.6, ({1}, {2, 3})))
    assert took is not None, f"not converged within {BOUND[loss]} s: {c.differences()}"
    RESULTS.append(f"3 nodes, {loss:.0%} loss, 2 restarts + partition, entries {sizes(c)}: "
                   f"{took:.2f} s")
    # Each restarted node said "not in sync" at its start, and "in sync" only later.
    for n in (2, 3):
        states = [(t, s.in_sync) for t, s in c.nodes[n].timed(SyncState)]
        restart_at = max(t for t, s in states if not s)
        assert any(s and t > restart_at for t, s in states), states
        assert c.in_sync(n)
    # Node 3 rebooted: its old flows are gone everywhere (no stale copies were kept).
    for n in (1, 2):
        assert dict(c.nodes[n].sync.dump_external(3)) == c.nodes[3].kernel.local


def test_a_small_resend_queue_degrades_to_bulk_and_still_converges():
    c, took = run(3, 0.2, seed=8, resend_queue=300, duration=1.5)
    assert took is not None, c.differences()
    overflows = sum(c.nodes[n].sync.counters["queue overflows"] for n in c.ids)
    bulks = sum(c.nodes[n].sync.bulks["resend queue overflow"] for n in c.ids)
    assert overflows > 0 and bulks > 0
    RESULTS.append(f"3 nodes, 20% loss, resend_queue 300 ({overflows} overflows, {bulks} bulks): "
                   f"{took:.2f} s")


def test_a_lossy_partition_longer_than_the_peer_timeout():
    """The peer is declared absent, our queue no longer waits for it; on return it
    asks for what it missed, which comes by bulk resync."""
    c, took = run(2, 0.2, seed=9, partition=(0.3, 1.2, ({1}, {2})), peer_timeout_ms=500)
    assert took is not None, c.differences()
    assert any(e.state == "absent" for e in c.nodes[1].of(PeerChanged))


@settings(max_examples=8, deadline=None)
@given(nodes=st.integers(2, 3), loss=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 10**6),
       restart=st.one_of(st.none(), st.tuples(st.floats(0.1, 1.0), st.booleans())),
       partition=st.one_of(st.none(), st.tuples(st.floats(0.1, 0.8), st.floats(0.05, 0.5))))
def test_random_scenarios_converge(nodes, loss, seed, restart, partition):
    restarts = [(restart[0], nodes, restart[1])] if restart else []
    part = (partition[0], partition[1], ({1}, set(range(2, nodes + 1)))) if partition else None
    c, took = run(nodes, loss, seed, restarts=restarts, partition=part, duration=1.0, rate=1000)
    assert took is not None, f"not converged within {BOUND[loss]} s: {c.differences()}"


def test_report(capsys):
    """Not a check: prints the convergence times measured above (pytest -s)."""
    with capsys.disabled():
        print("\nsync convergence after load stops (simulated seconds):")
        for line in RESULTS:
            print("  " + line)
