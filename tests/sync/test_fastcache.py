"""The caches' C loops (meshd/_fastcache.c) against their Python twins (meshd/sync/cache.py).

Random sequences of batches and frames go through two caches, one with the
accelerator and one without, and everything they leave behind is compared:
the bucket dicts, the digests, stamps, floors, the tombstones *in their
order* (the GC walks them in insertion order), the counters, and what each
call returned. The digests are also checked against a recomputation from
scratch (digest.entry_hash), so both cannot be wrong the same way.
"""

from __future__ import annotations

import os
import shutil
import sysconfig

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.sync import DESTROY, NEW, UPDATE
from meshd.sync import cache as cache_mod
from meshd.sync.cache import STAMP_LEN, ExternalCache, InternalCache
from meshd.sync.digest import DIGEST_MASK, bucket_of, entry_hash

fast = cache_mod._accelerator()
needs_fast = pytest.mark.skipif(fast is None, reason="meshd._fastcache is not built")


def test_the_accelerator_is_built_where_it_can_be():
    """scripts/setup builds it (CI runs as root with gcc and Python.h): a
    build that silently fell back to Python would make every other test here
    skip, so where a compiler and the headers exist it must be importable."""
    headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if shutil.which("gcc") is None or not headers or not os.path.exists("/usr/include/zlib.h"):
        pytest.skip("no compiler, Python.h or zlib.h here: the pure Python runs")
    if os.environ.get("MESHD_PURE_PYTHON") == "1":
        pytest.skip("MESHD_PURE_PYTHON=1")
    assert fast is not None, "gcc, Python.h and zlib.h are here but meshd._fastcache was not built"


def _pair(cls, *args):
    a, b = cls(*args), cls(*args)
    a.fast, b.fast = fast, None
    return a, b


def _digests_from_scratch(c, stamped: bool) -> list[int]:
    sums = [0] * len(c.buckets)
    for b, d in enumerate(c.buckets):
        for k, v in d.items():
            sums[b] += entry_hash(k, v[:-STAMP_LEN] if stamped else v)
    return [s & DIGEST_MASK for s in sums]


# A small key space, so that records hit the same flows again: updates,
# deletes of what is there, deletes of what is not, stale stamps.
keys = st.sampled_from([bytes([i]) * (16 if i % 3 else 40) for i in range(24)])
attrs = st.one_of(st.none(), st.binary(min_size=0, max_size=60))


@needs_fast
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(keys, attrs), max_size=12),
                          st.integers(min_value=0, max_value=40), st.booleans(),
                          st.sampled_from(["apply", "sweep", "forget"])), max_size=25),
       st.integers(min_value=1, max_value=8))
def test_external_apply_is_the_python_loop(frames, limit):
    c, py = _pair(ExternalCache, limit)
    for records, stamp, report, op in frames:
        if op == "apply":
            assert c.apply(tuple(records), stamp, report) == py.apply(tuple(records), stamp, report)
        elif op == "sweep":
            b = bucket_of(records[0][0]) if records else 0
            assert c.sweep(b, stamp) == py.sweep(b, stamp)
        else:
            c.forget_tombstones_upto(stamp)
            py.forget_tombstones_upto(stamp)
        assert c.buckets == py.buckets
        assert c.digests == py.digests == _digests_from_scratch(c, stamped=True)
        assert c.last_stamp == py.last_stamp and c.floor == py.floor
        assert list(c.tombstones.items()) == list(py.tombstones.items())
        assert (c.stale, c.tombstones_dropped) == (py.stale, py.tombstones_dropped)


@needs_fast
@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from([NEW, UPDATE, DESTROY]), keys,
                                   st.binary(min_size=1, max_size=60)), max_size=12), max_size=25),
       st.integers(min_value=20, max_value=90))
def test_internal_apply_is_the_python_loop(batches, max_record):
    c, py = _pair(InternalCache, max_record)
    for batch in batches:
        events = [(k, key, None if k == DESTROY else a) for k, key, a in batch]
        assert c.apply_events(events) == py.apply_events(events)
        assert c.buckets == py.buckets
        assert c.digests == py.digests == _digests_from_scratch(c, stamped=False)
        assert c.oversized == py.oversized


@needs_fast
def test_bad_records_are_refused_before_the_bucket_is_touched():
    c = ExternalCache()
    c.fast = fast
    with pytest.raises(TypeError):
        c.apply([(b"k" * 16, "not bytes")], 1)
    with pytest.raises(TypeError):
        c.apply([(b"k" * 16,)], 1)
    assert len(c) == 0 and not any(c.digests)
