"""Replay protection: per-sender epoch, 64-bit counter, 1024-wide sliding window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.replay import WINDOW, ReplayGuard

S = (1, 10)   # (node id, group id)


def offer(guard: ReplayGuard, epoch: int, counter: int, sender=S) -> str | None:
    """What the daemon does: check, and record only what passed."""
    why = guard.check(sender, epoch, counter)
    if why is None:
        guard.accept(sender, epoch, counter)
    return why


def test_window_is_1024():
    assert WINDOW == 1024
    assert ReplayGuard().window == 1024


def test_fresh_sender_and_increasing_counters_accepted():
    g = ReplayGuard()
    assert offer(g, 5, 1) is None
    assert offer(g, 5, 2) is None
    assert offer(g, 5, 1000) is None
    assert offer(g, 5, 2**64 - 1) is None


def test_check_does_not_record():
    g = ReplayGuard()
    assert g.check(S, 5, 1) is None
    assert g.check(S, 5, 1) is None
    g.accept(S, 5, 1)
    assert g.check(S, 5, 1) == "replayed"


def test_duplicate_refused():
    g = ReplayGuard()
    assert offer(g, 5, 7) is None
    assert offer(g, 5, 7) == "replayed"
    assert offer(g, 5, 8) is None
    assert offer(g, 5, 7) == "replayed"
    assert offer(g, 5, 8) == "replayed"


def test_reordered_within_window_accepted_once():
    g = ReplayGuard()
    assert offer(g, 5, 2000) is None
    for c in (1997, 1999, 1998, 2000 - WINDOW + 1):
        assert offer(g, 5, c) is None, c
        assert offer(g, 5, c) == "replayed", c
    # The newest and the missing ones in between are still tracked correctly.
    assert offer(g, 5, 1996) is None
    assert offer(g, 5, 2001) is None
    assert offer(g, 5, 1997) == "replayed"
    assert offer(g, 5, 2000 - WINDOW + 1) == "outside window"   # slid out after 2001


def test_outside_window_refused():
    g = ReplayGuard()
    assert offer(g, 5, 5000) is None
    assert offer(g, 5, 5000 - WINDOW) == "outside window"
    assert offer(g, 5, 5000 - WINDOW + 1) is None
    assert offer(g, 5, 1) == "outside window"


def test_big_jump_forgets_the_old_window():
    g = ReplayGuard()
    for c in range(1, 50):
        assert offer(g, 5, c) is None
    assert offer(g, 5, 10_000) is None
    assert offer(g, 5, 10_000 - 1) is None         # never seen, inside the window
    assert offer(g, 5, 49) == "outside window"


def test_old_epoch_refused():
    g = ReplayGuard()
    assert offer(g, 6, 1) is None
    assert offer(g, 5, 10**6) == "old epoch"
    assert offer(g, 5, 1) == "old epoch"


def test_new_epoch_resets_the_counter():
    g = ReplayGuard()
    assert offer(g, 5, 10_000) is None
    assert offer(g, 6, 1) is None                   # sender restarted: counter from 1
    assert offer(g, 6, 1) == "replayed"
    assert offer(g, 6, 2) is None
    assert offer(g, 5, 10_001) == "old epoch"       # the previous boot is closed


def test_senders_are_independent():
    g = ReplayGuard()
    assert offer(g, 5, 10, sender=(1, 10)) is None
    assert offer(g, 5, 10, sender=(1, 11)) is None   # same node, other group
    assert offer(g, 5, 10, sender=(2, 10)) is None   # other node, same group
    assert offer(g, 4, 10, sender=(2, 11)) is None
    assert offer(g, 5, 10, sender=(1, 10)) == "replayed"


def test_snapshot_restore_refuses_at_or_below_the_mark():
    g = ReplayGuard()
    for c in (1, 2, 3, 10, 8):
        assert offer(g, 5, c) is None
    offer(g, 7, 20, sender=(2, 10))
    marks = g.snapshot()
    assert marks == {S: (5, 10), (2, 10): (7, 20)}

    r = ReplayGuard()          # the receiver restarted
    r.restore(marks)
    # Everything at or below the mark is refused, even counters never seen
    # before the restart (9 was missing): the window's bits were not persisted.
    for c in (1, 8, 9, 10):
        assert offer(r, 5, c) == "replayed", c
    assert offer(r, 4, 100) == "old epoch"
    assert offer(r, 5, 11) is None
    assert offer(r, 5, 11) == "replayed"
    assert offer(r, 5, 10) == "replayed"
    assert offer(r, 7, 20, sender=(2, 10)) == "replayed"
    assert offer(r, 8, 1, sender=(2, 10)) is None    # a new boot of the sender is fine
    assert offer(r, 1, 1, sender=(3, 10)) is None    # unknown sender: fresh


def test_snapshot_round_trips():
    g = ReplayGuard()
    offer(g, 5, 3)
    r = ReplayGuard()
    r.restore(g.snapshot())
    assert r.snapshot() == g.snapshot()


# ----------------------------------------------------------------- properties

pairs = st.tuples(st.integers(0, 3), st.integers(0, 3 * WINDOW))
steps = st.lists(st.one_of(pairs, st.just("restart")), max_size=300)


@settings(max_examples=300)
@given(steps)
def test_never_accepts_the_same_pair_twice(ops):
    """Whatever arrives, in any order, and across receiver restarts."""
    g = ReplayGuard()
    accepted: set[tuple[int, int]] = set()
    for op in ops:
        if op == "restart":
            marks = g.snapshot()
            g = ReplayGuard()
            g.restore(marks)
            continue
        if offer(g, *op) is None:
            assert op not in accepted
            accepted.add(op)


class Model:
    """The documented semantics with a plain set instead of a bitmask."""

    def __init__(self, window: int):
        self.window = window
        self.epoch: int | None = None
        self.high = 0
        self.seen: set[int] = set()

    def offer(self, epoch: int, counter: int) -> str | None:
        if self.epoch is None or epoch > self.epoch:
            self.epoch, self.high, self.seen = epoch, counter, {counter}
            return None
        if epoch < self.epoch:
            return "old epoch"
        if counter > self.high:
            self.high = counter
            self.seen.add(counter)
            return None
        if self.high - counter >= self.window:
            return "outside window"
        if counter in self.seen:
            return "replayed"
        self.seen.add(counter)
        return None


@settings(max_examples=300)
@given(st.integers(1, 64),
       st.lists(st.tuples(st.integers(0, 2), st.integers(1, 200)), max_size=300))
def test_matches_a_set_based_model(window, ops):
    g = ReplayGuard(window=window)
    m = Model(window)
    for epoch, counter in ops:
        assert offer(g, epoch, counter) == m.offer(epoch, counter), (epoch, counter)


@given(st.integers(1, 2**64 - 1), st.integers(1, 2**64 - 1))
def test_full_64_bit_counters(a, b):
    g = ReplayGuard()
    assert offer(g, 1, a) is None
    assert offer(g, 1, a) == "replayed"
    r = offer(g, 1, b)
    if b == a:
        assert r == "replayed"
    elif b > a or a - b < WINDOW:
        assert r is None
    else:
        assert r == "outside window"
