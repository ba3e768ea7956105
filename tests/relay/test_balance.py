"""The relay's choice of backend: the four modes, the backup table, drain, held backends."""

from __future__ import annotations

from collections import Counter

import pytest

from meshd.relay.balance import HOLD_S, RelayBalancer
from meshd.relay.interface import Backend, NoBackend

WEB = (("web1", "10.1.0.11", 80, 1), ("web2", "10.1.0.12", 80, 1), ("web3", "10.1.0.13", 80, 1))
SORRY = (("sorry", "10.1.0.99", 80, 1),)


def balancer(mode="roundrobin", backup="sorry", hosts=WEB) -> RelayBalancer:
    b = RelayBalancer("www", mode, "web", backup)
    b.set_live("web", hosts)
    b.set_live("sorry", SORRY)
    return b


def hosts_of(picks) -> list[str]:
    return [p.host for p in picks]


def test_roundrobin_takes_each_host_in_turn_and_follows_weights():
    b = balancer()
    assert hosts_of(b.pick(0, "192.0.2.7") for _ in range(6)) == ["web1", "web2", "web3"] * 2
    b.set_live("web", (("web1", "10.1.0.11", 80, 3), ("web2", "10.1.0.12", 80, 1)))
    picks = hosts_of(b.pick(0, "c") for _ in range(8))
    assert Counter(picks) == {"web1": 6, "web2": 2}
    assert "web1web1web1web1" not in "".join(picks)      # interleaved, not in blocks


def test_a_host_that_goes_down_is_not_picked_at_once_and_the_backup_takes_over():
    b = balancer()
    b.set_live("web", WEB[1:])                     # web1's check failed
    assert "web1" not in hosts_of(b.pick(0, "c") for _ in range(10))
    assert b.status() == "active"
    b.set_live("web", ())
    assert b.pick(0, "c") == Backend("sorry", "10.1.0.99", 80)
    assert b.status() == "active (using backup table)"
    b.set_live("sorry", ())
    with pytest.raises(NoBackend, match="no host up in table web nor in backup table sorry"):
        b.pick(0, "c")
    assert b.status() == "down" and b.refused == 1
    b.set_live("web", WEB[:1])                     # main table back: backup left at once
    assert b.pick(0, "c").host == "web1"


def test_disabled_relay_refuses_new_sessions_and_open_ones_stay_counted():
    b = balancer()
    first = b.pick(0, "c")
    b.opened(first)
    b.set_enabled(False)
    with pytest.raises(NoBackend, match="relay www is disabled"):
        b.pick(0, "c")
    assert b.status() == "disabled" and b.open_sessions == 1
    b.closed(first)
    b.set_enabled(True)
    assert b.pick(0, "c") in {Backend(h, a, p) for h, a, p, _ in WEB}


def test_loadbalance_picks_the_host_with_fewest_sessions_per_weight():
    b = balancer("loadbalance")
    opened = []
    for _ in range(3):
        pick = b.pick(0, "c")
        b.opened(pick)
        opened.append(pick.host)
    assert sorted(opened) == ["web1", "web2", "web3"]
    b.closed(Backend("web2", "10.1.0.12", 80))
    assert b.pick(0, "c").host == "web2"
    b.set_live("web", (("web1", "10.1.0.11", 80, 4), ("web2", "10.1.0.12", 80, 1)))
    # web1: 1 open / 4, web2: 0 open -> web2; then 1/4 < 1/1 -> web1
    w2 = b.pick(0, "c")
    b.opened(w2)
    assert w2.host == "web2" and b.pick(0, "c").host == "web1"


@pytest.mark.parametrize("mode", ["hash", "source-hash"])
def test_hash_modes_are_stable_and_move_only_the_keys_of_a_host_that_left(mode):
    b = balancer(mode)
    keys = [f"key{i}".encode() for i in range(300)]
    clients = [f"198.51.100.{i}" for i in range(300)]

    def assignment():
        return [b.pick(0, c, k if mode == "hash" else None).host for c, k in zip(clients, keys)]

    before = assignment()
    assert before == assignment()                     # the same key, the same host
    assert set(Counter(before)) == {"web1", "web2", "web3"}
    assert min(Counter(before).values()) > 60         # spread over the hosts
    b.set_live("web", WEB[:2])                        # web3 down
    after = assignment()
    assert all(a == x for a, x in zip(after, before) if x != "web3")
    b.set_live("web", WEB)                            # web3 back: takes its keys back
    assert assignment() == before
    # Another node (a fresh balancer, after a failover) agrees.
    other = balancer(mode)
    assert [other.pick(0, c, k if mode == "hash" else None).host for c, k in zip(clients, keys)] == before


def test_hash_without_a_fed_value_falls_back_to_the_client_address():
    b = balancer("hash")
    s = balancer("source-hash")
    assert [b.pick(0, f"203.0.113.{i}").host for i in range(50)] == \
           [s.pick(0, f"203.0.113.{i}").host for i in range(50)]


def test_a_backend_that_refused_a_connect_is_passed_over_until_its_hold_ends():
    b = balancer("source-hash")
    client = "192.0.2.55"
    first = b.pick(10.0, client)
    b.connect_failed(first, 10.0)
    second = b.pick(10.5, client)
    assert second != first
    assert b.pick(10.0 + HOLD_S + 0.01, client) == first       # hold over: health decides
    assert b.counts[first].failed == 1
    # Every candidate held: they are tried anyway (nothing better to offer).
    for backend in [Backend(h, a, p) for h, a, p, _ in WEB]:
        b.connect_failed(backend, 20.0)
    assert b.pick(20.1, client) is not None


def test_an_unknown_mode_is_a_bug_named_at_once():
    with pytest.raises(ValueError, match="mode must be one of"):
        RelayBalancer("www", "random", "web")


def test_a_datagram_counts_in_its_backends_total_and_opens_nothing():
    b = balancer()
    backend = b.pick(0, "c")
    b.datagram_sent(backend)
    b.datagram_sent(backend)
    assert b.counts[backend].total == 2 and b.counts[backend].open == 0 and b.open_sessions == 0
