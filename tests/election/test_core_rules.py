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
