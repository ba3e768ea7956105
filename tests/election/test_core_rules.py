"""Single-node rules of the election core that the cluster simulation does not isolate."""

from meshd.config import GroupConfig
from meshd.crypto import ELECTION_INFO, KeyRing
from meshd.election.actions import (AddAddresses, AdvertRejected, Announce, PrepareTakeover,
                                    RunNotify, SendAdvert, State, StateChanged)
from meshd.election.core import ElectionCore

KEYS = KeyRing.from_secrets({1: b"s" * 32}, 1, ELECTION_INFO)


def group(**kw):
    base = dict(id=1, name="lan", interface="eth0", addresses=("192.0.2.1/24",), advbase_ms=100)
    base.update(kw)
    return GroupConfig(**base)


def master_advert(node_id=2, **kw):
    """One advert from a peer that is master of the group."""
    peer = ElectionCore(node_id, [group(**kw)], KEYS, epoch=5)
    peer.start(0.0)
    actions = peer.handle_timer(10.0)
    return next(a.data for a in actions if isinstance(a, SendAdvert))


def test_takeover_actions_follow_the_failover_ordering():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    core.start(0.0)
    actions = core.handle_timer(0.31)
    kinds = [type(a) for a in actions]
    assert kinds[0] is StateChanged
    # commit state, then addresses, then announce, then advert, then hooks
    order = [PrepareTakeover, AddAddresses, Announce, SendAdvert, RunNotify]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions), kinds
    assert kinds.count(SendAdvert) == 3  # advert_copies


def test_unicast_group_refuses_adverts_from_outside_its_peers():
    core = ElectionCore(3, [group(peers=("198.51.100.2",))], KEYS, epoch=1)
    core.start(0.0)
    out = core.receive(master_advert(peers=("198.51.100.2",)), "198.51.100.9", 0.1, ttl=255)
    assert [a.reason for a in out if isinstance(a, AdvertRejected)] == ["unknown peer"]
    out = core.receive(master_advert(peers=("198.51.100.2",)), "198.51.100.2", 0.1, ttl=255)
    assert not [a for a in out if isinstance(a, AdvertRejected)]


def test_ttl_check_fails_closed_when_the_kernel_reports_none():
    core = ElectionCore(3, [group()], KEYS, epoch=1)  # worse than node 2: no preemption
    core.start(0.0)
    for ttl in (None, 254, 1):
        out = core.receive(master_advert(), "192.0.2.3", 0.1, ttl=ttl)
        assert [a.reason for a in out if isinstance(a, AdvertRejected)] == ["bad ttl"]
    assert core.receive(master_advert(), "192.0.2.3", 0.1, ttl=255) == []


def test_ttl_check_can_be_turned_off_for_routed_unicast():
    core = ElectionCore(3, [group(check_ttl=False)], KEYS, epoch=1)
    core.start(0.0)
    assert core.receive(master_advert(check_ttl=False), "192.0.2.3", 0.1, ttl=3) == []


def test_rejected_advert_never_changes_state():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    core.start(0.0)
    data = bytearray(master_advert(node_id=2))
    data[-1] ^= 1
    out = core.receive(bytes(data), "192.0.2.3", 0.1, ttl=255)
    assert not [a for a in out if isinstance(a, StateChanged)]
    assert core.groups["lan"].state is State.BACKUP
    assert core.status(0.1)["rejected"] == {"bad mac": 1}


def become_master(core, now=0.31):
    core.start(0.0)
    core.handle_timer(now)
    assert core.groups["lan"].state is State.MASTER


def test_reload_with_unchanged_election_settings_keeps_state():
    core = ElectionCore(1, [group(), group(id=2, name="wan", interface="eth1",
                                          addresses=("198.51.100.1/24",))], KEYS, epoch=1)
    become_master(core)
    # notify and advskew may change without a flap; the new values take effect
    out = core.reconfigure((group(advskew=5, notify=("/bin/true",)),
                            group(id=2, name="wan", interface="eth1", addresses=("198.51.100.1/24",))), 1.0)
    assert not [a for a in out if isinstance(a, StateChanged)]
    assert core.groups["lan"].state is State.MASTER
    assert core.groups["lan"].config.advskew == 5


def test_reload_restarts_a_changed_group_and_bows_out_first():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    become_master(core)
    out = core.reconfigure((group(addresses=("192.0.2.9/24",)),), 1.0)
    kinds = [type(a).__name__ for a in out]
    assert kinds.index("SendAdvert") < kinds.index("RemoveAddresses")
    assert any(isinstance(a, SendAdvert) and a.bowout for a in out)
    assert core.groups["lan"].state is State.BACKUP
    assert core.groups["lan"].config.addresses == ("192.0.2.9/24",)


def test_reload_removes_and_adds_groups():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    become_master(core)
    out = core.reconfigure((group(id=3, name="dmz", interface="eth2", addresses=("203.0.113.1/24",)),), 1.0)
    assert set(core.groups) == {"dmz"}
    changes = [(a.group, a.new) for a in out if isinstance(a, StateChanged)]
    assert ("lan", State.INIT) in changes and ("dmz", State.BACKUP) in changes


def test_operator_demote_adds_and_promote_clears_only_the_operator_part():
    core = ElectionCore(1, [group(demotion_groups=("uplink",))], KEYS, epoch=1)
    become_master(core)
    core.set_demotion("uplink", "link:eth9", 50, 1.0)
    out = core.operator_demote("uplink", 20, 1.1)
    assert any(isinstance(a, SendAdvert) for a in out)  # peers learn at once
    assert core.counter_value("uplink") == 70
    core.operator_demote("uplink", -5, 1.2)
    assert core.counter_value("uplink") == 65
    core.operator_promote("uplink", 1.3)
    assert core.counter_value("uplink") == 50
    assert core.group_demotion(core.groups["lan"]) == 50


def test_disable_bows_out_and_enable_rejoins_as_backup():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    become_master(core)
    out = core.disable("lan", 1.0)
    assert any(isinstance(a, SendAdvert) and a.bowout for a in out)
    assert core.groups["lan"].state is State.DISABLED
    assert core.next_deadline() is None
    core.enable("lan", 2.0)
    assert core.groups["lan"].state is State.BACKUP


def test_interface_down_faults_the_group_and_raises_its_sync_set():
    core = ElectionCore(1, [group(sync_set="edge"),
                            group(id=2, name="wan", interface="eth1", addresses=("198.51.100.1/24",),
                                  sync_set="edge")], KEYS, epoch=1)
    core.start(0.0)
    core.handle_timer(0.31)
    out = core.set_interface("eth0", False, 1.0)
    assert core.groups["lan"].state is State.FAULT
    assert any(type(a).__name__ == "RemoveAddresses" and a.group == "lan" for a in out)
    assert core.group_demotion(core.groups["wan"]) == 100
    core.set_interface("eth0", True, 2.0)
    assert core.groups["lan"].state is State.BACKUP
    assert core.group_demotion(core.groups["wan"]) == 0


def test_send_failure_faults_then_retries():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    become_master(core)
    core.send_failed("lan", 1.0, "Network is unreachable")
    g = core.groups["lan"]
    assert g.state is State.FAULT and "send failed" in g.faults
    core.handle_timer(core.next_deadline())
    assert g.state is State.BACKUP


def test_own_adverts_and_duplicate_node_ids_are_told_apart():
    core = ElectionCore(1, [group()], KEYS, epoch=7)
    become_master(core)
    mine = next(a.data for a in core.handle_timer(0.5) if isinstance(a, SendAdvert))
    out = core.receive(mine, "192.0.2.2", 0.6, ttl=255)
    assert [a.reason for a in out if isinstance(a, AdvertRejected)] == ["own advert"]
    impostor = ElectionCore(1, [group()], KEYS, epoch=9)
    impostor.start(0.0)
    theirs = next(a.data for a in impostor.handle_timer(0.31) if isinstance(a, SendAdvert))
    out = core.receive(theirs, "192.0.2.9", 0.6, ttl=255)
    assert [a.reason for a in out if isinstance(a, AdvertRejected)] == ["duplicate node id"]


def test_track_with_weight_0_faults_the_groups_following_its_counter():
    core = ElectionCore(1, [group(demotion_groups=("uplink",)),
                            group(id=2, name="wan", interface="eth1", addresses=("198.51.100.1/24",))],
                        KEYS, epoch=1)
    core.start(0.0)
    core.handle_timer(0.31)
    out = core.set_tracked_fault("uplink", "tracked interface eth9 failed", True, 1.0)
    assert core.groups["lan"].state is State.FAULT
    assert core.groups["wan"].state is State.MASTER        # does not follow "uplink"
    assert any(type(a).__name__ == "RemoveAddresses" for a in out)
    assert core.group_demotion(core.groups["lan"]) == 0    # a fault, not a demotion
    core.set_tracked_fault("uplink", "tracked interface eth9 failed", False, 2.0)
    assert core.groups["lan"].state is State.BACKUP


def test_next_master_down_is_a_backups_deadline_never_a_masters_advert():
    core = ElectionCore(1, [group(), group(id=2, name="srv", interface="eth1", addresses=("198.51.100.1/24",))],
                        KEYS, epoch=1)
    core.start(0.0)
    backup_due = core.next_master_down()
    assert backup_due is not None and backup_due == core.next_deadline()
    core.handle_timer(10.0)                          # both take over: masters now
    assert all(g.state is State.MASTER for g in core.groups.values())
    assert core.next_deadline() is not None and core.next_master_down() is None


def _rejected_detail(core, data):
    (a,) = [x for x in core.receive(data, "192.0.2.2", 1.0, ttl=255, interface="eth0")
            if isinstance(x, AdvertRejected)]
    return a.reason, a.detail


def test_a_rejected_advert_says_which_setting_explains_it():
    """Issue 12: a node whose peer's adverts are rejected says why, where it can know."""
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    core.start(0.0)
    assert _rejected_detail(core, master_advert(advbase_ms=200)) == (
        "peer config differs", "node 2, group lan: advbase_ms 200 there, 100 here")
    reason, detail = _rejected_detail(core, master_advert(node_id=3, addresses=("192.0.2.254/24",)))
    assert reason == "peer config differs" and "its addresses differ" in detail
    other = KeyRing.from_secrets({7: b"s" * 32}, 7, ELECTION_INFO)
    peer = ElectionCore(4, [group()], other, epoch=5)
    peer.start(0.0)
    data = next(a.data for a in peer.handle_timer(10.0) if isinstance(a, SendAdvert))
    assert _rejected_detail(core, data) == (
        "unknown key", "key id 7 (cluster.send_key of the sender?); the cluster keys here are {1}")
