"""[sync] min_age_ms: flows held until they are old enough (node/young.py), alone and
in a simulated mesh (tests/sim/cluster/): a short flow costs no frame, a long one
arrives once it is old enough, with its latest state."""

from __future__ import annotations

import pytest
from cluster import Cluster, mesh

from meshd.node.young import YoungFlows
from meshd.sync.actions import DESTROY, NEW, UPDATE


def never(_key):
    return None


def test_a_flow_is_held_until_it_is_old_enough_then_goes_with_its_latest_state():
    y = YoungFlows(1.0)
    assert y.admit([(NEW, b"a", b"a1"), (NEW, b"b", b"b1")], never, 0.0) == []
    assert y.admit([(UPDATE, b"a", b"a2"), (NEW, b"c", b"c1")], never, 0.5) == []
    assert y.next_deadline() == 1.0
    assert y.due(0.99) == []
    assert y.due(1.0) == [(NEW, b"a", b"a2"), (NEW, b"b", b"b1")]     # oldest first, newest attrs
    assert y.next_deadline() == 1.5 and len(y) == 1
    assert y.due(2.0) == [(NEW, b"c", b"c1")] and y.next_deadline() is None
    assert y.stats() == {"min_age_ms": 1000, "held_now": 0, "held": 3, "changes held": 1, "released": 3}


def test_a_flow_that_ends_young_costs_nothing_and_an_old_one_passes_at_once():
    y = YoungFlows(3.0)
    y.admit([(NEW, b"short", b"s1")], never, 0.0)
    replicated = {b"old": b"o1"}.get
    out = y.admit([(DESTROY, b"short", None), (UPDATE, b"old", b"o2"), (DESTROY, b"old", None),
                   (DESTROY, b"unknown", None)], replicated, 1.0)
    assert out == [(UPDATE, b"old", b"o2"), (DESTROY, b"old", None), (DESTROY, b"unknown", None)]
    assert len(y) == 0 and y.counters["ended young"] == 1 and y.due(10.0) == []


def test_release_all_and_flows_gone_from_a_dump():
    y = YoungFlows(5.0)
    y.admit([(NEW, b"a", b"a1"), (NEW, b"b", b"b1")], never, 0.0)
    y.admit([(NEW, b"late", b"l1")], never, 2.0)
    # A dump started at 1.0 lacks "b": it ended unseen; "late" came after the dump began.
    assert y.forget_absent({b"a"}, before=1.0) == 1
    assert y.release_all() == [(NEW, b"a", b"a1"), (NEW, b"late", b"l1")] and len(y) == 0
    with pytest.raises(ValueError):
        YoungFlows(0)


def sim(min_age_ms: int, seed: int = 1) -> Cluster:
    c = Cluster(mesh([1, 2], commit="takeover", min_age_ms=min_age_ms), seed=seed, delay=0.0005,
                jitter=0.001)
    c.start_all()
    c.run_for(0.5)
    return c


@pytest.mark.parametrize("min_age_ms", [0, 1000])
def test_in_a_mesh_short_flows_cost_no_frame_and_long_ones_arrive_once_old(min_age_ms):
    c = sim(min_age_ms)
    records = c.nodes[1].sync.counters["records sent live"]
    short = c.create(1, 300)
    long = c.create(1, 200)
    c.run_for(0.4)
    c.destroy(1, short)                             # 0.4 s old: shorter than the threshold
    c.update(1, long[:50])
    c.run_for(0.3)
    peer = dict(c.nodes[2].sync.dump_external(1))
    if min_age_ms:
        assert not peer.keys() & set(long)          # not old enough yet: nothing sent
    else:
        assert set(long) <= peer.keys()
    c.run_for(1.0)
    peer = dict(c.nodes[2].sync.dump_external(1))
    assert peer == c.nodes[1].kernel.local          # the long ones, latest state; the short gone
    sent = c.nodes[1].sync.counters["records sent live"] - records
    if min_age_ms:
        assert sent == 200                          # one NEW per long flow, nothing else
        young = c.nodes[1].node.flows.young.stats()
        assert young["ended young"] == 300 and young["released"] == 200 and young["held_now"] == 0
    else:
        assert sent == 300 + 200 + 300 + 50         # NEW, DESTROY of the short, UPDATEs


def test_a_reload_that_turns_it_off_sends_what_was_held_at_once():
    c = sim(3000)
    keys = c.create(1, 100)
    c.run_for(0.2)
    assert not dict(c.nodes[2].sync.dump_external(1)).keys() & set(keys)
    c.reload(1, mesh([1, 2], commit="takeover")[1])
    c.run_for(0.2)
    assert set(keys) <= dict(c.nodes[2].sync.dump_external(1)).keys()
    assert c.nodes[1].node.flows.young is None
