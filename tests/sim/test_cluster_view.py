"""The cluster from one node (`meshctl cluster`, meshd/node/cluster.py) and
the split-brain rule, in the simulator: ABOUT frames over the state mesh,
adverts lost while frames still pass."""

from __future__ import annotations

from cluster import ADVERT
from cluster.scenarios import failover_cluster

from meshd.election.actions import State
from meshd.metrics.collector import families
from meshd.metrics.snapshot import take
from meshd.node.actions import SplitBrain
from meshd.node.cluster import SPLIT_BRAIN_CONFIRM_S


def _drop_adverts(c) -> None:
    """Adverts lost between the nodes, frames still delivered (a group VLAN cut,
    the sync link alive): both nodes become master of every group."""
    arrive = c.network._arrive
    c.network._arrive = lambda dst, dg: None if dg.kind is ADVERT else arrive(dst, dg)
    c._restore_arrive = arrive


def test_each_node_lists_the_other_with_its_groups_version_and_settings():
    c = failover_cluster(3, nodes=2)
    c.run_for(5.0)
    view = c.nodes[1].node.cluster(c.now)
    assert view["node"]["id"] == 1 and [g["state"] for g in view["node"]["groups"]] == ["MASTER", "BACKUP"]
    (peer,) = view["nodes"]
    assert peer["id"] == 2 and peer["name"] == "node2" and peer["version"]
    assert [(g["name"], g["state"]) for g in peer["groups"]] == [("g1", "BACKUP"), ("g2", "MASTER")]
    assert set(peer["adverts"]) == {"g2"}                 # a backup sends no adverts
    assert peer["sync"]["absent"] is False and peer["sync"]["last_frame_ago_s"] < 1.0
    assert peer["settings"] == {"agree": True, "complete": True, "differences": []}
    assert view["split_brain"] == {} and view["masters"] == {"g1": [1], "g2": [2]}


def test_two_masters_of_a_group_are_a_split_brain_on_both_nodes_until_it_heals():
    c = failover_cluster(4, nodes=2)
    c.run_for(3.0)
    _drop_adverts(c)
    t_cut = c.now
    c.run_for(8.0)
    for n in (1, 2):
        sim = c.nodes[n]
        assert all(g.state is State.MASTER for g in sim.election.groups.values())
        on = [(t, a) for t, a in sim.timed(SplitBrain, t_cut) if a.on]
        assert sorted(a.group for _, a in on) == ["g1", "g2"], on
        assert all(a.nodes == (1, 2) for _, a in on)
        # Confirmed only once it held: not at the first ABOUT after the cut.
        assert all(t - t_cut >= SPLIT_BRAIN_CONFIRM_S for t, _ in on)
        view = sim.node.cluster(c.now)
        assert view["split_brain"] == {"g1": [1, 2], "g2": [1, 2]} and view["split_brains_seen"] == 2
        exported = {m.name: m for m in families(take(sim.node, c.now, node_name="n", version="v"))}
        assert {x.labels["group"]: x.value for x in exported["meshd_group_split_brain"].samples} == \
            {"g1": 1, "g2": 1}
        assert exported["meshd_split_brains"].samples[0].value == 2
    c.network._arrive = c._restore_arrive
    t_heal = c.now
    c.run_for(6.0)
    for n in (1, 2):
        off = [a for a in c.nodes[n].of(SplitBrain, t_heal) if not a.on]
        assert sorted(a.group for a in off) == ["g1", "g2"]
        assert c.nodes[n].node.cluster(c.now)["split_brain"] == {}


def test_a_failover_is_not_a_split_brain():
    """Preemption and takeover have two masters for an advert interval or so:
    never reported."""
    c = failover_cluster(5, nodes=2)
    c.run_for(3.0)
    c.kill(1)
    c.run_for(3.0)
    c.start(1)
    c.run_for(8.0)
    assert c.nodes[1].election.groups["g1"].state is State.MASTER     # preempted back
    for n in (1, 2):
        assert c.nodes[n].of(SplitBrain) == []


def test_a_setting_that_differs_is_named_in_words():
    c = failover_cluster(6, nodes=2, heartbeat_ms=200)
    text = c.nodes[2].text.replace("[sync]", "[sync.filter]\nonly_assured = true\n\n[sync]", 1) \
        if "[sync.filter]" not in c.nodes[2].text else c.nodes[2].text
    c.reload(2, text)
    c.run_for(4.0)
    view = c.nodes[1].node.cluster(c.now)
    (peer,) = view["nodes"]
    assert peer["settings"]["agree"] is False
    assert "sync.filter.only_assured: false here, true on node2" in peer["settings"]["differences"]
