"""An authentic advert whose advbase contradicts its config digest is refused.

The config digest covers the group's advbase (proto/election.md, 1.1), but
the advert also carries advbase_ms on its own, and the master-down timer is
armed from that field.  Found by the mutation fuzzer (tests/fuzz, resealed
adverts with a valid MAC and an out-of-range advbase): an advert with
advbase_ms 2**32-1 and the right digest moved a backup's master-down ~150
days out, so it never took over from a master that died; advbase_ms 0 or 9
made it take over 2 ms after each advert.  Such an advert is a peer bug (or
a key holder's forgery), and is now `peer config differs`.
"""

import dataclasses

import pytest

from meshd.config import GroupConfig
from meshd.crypto import ELECTION_INFO, KeyRing
from meshd.election.actions import AdvertRejected, SendAdvert, State
from meshd.election.core import ElectionCore
from meshd.election.wire import decode_advert, encode_advert

KEYS = KeyRing.from_secrets({1: b"s" * 32}, 1, ELECTION_INFO)
GROUP = GroupConfig(id=1, name="lan", interface="eth0", addresses=("192.0.2.1/24",), advbase_ms=100)


def master_adverts():
    peer = ElectionCore(2, [GROUP], KEYS, epoch=5)
    peer.start(0.0)
    return [a.data for a in peer.handle_timer(10.0) if isinstance(a, SendAdvert)]


def resealed(data: bytes, **changes) -> bytes:
    a = decode_advert(data, KEYS)
    return encode_advert(dataclasses.replace(a, **changes), KEYS.send_key)


@pytest.mark.parametrize("advbase_ms", [0, 9, 99, 101, 60001, 2**32 - 1])
def test_an_advbase_other_than_the_digests_is_refused_and_changes_nothing(advbase_ms):
    core = ElectionCore(3, [GROUP], KEYS, epoch=1)
    core.start(0.0)
    first, *_ = master_adverts()
    assert core.receive(first, "192.0.2.2", 0.1, ttl=255) == []        # node 2 is master
    g = core.groups["lan"]
    deadline = g.deadline
    out = core.receive(resealed(first, advbase_ms=advbase_ms, counter=1000), "192.0.2.2", 0.2, ttl=255)
    assert [a.reason for a in out if isinstance(a, AdvertRejected)] == ["peer config differs"]
    assert g.deadline == deadline
    # The master dies: the backup takes over on the master-down armed by the real advert.
    core.handle_timer(deadline)
    assert g.state is State.MASTER


def test_the_groups_own_advbase_is_accepted():
    core = ElectionCore(3, [GROUP], KEYS, epoch=1)
    core.start(0.0)
    first, *_ = master_adverts()
    assert core.receive(resealed(first, advbase_ms=100, counter=1000), "192.0.2.2", 0.1, ttl=255) == []
    assert core.groups["lan"].master_node == 2
