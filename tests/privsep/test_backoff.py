"""The restart back-off of a supervised child (time passed in)."""

import pytest

from meshd.privsep.backoff import Backoff


def test_doubles_from_half_a_second_to_thirty():
    b = Backoff()
    delays = []
    now = 0.0
    for _ in range(10):
        b.started(now)
        now += 0.1                        # dies at once
        d = b.died(now)
        delays.append(d)
        now += d
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert b.restarts == 10


def test_a_stable_run_resets_it():
    b = Backoff(first=0.5, limit=30, stable=30)
    for t in range(5):
        b.started(t)
        b.died(t + 0.5)
    assert b.died(10) == 16               # never started again: no reset
    b.started(100)
    assert b.died(129.9) == 30            # not quite stable
    b.started(200)
    assert b.died(230) == 0.5             # ran 30 s: back to the first delay
    b.started(231)
    assert b.died(231.1) == 1


def test_bad_parameters():
    with pytest.raises(ValueError):
        Backoff(first=0)
    with pytest.raises(ValueError):
        Backoff(first=5, limit=1)
