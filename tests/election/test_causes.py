"""Each state change names its cause from the bounded set (election/actions.py Cause),
and the core counts transitions by (state entered, cause): the metrics export
them as meshd_group_transitions_total (docs/metrics.md, "Causes")."""

from __future__ import annotations

from meshd.config import GroupConfig
from meshd.crypto import ELECTION_INFO, KeyRing
from meshd.election.actions import Cause, SendAdvert, State, StateChanged
from meshd.election.core import ElectionCore

KEYS = KeyRing.from_secrets({1: b"s" * 32}, 1, ELECTION_INFO)
SOURCE = "192.0.2.3"


def group(**kw) -> GroupConfig:
    base = dict(id=1, name="lan", interface="eth0", addresses=("192.0.2.1/24",), advbase_ms=100)
    base.update(kw)
    return GroupConfig(**base)


def changes(actions) -> list[tuple[State, Cause]]:
    return [(a.new, a.cause) for a in actions if isinstance(a, StateChanged)]


def peer_adverts(node_id: int, *, demotion: int = 0, bowout: bool = False, **kw) -> list[bytes]:
    """The adverts of a peer that is master of the group (its bow-out's with `bowout`)."""
    peer = ElectionCore(node_id, [group(**kw)], KEYS, epoch=5)
    peer.start(0.0)
    if demotion:
        peer.set_demotion("all", "test", demotion, 0.0)
    out = peer.handle_timer(10.0)
    if bowout:
        out = peer.shutdown(10.1)
    return [a.data for a in out if isinstance(a, SendAdvert) and a.bowout == bowout]


def backup(node_id: int = 1, **kw) -> ElectionCore:
    core = ElectionCore(node_id, [group(**kw)], KEYS, epoch=1)
    assert changes(core.start(0.0)) == [(State.BACKUP, Cause.STARTUP)]
    return core


def master(node_id: int = 1, **kw) -> ElectionCore:
    core = backup(node_id, **kw)
    assert changes(core.handle_timer(1.0)) == [(State.MASTER, Cause.MASTER_DOWN)]
    return core


def hear(core: ElectionCore, data: list[bytes], now: float = 1.5) -> list:
    out = []
    for d in data:
        out += core.receive(d, SOURCE, now, ttl=255)
    return out


def test_a_backup_takes_over_after_master_down_or_a_bow_out():
    master(1)
    core = backup(2, advskew=10)
    hear(core, peer_adverts(1), 0.5)
    hear(core, peer_adverts(1, bowout=True), 0.6)
    assert changes(core.handle_timer(0.7)) == [(State.MASTER, Cause.BOWOUT)]


def test_preempting_a_worse_master_and_taking_over_from_a_demoted_one():
    core = backup(1)                                  # node 1 beats node 2 by node id
    assert changes(hear(core, peer_adverts(2))) == [(State.MASTER, Cause.PREEMPT)]
    core = backup(1, preempt=False)                   # no preempt: only a demotion moves it
    assert changes(hear(core, peer_adverts(2, preempt=False))) == []
    core = backup(1, preempt=False)
    assert changes(hear(core, peer_adverts(2, demotion=50, preempt=False))) == \
        [(State.MASTER, Cause.PEER_DEMOTED)]


def test_a_master_gives_way_preempted_or_demoted():
    core = master(2)
    assert changes(hear(core, peer_adverts(1))) == [(State.BACKUP, Cause.PREEMPTED)]
    core = master(1)
    core.set_demotion("all", "test", 50, 1.2)
    assert changes(hear(core, peer_adverts(2))) == [(State.BACKUP, Cause.DEMOTED)]


def test_faults_operator_reload_and_shutdown():
    core = master(1)
    assert changes(core.set_interface("eth0", False, 2.0)) == [(State.FAULT, Cause.FAULT)]
    assert changes(core.set_interface("eth0", True, 2.1)) == [(State.BACKUP, Cause.RECOVERED)]
    assert changes(core.disable("lan", 2.2)) == [(State.DISABLED, Cause.OPERATOR)]
    assert changes(core.enable("lan", 2.3)) == [(State.BACKUP, Cause.OPERATOR)]
    assert changes(core.reconfigure((group(advbase_ms=200),), 2.4)) == \
        [(State.INIT, Cause.RELOAD), (State.BACKUP, Cause.RELOAD)]
    assert changes(core.shutdown(2.5)) == [(State.INIT, Cause.SHUTDOWN)]


def test_transitions_are_counted_by_state_and_cause():
    core = master(1)
    core.set_interface("eth0", False, 2.0)
    core.set_interface("eth0", True, 2.1)
    core.handle_timer(3.0)
    assert dict(core.groups["lan"].transitions_by) == {
        (State.BACKUP, Cause.STARTUP): 1, (State.MASTER, Cause.MASTER_DOWN): 2,
        (State.FAULT, Cause.FAULT): 1, (State.BACKUP, Cause.RECOVERED): 1}
    assert core.groups["lan"].transitions == 5


def test_the_causes_are_a_small_fixed_set_of_label_values():
    values = [c.value for c in Cause]
    assert len(values) == len(set(values)) <= 16
    assert all(v.isidentifier() and v.islower() for v in values)
