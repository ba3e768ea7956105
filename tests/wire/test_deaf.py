"""A node that cannot hear (its wire engine down or hung) never takes over on
the silence: ElectionCore.set_deaf holds every backup's master-down."""

from meshd.config import GroupConfig
from meshd.crypto import ELECTION_INFO, KeyRing
from meshd.election.actions import AdvertRejected, SendAdvert, State, StateChanged
from meshd.election.core import ElectionCore

KEYS = KeyRing.from_secrets({1: b"s" * 32}, 1, ELECTION_INFO)


def group(**kw):
    base = {"id": 1, "name": "lan", "interface": "eth0", "addresses": ("192.0.2.1/24",), "advbase_ms": 100}
    base.update(kw)
    return GroupConfig(**base)


def states(core):
    return {name: g.state for name, g in core.groups.items()}


def test_a_deaf_backup_holds_its_master_down_and_waits_a_whole_interval_when_it_hears_again():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    core.start(0.0)
    down = core.groups["lan"].master_down
    assert core.next_master_down() is not None
    core.set_deaf("wire engine down: killed by SIGKILL", 0.1)
    assert core.next_master_down() is None and core.next_deadline() is None
    assert core.handle_timer(60.0) == [] and states(core) == {"lan": State.BACKUP}
    assert core.status(60.0)["deaf"] == "wire engine down: killed by SIGKILL"
    core.set_deaf(None, 60.0)
    assert core.next_master_down() == 60.0 + down
    assert core.handle_timer(60.0 + down - 0.001) == []
    assert any(isinstance(a, StateChanged) and a.new is State.MASTER
               for a in core.handle_timer(60.0 + down))


def test_a_node_that_starts_deaf_arms_no_master_down_until_it_hears():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    core.set_deaf("wire engine starting", 0.0)
    core.start(0.0)
    assert states(core) == {"lan": State.BACKUP} and core.next_deadline() is None
    core.set_deaf(None, 5.0)
    assert core.next_master_down() == 5.0 + core.groups["lan"].master_down


def test_a_deaf_master_goes_on_advertising():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    core.start(0.0)
    core.handle_timer(1.0)
    assert states(core) == {"lan": State.MASTER}
    core.set_deaf("wire engine silent for 150 ms", 1.05)
    sent = [a for a in core.handle_timer(1.2) if isinstance(a, SendAdvert)]
    assert sent and states(core) == {"lan": State.MASTER}


def test_repeated_reasons_change_nothing_and_refusals_elsewhere_are_counted():
    core = ElectionCore(1, [group()], KEYS, epoch=1)
    core.start(0.0)
    core.set_deaf("a", 0.1)
    core.set_deaf("b", 0.2)                 # still deaf: nothing re-armed
    assert core.next_deadline() is None
    out = core.rejected_elsewhere("bad mac", "forged", None, 500)
    assert out == [AdvertRejected("bad mac", "forged", "", 500)]
    assert core.status(0.3)["rejected"] == {"bad mac": 500}
