"""meshd/histogram.py: fixed buckets, `le` semantics, copies that do not move."""

import pytest

from meshd.histogram import Histogram


def test_values_fall_in_the_first_bucket_whose_bound_they_do_not_exceed():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    c = h.copy()
    assert c.counts == (2, 2, 1) and c.count == 5 == h.count
    assert c.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert c.total == pytest.approx(8.65)


def test_a_copy_does_not_follow_later_observations():
    h = Histogram((1.0,))
    c = h.copy()
    h.observe(0.5)
    assert c.count == 0 and h.copy().count == 1


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0)])
def test_bounds_must_ascend(bounds):
    with pytest.raises(ValueError, match="ascending"):
        Histogram(bounds)
