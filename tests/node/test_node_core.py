"""NodeCore's rules between the engines, on one node, with no network.

The whole-cluster properties are in tests/sim/; here each rule is checked
where it lives: the failover ordering (held actions), one commit at a time,
the skip for a second group of a sync set, the sync and health demotions,
tracks, the dump after the peers' bulk, the resync that holds events back,
which peer changes reach the kernel, and adoption after the addresses.
"""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from meshd.config import parse_config
from meshd.election.actions import (AddAddresses, Announce, PrepareTakeover, RunNotify, SendAdvert,
                                    State)
from meshd.kernel.ctnetlink import CtEvent
from meshd.node.actions import CommitFlows, DumpKernel, FlowsAdopted, KernelResynced, TakeoverSkipped, WaitApplied
from meshd.node.core import HEALTH_DEMOTION, SYNC_DEMOTION, NodeCore
from meshd.node.takeover import ADOPT_DELAY
from meshd.sync.actions import ExternalChanged, SyncState

BASE = """\
[node]
id = 1

[cluster]
keys = [{{ id = 1, secret_file = "k.key" }}]

[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24"]
sync_set = "fw"

[[group]]
id = 2
name = "srv"
interface = "eth1"
addresses = ["198.51.100.1/24"]
sync_set = "fw"

[[track_interface]]
interface = "eth2"
weight = 30
{extra}
"""
SYNC = """
[sync]
peers = [{{ id = 2, address = "203.0.113.2" }}]
commit = "{commit}"
"""


def config(commit: str | None = "takeover", extra: str = ""):
    text = BASE.format(extra=extra + (SYNC.format(commit=commit) if commit else ""))
    cfg = parse_config(tomllib.loads(text.replace("{{", "{").replace("}}", "}")), "meshd.toml",
                       read_secrets=False)
    return dataclasses.replace(cfg, secrets={1: b"s" * 32})


def types(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def started(commit: str | None = "takeover", **kw) -> NodeCore:
    node = NodeCore(config(commit, **kw), epoch=7)
    node.start(0.0)
    return node


def master_down(node: NodeCore, now: float = 10.0) -> list:
    """Both groups' master-down timers expire: they become MASTER."""
    return node.handle_timer(now)


def in_sync(node: NodeCore, now: float = 1.0) -> list:
    out: list = []
    node._route([SyncState(True, "bulk resync complete")], now)
    return out + node._flush()


def _groups(actions, group: str) -> list[str]:
    """The kinds of `group`'s actions in order, repeats (advert copies) folded."""
    kinds: list[str] = []
    for a in actions:
        if getattr(a, "group", None) == group and (not kinds or kinds[-1] != type(a).__name__):
            kinds.append(type(a).__name__)
    return kinds


def test_addresses_wait_for_the_commit_and_one_commit_runs_at_a_time():
    node = started("takeover")
    node.sync.peers[2].ext.apply(((b"k1", b"flow 1"),), 3, False)
    out = master_down(node)
    commits = [a for a in out if isinstance(a, CommitFlows)]
    assert [c.group for c in commits] == ["lan"] and commits[0].entries == (b"flow 1",)
    # Nothing of either group that must follow its commit went out.
    assert not [a for a in out if isinstance(a, (AddAddresses, Announce, SendAdvert, RunNotify))]
    assert node.election.groups["lan"].state is State.MASTER
    released = node.takeover_committed("lan", 10.1)
    assert _groups(released, "lan") == ["AddAddresses", "Announce", "SendAdvert", "RunNotify", "SendAdvert"]
    # srv's commit starts only now, and its actions still wait for it.
    assert _groups(released, "srv") == ["CommitFlows"]
    assert _groups(node.takeover_committed("srv", 10.2), "srv") == \
        ["AddAddresses", "Announce", "SendAdvert", "RunNotify", "SendAdvert"]


def test_the_second_group_of_a_sync_set_skips_the_commit_of_the_same_origin():
    node = started("takeover")
    group = node.election.groups
    lan, srv = group["lan"].config, group["srv"].config
    node._route([PrepareTakeover("lan", 2), AddAddresses("lan", lan.interface, lan.addresses),
                 PrepareTakeover("srv", 2), AddAddresses("srv", srv.interface, srv.addresses)], 10.0)
    first = node._flush()
    assert types(first) == ["CommitFlows"]
    released = node.takeover_committed("lan", 10.1)
    assert types(released) == ["AddAddresses", "TakeoverSkipped", "AddAddresses"]
    assert released[1] == TakeoverSkipped("srv", 2, "already committed for another group")


def test_actions_that_come_during_the_commit_wait_behind_it():
    def adverts(actions):
        return sum(1 for a in actions if isinstance(a, SendAdvert) and a.group == "lan")

    quiet = started("takeover")
    master_down(quiet)
    baseline = adverts(quiet.takeover_committed("lan", 11.0))
    node = started("takeover")
    master_down(node)
    later = node.handle_timer(10.0 + node.election.groups["lan"].interval)   # an advert is due
    assert adverts(later) == 0
    released = node.takeover_committed("lan", 11.0)
    assert adverts(released) == baseline + node.config.group("lan").advert_copies
    assert _groups(released, "lan")[:2] == ["AddAddresses", "Announce"]


def test_continuous_mode_waits_for_the_applier_instead():
    node = started("continuous")
    out = master_down(node)
    assert [a for a in out if isinstance(a, WaitApplied)] == [WaitApplied("lan", 1.0)]
    with pytest.raises(ValueError):
        node.takeover_committed("srv", 10.1)        # srv's commit is not the one in flight


def test_without_a_state_mesh_nothing_waits():
    node = started(None)
    out = master_down(node)
    assert not [a for a in out if isinstance(a, (PrepareTakeover, CommitFlows, WaitApplied))]
    assert [a.group for a in out if isinstance(a, AddAddresses)] == ["lan", "srv"]


def test_not_in_sync_demotes_every_group_until_it_is():
    node = started("takeover")
    assert node.election.counter_value("all") == SYNC_DEMOTION
    in_sync(node)
    assert node.election.counter_value("all") == 0 and node.in_sync is True
    node._route([SyncState(False, "operator resync")], 2.0)
    node._flush()
    assert node.election.counter_value("all") == SYNC_DEMOTION


def test_continuous_mode_dumps_the_kernel_once_the_peers_bulk_is_in():
    node = started("continuous")
    out = in_sync(node)
    assert out.count(DumpKernel("start (after the peers' bulk)")) == 1
    assert DumpKernel("start (after the peers' bulk)") not in in_sync(node, 2.0)   # once only


def test_a_resync_holds_kernel_events_back_until_it_is_done():
    node = started("takeover")
    table = [CtEvent(1, b"k%d" % i, b"attrs %d" % i, 0, 6, b"\x0a\0\0\x01", b"\xc6\x33\x64\x05", 0, 3)
             for i in range(3)]
    node.kernel_table(table, "overrun", 1.0)
    assert node.next_deadline() == float("-inf")
    node.kernel_events([CtEvent(1, b"late", b"late attrs", 0, 6, b"\x0a\0\0\x02", b"\xc6\x33\x64\x05", 0, 3)], 1.0)
    assert node.sync.internal.get(b"late") is None            # held back while diffing
    done: list = []
    while node.flows.busy:
        done += node.handle_timer(1.0)
    resynced = [a for a in done if isinstance(a, KernelResynced)]
    assert resynced == [KernelResynced("overrun", 3, 3, 0.0)]
    assert node.sync.internal.get(b"late") == b"late attrs"   # fed after it
    assert len(node.sync.internal) == 4


def test_a_peer_flow_deleted_while_the_dump_is_read_or_diffed_is_not_taken_for_ours():
    """Continuous mode: the dump after the peers' bulk holds their flows we
    injected.  One whose delete was decided (it left the external cache) but
    not carried out by the applier when the dump read it, or decided while
    the dump is diffed, is in no external cache by the time it is diffed, and
    must not become one of our flows (it would be replicated, and committed
    by the peers at a takeover, for ever)."""
    node = started("continuous")
    in_sync(node)                                            # DumpKernel asked for
    def ev(key: bytes) -> CtEvent:
        return CtEvent(1, key, key + b" attrs", 0, 6, b"\x0a\0\0\x01", b"\xc6\x33\x64\x05", 0, 3)
    table = [ev(b"mine"), ev(b"applied late"), ev(b"gone during")]
    node.kernel_changes([ExternalChanged(2, (), ((b"applied late", b"applied late attrs"),))])
    node.kernel_dump_started(1.0)                            # the applier has not deleted it yet
    node.kernel_changes_applied()                            # now it has (the dump read it before)
    node.kernel_table(table, "start (after the peers' bulk)", 1.0)
    node.kernel_changes([ExternalChanged(2, (), ((b"gone during", b"gone during attrs"),))])
    while node.flows.busy:
        node.handle_timer(1.0)
    assert dict(node.sync.dump_internal()) == {b"mine": b"mine attrs"}
    # Once applied and diffed, nothing is kept: the memory is of deletes in flight.
    assert [keys for _, keys in node.flows._recent_deletes] == [{b"gone during"}]
    node.kernel_changes_applied()
    assert not node.flows._recent_deletes and not node.flows._deleted_in


def test_peer_changes_do_not_delete_a_flow_this_node_carries():
    node = started("continuous")
    node.kernel_events([CtEvent(1, b"mine", b"my attrs", 0, 6, b"\x0a\0\0\x01", b"\xc6\x33\x64\x05", 0, 3)], 1.0)
    batch = [ExternalChanged(2, upserts=((b"new", b"peer attrs"),),
                             deletes=((b"mine", b"old attrs"), (b"gone", b"gone attrs")))]
    assert node.kernel_changes(batch) == ([b"peer attrs"], [b"gone attrs"], [], [])


def test_health_and_tracks_demote():
    node = started(None, extra='\n[[health.host]]\nname = "web1"\naddress = "10.1.0.11"\n'
                               '[[health.table]]\nname = "web"\nhosts = ["web1"]\nport = 80\n'
                               'check = { method = "tcp" }\n'
                               '[[health.redirect]]\nname = "www"\naddress = "192.0.2.80"\nport = 80\n'
                               'table = "web"\ndemote = "fw"\n')
    from meshd.health.actions import Demote
    node._route([Demote("fw", True, "www: nothing to forward to")], 1.0)
    node._flush()
    assert node.election.counter_value("fw") == HEALTH_DEMOTION
    node.link("eth2", False, 2.0)
    assert node.election.counter_value("all") == 30
    node.link("eth2", True, 3.0)
    assert node.election.counter_value("all") == 0


def test_a_check_engine_down_demotes_every_group_until_it_is_back():
    node = started(None, extra='\n[[health.host]]\nname = "web1"\naddress = "10.1.0.11"\n'
                               '[[health.table]]\nname = "web"\nhosts = ["web1"]\nport = 80\n'
                               'check = { method = "tcp" }\n')
    assert node.election.counter_value("all") == 0
    out = node.check_engine(False, "check engine down: killed by SIGKILL", 1.0)
    assert node.election.counter_value("all") == HEALTH_DEMOTION
    assert any(getattr(a, "reason", "") == "check engine down: killed by SIGKILL" for a in out)
    node.link("eth2", False, 2.0)                   # other sources add up, apart
    assert node.election.counter_value("all") == HEALTH_DEMOTION + 30
    node.check_engine(True, "check engine up", 3.0)
    assert node.election.counter_value("all") == 30


def test_adoption_waits_for_the_addresses_then_moves_a_bucket_per_step():
    node = started("takeover")
    in_sync(node)
    flows = tuple((b"k%03d" % i, b"a%03d" % i) for i in range(300))
    peer = node.sync.peers[2]
    peer.ext.apply(flows, 3, False)
    # As if node 2's frames up to counter 3 of its epoch 5 had been heard.
    peer.epoch = 5
    node.sync.replay.accept(2, 5, 3)
    master_down(node)
    node.takeover_committed("lan", 10.1)
    assert node.takeovers.next_deadline() is None              # not before the addresses
    node.addresses_added("lan", 10.2)
    due = node.takeovers.next_deadline()
    assert due >= 10.2 + ADOPT_DELAY
    out: list = []
    steps = 0
    while node.takeovers.next_deadline() is not None:
        out += node.takeovers.step(due)
        steps += 1
    adopted = [a for a in out if isinstance(a, FlowsAdopted)]
    assert adopted and adopted[0].entries == 300 and steps > 100   # about one step per bucket
    assert len(node.sync.internal) == 300


def test_each_takeover_is_timed_from_the_transition_to_the_addresses_up():
    node = started(None)
    master_down(node, 10.0)
    node.addresses_added("lan", 10.25)
    node.addresses_added("lan", 11.0)               # no takeover pending: not counted again
    lan = node.takeover_seconds["lan"].copy()
    assert lan.count == 1 and abs(lan.total - 0.25) < 1e-9
    assert "srv" not in node.takeover_seconds       # its addresses are not up yet


def test_a_master_that_steps_down_before_its_addresses_are_up_counts_no_takeover():
    node = started("takeover")
    in_sync(node)
    master_down(node, 10.0)                         # lan's commit in flight, its addresses held
    node.operator_demote("all", 50, 10.1)
    node.disable("lan", 10.2)
    node.addresses_added("lan", 10.3)
    assert "lan" not in node.takeover_seconds
