"""Redundant sync paths: the rule that chooses one (meshd/sync/paths.py), the
copies a receiver gets over two paths (SyncCore.receive), and `addresses`
in [sync] peers (meshd/config/sync.py).  No root, no network."""

from __future__ import annotations

import pytest
from cluster import SYNC_KEYS, Cluster, mesh

from meshd.config.reader import Reader
from meshd.config.sync import parse_sync
from meshd.sync.frames import FrameType, encode_frame
from meshd.sync.paths import PathSwitch, PathTable

A, B = "203.0.113.2", "192.0.2.3"


def table(timeout=1.0, ret=5.0, now=0.0) -> PathTable:
    t = PathTable(timeout, ret)
    t.configure({2: (A, B)}, now)
    return t


def beat(t: PathTable, indexes, start: float, end: float, step: float = 0.2,
         own: int | None = None) -> list[PathSwitch]:
    """Heartbeats of peer 2 over the paths in `indexes`, every `step` s, and
    (`own`) its own frames over that path; the (time, switch) seen."""
    out, now = [], start
    while now < end:
        for i, is_own in [(i, False) for i in indexes] + ([(own, True)] if own is not None else []):
            s = t.heard(2, i, now, own=is_own)
            if s is not None:
                out.append((now, s))
        now = round(now + step, 6)
    return out


# ----------------------------------------------------------------- the rule

def test_the_preferred_path_is_used_while_it_is_heard():
    t = table()
    assert beat(t, (0, 1), 0.0, 30.0) == []
    assert t.address(2) == A and t.others(2) == [B]
    assert t.status(30.0)[2]["paths"][1]["up"] is True


def test_a_silent_active_path_is_left_for_one_that_is_heard():
    t = table()
    beat(t, (0, 1), 0.0, 10.0)
    switches = beat(t, (1,), 10.0, 12.0)            # path 0 heard last at 9.8
    assert len(switches) == 1
    at, s = switches[0]
    assert s.peer == 2 and (s.old, s.new) == (0, 1) and (s.old_address, s.new_address) == (A, B)
    assert 9.8 + 1.0 < at <= 9.8 + 1.0 + 0.2, at    # the first heartbeat after the timeout
    assert "not heard for" in s.reason
    assert t.address(2) == B and t.others(2) == [A]
    assert t.switches() == {2: 1}


def test_return_to_the_preferred_path_only_after_it_held_for_return_s():
    t = table(ret=5.0)
    beat(t, (0, 1), 0.0, 10.0)
    beat(t, (1,), 10.0, 15.0)
    assert t.active(2) == 1
    back = beat(t, (0, 1), 15.0, 25.0)
    assert [s.new for _, s in back] == [0]
    assert 20.0 <= back[0][0] <= 20.2, back
    assert "up for" in back[0][1].reason


def test_a_flapping_preferred_path_is_not_returned_to():
    """Up 3 s, down 2 s, over and over: never up for 5 s, so never used again."""
    t = table(ret=5.0)
    beat(t, (0, 1), 0.0, 5.0)
    beat(t, (1,), 5.0, 7.0)
    assert t.active(2) == 1
    now = 7.0
    for _ in range(6):
        assert beat(t, (0, 1), now, now + 3.0) == []
        assert beat(t, (1,), now + 3.0, now + 5.0) == []
        now += 5.0
    assert t.active(2) == 1 and t.switches() == {2: 1}


def test_after_a_silence_of_every_path_the_first_one_heard_is_used():
    """Both paths silent (the peer's timeout, not the path table, says it is
    absent); then a frame over the backup only: that one is up, the other not."""
    t = table()
    beat(t, (0, 1), 0.0, 5.0)
    s = t.heard(2, 1, 60.0)
    assert s is not None and s.new == 1 and t.address(2) == B


def test_the_preferred_path_has_a_grace_at_start():
    """The first frames of a start may come over the backup first: the
    preferred path is not left before it had `timeout` to be heard."""
    t = table(now=None)
    assert t.heard(2, 1, 100.0) is None and t.heard(2, 1, 100.5) is None
    assert t.heard(2, 0, 100.6) is None
    assert beat(t, (0, 1), 100.8, 110.0) == []
    never = table(now=None)
    s = [s for _, s in beat(never, (1,), 100.0, 102.0)]
    assert [x.new for x in s] == [1] and "never heard" in s[0].reason


def test_a_reload_keeps_what_it_knows_of_an_address():
    t = table()
    beat(t, (0, 1), 0.0, 10.0)
    beat(t, (1,), 10.0, 12.0)
    t.configure({2: (A, B, "198.51.100.3"), 3: ("203.0.113.3",)}, 12.0)
    assert t.address(2) == B and t.switches()[2] == 1 and t.address(3) == "203.0.113.3"
    assert t.status(12.0)[2]["paths"][1]["up"] is True and t.status(12.0)[2]["last_switch"]["to"] == B
    t.configure({2: (A, "198.51.100.3")}, 13.0)      # the active path removed: back to the first
    assert t.address(2) == A and t.index_of(2, "198.51.100.3") == 1 and t.index_of(2, B) is None


def test_bad_timers_are_refused():
    with pytest.raises(ValueError):
        PathTable(0, 1)
    with pytest.raises(ValueError):
        PathTable(1, -1)


def test_a_loss_in_one_direction_is_followed_and_left_when_the_peer_comes_back():
    """Our frames to the peer are lost over path 0, its frames to us are not:
    we hear its heartbeats over both paths, but its own frames (STATUS, DATA)
    come over path 1, the one it chose because it does not hear us over 0."""
    t = table(timeout=1.0, ret=2.0)
    assert beat(t, (0, 1), 0.0, 10.0, own=0) == []
    followed = beat(t, (0, 1), 10.0, 20.0, own=1)
    assert [(at, s.new) for at, s in followed] == [(11.0, 1)], followed
    assert "does not hear us over 203.0.113.2" in followed[0][1].reason
    assert t.status(20.0)[2]["peer_uses"] == B
    # The peer hears us over 0 again and goes back to it: so do we, at once
    # (path 0 itself never stopped working from here).
    back = beat(t, (0, 1), 20.0, 30.0, own=0)
    assert [(at, s.new) for at, s in back] == [(20.0, 0)], back


def test_returning_together_is_not_a_loss_in_one_direction():
    """Both sides leave path 0 (cut) and come back to it a heartbeat apart: the
    peer's frames over path 1 for that moment do not pull us back to it."""
    t = table(timeout=1.0, ret=2.0)
    beat(t, (0, 1), 0.0, 10.0, own=0)
    beat(t, (1,), 10.0, 12.0, own=1)
    assert t.active(2) == 1
    back = beat(t, (0, 1), 12.0, 14.2, own=1)         # we return first, at 14.0
    assert [(at, s.new) for at, s in back] == [(14.0, 0)], back
    assert beat(t, (0, 1), 14.2, 30.0, own=0) == [] and t.switches() == {2: 2}


def test_an_idle_peer_that_used_the_backup_once_does_not_pull_us_back_to_it():
    t = table(timeout=1.0, ret=2.0)
    beat(t, (0, 1), 0.0, 10.0, own=0)
    beat(t, (1,), 10.0, 12.0, own=1)
    beat(t, (0, 1), 12.0, 14.2)                         # heartbeats only from now on
    assert t.active(2) == 0
    assert beat(t, (0, 1), 14.2, 30.0) == []


# ----------------------------------------------------------------- copies over two paths

def _heartbeat(c: Cluster, counter: int, keys=SYNC_KEYS) -> bytes:
    n1 = c.nodes[1]
    return encode_frame(keys, 1, n1.epoch, counter, FrameType.HEARTBEAT, (0, (), 0, ()),
                        boot_id=n1.sync.boot_id)


def test_a_copy_over_another_path_is_not_a_replay():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=3)
    c.start_all()
    c.run_for(0.2)
    core2 = c.nodes[2].sync
    core2.set_multipath([1], c.now)
    hb = _heartbeat(c, 10**6)
    assert c.inject_frame(2, hb, 1) == [] and core2.heard_from == 1
    assert c.inject_frame(2, hb, 1) == [] and core2.heard_from == 1     # the copy: quiet, authentic
    assert core2.counters["copies over another path"] == 1
    assert core2.stats(c.now)["peers"][1]["counters"]["copies over another path"] == 1
    assert "replayed" not in core2.rejected
    # A forged "copy" (same header, another tag) is still a reject, and says nothing of a path.
    forged = hb[:-1] + bytes([hb[-1] ^ 1])
    acts = c.inject_frame(2, forged, 1)
    assert [a.reason for a in acts] == ["bad tag"] and core2.heard_from is None
    # An old capture (below the window) is a replay, multipath or not.
    old = _heartbeat(c, 10**6 - 5000)
    assert [a.reason for a in c.inject_frame(2, old, 1)] in (["replayed"], ["outside window"])
    # Without a second path, a copy is a replay as before.
    core2.set_multipath([], c.now)
    assert [a.reason for a in c.inject_frame(2, hb, 1)] == ["replayed"]


# ----------------------------------------------------------------- configuration

def _parse(peers, **keys):
    r = Reader("meshd.toml")
    cfg = parse_sync(r, {"peers": peers, **keys}, 1)
    return cfg, r.problems


def test_addresses_in_order_of_preference():
    cfg, problems = _parse([{"id": 2, "addresses": [A, B]}, {"id": 3, "address": "203.0.113.3"}])
    assert problems == []
    assert cfg.peers[0].address == A and cfg.peers[0].backups == (B,) and cfg.peers[0].paths == (A, B)
    assert cfg.peers[1].paths == ("203.0.113.3",) and cfg.multipath
    assert (cfg.path_timeout_ms, cfg.path_return_ms) == (1000, 5000)
    assert not _parse([{"id": 2, "address": A}])[0].multipath


@pytest.mark.parametrize("peers,keys,problem", [
    ([{"id": 2, "address": A, "addresses": [A]}], {},
     "sync.peers[0].addresses: give address or addresses, not both"),
    ([{"id": 2, "addresses": []}], {}, "sync.peers[0].addresses: expected 1 to 4 addresses"),
    ([{"id": 2, "addresses": [A, "lan"]}], {}, 'sync.peers[0].addresses[1]: expected an IP address, found "lan"'),
    ([{"id": 2, "addresses": [A, A]}], {}, "sync.peers[0].addresses[1]: 203.0.113.2 is given twice"),
    ([{"id": 2, "addresses": [A, "2001:db8::2"]}], {},
     "sync.peers[0].addresses[1]: IPv6 address 2001:db8::2, but the first path is IPv4"),
    ([{"id": 2, "addresses": [A]}, {"id": 3, "addresses": ["203.0.113.3", A]}], {},
     "sync.peers[1].addresses[1]: 203.0.113.2 is already a path to peer 2"),
    ([{"id": 2, "addresses": [A, B]}], {"path_timeout_ms": 300},
     "sync.path_timeout_ms: expected at least 2 * heartbeat_ms (400) and less than peer_timeout_ms"),
    ([{"id": 2, "addresses": [A, B]}], {"path_timeout_ms": 3000},
     "sync.path_timeout_ms: expected at least 2 * heartbeat_ms (400) and less than peer_timeout_ms (3000)"),
])
def test_bad_paths_are_named(peers, keys, problem):
    _, problems = _parse(peers, **keys)
    assert any(problem in p for p in problems), problems


def test_a_path_the_kernel_cannot_send_over_is_left_at_once():
    """sendto's ENETUNREACH (the link is down here): no waiting for the
    timeout; up again only once heard again, and back after return_s."""
    t = table(ret=2.0)
    beat(t, (0, 1), 0.0, 10.0)
    s = t.unreachable(2, 0, 10.05)
    assert s is not None and s.new == 1 and "unreachable" in s.reason
    assert t.unreachable(2, 0, 10.06) is None and t.switches() == {2: 1}   # once per failure
    assert t.status(10.1)[2]["paths"][0]["up"] is False
    back = beat(t, (0, 1), 10.2, 15.0)
    assert [x.new for _, x in back] == [0] and 12.2 <= back[0][0] <= 12.4, back
    # A backup refused too: nothing is up but the active path, nothing to switch to.
    assert t.unreachable(2, 1, 15.0) is None and t.active(2) == 0


def test_no_route_and_no_other_path_heard_yet_tries_the_next_one():
    """Staying on a path the kernel has no route for is certainly futile."""
    t = table(now=0.0)
    s = t.unreachable(2, 0, 0.1)
    assert s is not None and s.new == 1 and t.address(2) == B
    assert t.unreachable(2, 1, 0.2) is None and t.active(2) == 1      # both refused: stay


def test_a_refused_probe_before_any_frame_changes_nothing():
    """At start (configured without a clock), a heartbeat that cannot go over
    the backup path: the preferred path is still in its grace."""
    t = table(now=None)
    assert t.unreachable(2, 1, 5.0) is None and t.active(2) == 0
    assert t.unreachable(2, 0, 5.1) is None and t.active(2) == 0     # both refused: nothing better


def test_a_path_left_for_the_peer_is_tried_again_if_its_frames_never_say_so():
    """Both sides on the backup, each having left path 0 for the other (the
    frame that would have said "back" lost): after RETRY_LEFT_S, back anyway."""
    from meshd.sync.paths import RETRY_LEFT_S
    t = table(timeout=1.0, ret=2.0)
    beat(t, (0, 1), 0.0, 10.0, own=0)
    assert [s.new for _, s in beat(t, (0, 1), 10.0, 12.0, own=1)] == [1]      # followed at 11.0
    back = beat(t, (0, 1), 12.0, 11.0 + RETRY_LEFT_S + 1.0)                  # heartbeats only
    assert [(at, s.new) for at, s in back] == [(11.0 + RETRY_LEFT_S, 0)], back


def test_a_switch_sends_our_about_at_once():
    c = Cluster(mesh([1, 2], commit="takeover"), seed=4)
    c.start_all()
    c.run_for(0.5)
    core = c.nodes[1].sync
    assert core.about_identity is not None and core.about_at > c.now
    core.about_soon(c.now)
    assert core.next_deadline() <= c.now
    sent = core.frames_sent["ABOUT"]
    core.handle_timer(c.now)
    assert core.frames_sent["ABOUT"] == sent + 1
