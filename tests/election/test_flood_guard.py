"""The flood guard's decisions (sans-I/O): when it engages, what it admits,
how it estimates a flood it no longer sees, when it lets go."""

from __future__ import annotations

from meshd.floodguard import ENGAGE_PER_S, HOLD_S, SAMPLE_SHIFT, FloodGuard


def _flood(guard: FloodGuard, start: float, seconds: float, per_s: int, source=lambda i: f"192.0.2.{i % 250}"):
    """Rejects at `per_s` for `seconds`; the changes the guard asked for, with their times."""
    changes = []
    n = int(seconds * per_s)
    for i in range(n):
        now = start + i / per_s
        if guard.rejected(source(i), now):
            changes.append((round(now, 3), guard.engaged))
    return changes


def test_a_few_rejects_a_second_never_engage_it():
    g = FloodGuard()
    g.known(["192.0.2.2"], 0.0)
    assert _flood(g, 0.0, 60.0, 50) == []          # a misconfigured peer, say
    assert not g.engaged


def test_a_flood_engages_it_within_a_window_and_admits_the_known_senders():
    g = FloodGuard()
    g.known(["192.0.2.2", "192.0.2.3"], 0.0)
    g.tick(0.0)
    changes = _flood(g, 0.0, 0.5, 50_000)
    assert changes and changes[0][1] is True
    assert changes[0][0] < 0.05                     # the first thousand rejects: 20 ms at 50k/s
    assert g.admitted == ("192.0.2.2", "192.0.2.3")
    assert g.engagements == 1


def test_a_sender_learnt_while_engaged_is_admitted():
    g = FloodGuard()
    g.tick(0.0)
    _flood(g, 0.0, 0.1, 50_000)
    assert g.engaged and g.admitted == ()
    assert g.known(["198.51.100.7"], 0.2) is True    # the filter must be rebuilt
    assert g.admitted == ("198.51.100.7",)
    assert g.known(["198.51.100.7"], 0.3) is False   # nothing new


def test_while_engaged_the_sampled_rejects_stand_for_the_dropped_ones():
    """The kernel passes one in 64 of the flood: 50k/s arrive as ~780/s, which
    must still read as a flood, or the guard would let go while it rages."""
    g = FloodGuard()
    g.tick(0.0)
    _flood(g, 0.0, 0.1, 50_000)
    seen_per_s = 50_000 >> SAMPLE_SHIFT
    changes = _flood(g, 1.0, HOLD_S * 3, seen_per_s)
    assert changes == [] and g.engaged
    assert g.last_rate > ENGAGE_PER_S


def test_rejects_from_admitted_sources_count_once():
    """A known peer that is misconfigured (its adverts rejected, 10/s) does not
    keep the guard on forever."""
    g = FloodGuard()
    g.known(["192.0.2.2"], 0.0)
    g.tick(0.0)
    _flood(g, 0.0, 0.1, 50_000)
    changes = _flood(g, 1.0, HOLD_S + 3, 10, source=lambda i: "192.0.2.2")
    assert changes and changes[-1][1] is False
    assert not g.engaged and g.admitted == ()


def test_a_flood_that_stops_is_released_after_the_hold_by_the_ticks_alone():
    g = FloodGuard()
    g.tick(0.0)
    _flood(g, 0.0, 0.5, 50_000)
    assert g.engaged
    released = [t for t in range(1, 30) if g.tick(float(t))]
    # Quiet is judged per window: the hold starts a window or two after the flood ended.
    assert len(released) == 1 and HOLD_S <= released[0] <= 0.5 + HOLD_S + 3
    assert not g.engaged
    # And a second flood engages it again.
    _flood(g, 40.0, 0.1, 50_000)
    assert g.engaged and g.engagements == 2


def test_the_known_senders_are_bounded_newest_kept():
    g = FloodGuard()
    for i in range(100):
        g.known([f"10.0.{i}.1"], float(i))
    g.tick(100.0)
    _flood(g, 100.0, 0.1, 50_000)
    assert len(g.admitted) == 32 and "10.0.99.1" in g.admitted and "10.0.0.1" not in g.admitted
    assert g.status(101.0)["engaged"] is True


def test_a_fixed_list_of_senders_is_admitted_and_replaced_whole():
    """The state mesh's use: its configured peers, however many, replaced on reload."""
    g = FloodGuard()
    peers = [f"203.0.113.{i}" for i in range(1, 41)]     # more than MAX_SOURCES: all admitted
    assert g.set_known(peers) is False                  # not engaged: nothing to rebuild
    g.tick(0.0)
    _flood(g, 0.0, 0.1, 50_000)
    assert g.engaged and len(g.admitted) == 40
    assert g.set_known(["203.0.113.99"]) is True and g.admitted == ("203.0.113.99",)
