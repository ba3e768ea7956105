"""Caches, digests and sequence streams of the sync core, one piece at a time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.sync.actions import DESTROY, NEW, UPDATE
from meshd.sync.cache import STAMP_LEN, ExternalCache, InternalCache
from meshd.sync.digest import (DIGEST_MASK, NBUCKETS, bitmap_to_buckets, bucket_of,
                               buckets_to_bitmap, entry_hash, pack_digests, unpack_digests)
from meshd.sync.stream import InboundStream, OutboundStream, bitmap_to_seqs, seqs_to_bitmap


def digests_from_scratch(pairs) -> list[int]:
    d = [0] * NBUCKETS
    for k, a in pairs:
        b = bucket_of(k)
        d[b] = (d[b] + entry_hash(k, a)) & DIGEST_MASK
    return d


# ----------------------------------------------------------------- digests

def test_entry_hash_is_the_documented_formula():
    import zlib
    k, a = b"\x06key", b"attrs" * 10
    data = k + a
    assert entry_hash(k, a) == ((zlib.crc32(data) << 32) | zlib.adler32(data)) ^ len(k)
    # (key, attrs) pairs with the same concatenation still differ.
    assert entry_hash(b"ab", b"cd") != entry_hash(b"a", b"bcd")


def test_same_bit_flip_in_two_entries_does_not_cancel():
    """The reason for a sum rather than an XOR (see digest.py)."""
    rng = random.Random(5)
    for _ in range(200):
        ka, kb = rng.randbytes(13), rng.randbytes(13)
        a, b = bytearray(rng.randbytes(100)), bytearray(rng.randbytes(100))
        pos, bit = rng.randrange(100), 1 << rng.randrange(8)
        a[pos] &= ~bit
        b[pos] &= ~bit
        a2, b2 = bytes(a[:pos]) + bytes([a[pos] | bit]) + bytes(a[pos + 1:]), \
            bytes(b[:pos]) + bytes([b[pos] | bit]) + bytes(b[pos + 1:])
        before = (entry_hash(ka, bytes(a)) + entry_hash(kb, bytes(b))) & DIGEST_MASK
        after = (entry_hash(ka, a2) + entry_hash(kb, b2)) & DIGEST_MASK
        assert before != after


def test_digest_and_bitmap_helpers():
    ds = [0, 1, 2**64 - 1, 0x0123456789ABCDEF]
    assert unpack_digests(pack_digests(ds)) == ds
    assert bitmap_to_buckets(buckets_to_bitmap([0, 7, 8, 255])) == [0, 7, 8, 255]
    assert len(buckets_to_bitmap([])) == 32
    assert bitmap_to_seqs(100, seqs_to_bitmap(100, [100, 103, 115])) == [100, 103, 115]
    assert seqs_to_bitmap(5, [5, 12]) == b"\x81"


# ----------------------------------------------------------------- internal cache

def test_coalescing_within_a_batch():
    c = InternalCache(1000)
    assert c.apply_events([(NEW, b"k1", b"a"), (UPDATE, b"k1", b"b")]) == [(b"k1", b"b")]
    # NEW + DESTROY of a flow the cache did not hold: peers never hear of it.
    assert c.apply_events([(NEW, b"k2", b"x"), (DESTROY, b"k2", None)]) == []
    # DESTROY + NEW of a flow it held: one upsert.
    assert c.apply_events([(DESTROY, b"k1", None), (NEW, b"k1", b"c")]) == [(b"k1", b"c")]
    # NEW + DESTROY of a flow it held (an old incarnation): one delete.
    assert c.apply_events([(NEW, b"k1", b"d"), (DESTROY, b"k1", None)]) == [(b"k1", None)]
    # An UPDATE that changes nothing, a DESTROY of an unknown flow: nothing.
    c.apply_events([(NEW, b"k3", b"e")])
    assert c.apply_events([(UPDATE, b"k3", b"e"), (DESTROY, b"nope", None)]) == []
    assert dict(c.items()) == {b"k3": b"e"}


def test_invalid_events_change_nothing():
    c = InternalCache(1000)
    c.apply_events([(NEW, b"k", b"a")])
    for bad in ([(NEW, b"k2", b"x"), (9, b"k", b"a")], [(NEW, b"k2", None)], [(UPDATE, b"", b"a")]):
        with pytest.raises(ValueError):
            c.apply_events(bad)
        assert dict(c.items()) == {b"k": b"a"}


def test_oversized_entries_are_refused_and_counted():
    c = InternalCache(50)
    assert c.apply_events([(NEW, b"k", b"x" * 100)]) == []
    assert c.oversized == 1 and len(c) == 0
    c.apply_events([(NEW, b"k", b"small")])
    assert c.apply_events([(UPDATE, b"k", b"x" * 100)]) == [(b"k", None)]   # its last state is gone
    assert c.oversized == 2


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from([NEW, UPDATE, DESTROY]), st.integers(0, 30),
                          st.binary(min_size=1, max_size=6)), max_size=80),
       st.integers(1, 10))
def test_internal_cache_is_a_dict_with_exact_digests(events, batch):
    c = InternalCache(1000)
    model: dict[bytes, bytes] = {}
    evs = [(k, i.to_bytes(2, "big"), None if k == DESTROY else a) for k, i, a in events]
    for i in range(0, len(evs), batch):
        before = dict(model)
        for kind, key, attrs in evs[i:i + batch]:
            if kind == DESTROY:
                model.pop(key, None)
            else:
                model[key] = attrs
        changed = c.apply_events(evs[i:i + batch])
        # The net change of the batch, each key once.
        expect = {k: model.get(k) for k in before.keys() | model.keys() if before.get(k) != model.get(k)}
        assert dict(changed) == expect and len(changed) == len(expect)
        assert dict(c.items()) == model
        assert c.digests == digests_from_scratch(model.items())


def test_diff_gives_the_events_to_a_table():
    c = InternalCache(1000)
    c.apply_events([(NEW, b"a", b"1"), (NEW, b"b", b"2"), (NEW, b"c", b"3")])
    table = {b"a": b"1", b"b": b"20", b"d": b"4"}
    c.apply_events(c.diff(table))
    assert dict(c.items()) == table


# ----------------------------------------------------------------- external cache

def ext_dict(e: ExternalCache) -> dict:
    return dict(e.items())


def test_stamps_order_records():
    e = ExternalCache()
    e.apply([(b"k", b"new")], 10)
    e.apply([(b"k", b"old")], 5)               # late frame: stale
    assert ext_dict(e) == {b"k": b"new"} and e.stale == 1
    e.apply([(b"k", None)], 12)
    e.apply([(b"k", b"older")], 11)            # late upsert after a delete: the tombstone wins
    assert ext_dict(e) == {} and e.stale == 2
    e.apply([(b"k", b"again")], 13)
    assert ext_dict(e) == {b"k": b"again"} and not e.tombstones
    e.apply([(b"k", b"dup")], 13)              # the same stamp twice: not newer
    assert ext_dict(e) == {b"k": b"again"}


def test_tombstones_are_forgotten_behind_the_window():
    e = ExternalCache()
    e.apply([(b"a", None), (b"b", None)], 5)
    e.apply([(b"c", None)], 9)
    e.forget_tombstones_upto(5)
    assert e.tombstones == {b"c": 9}


def test_tombstone_limit_drops_oldest():
    e = ExternalCache(tombstone_limit=3)
    for i in range(5):
        e.apply([(bytes([i]), None)], i + 1)
    assert len(e.tombstones) == 3 and e.tombstones_dropped == 2


def test_sweep_drops_what_the_snapshot_did_not_refresh():
    e = ExternalCache()
    keys = [i.to_bytes(3, "big") for i in range(4096)]
    b = bucket_of(keys[0])
    same = [k for k in keys if bucket_of(k) == b]
    assert len(same) >= 2
    e.apply([(k, b"v") for k in same], 3)
    e.apply([(same[0], b"refreshed")], 10)     # in the repair (stamp >= 10)
    deleted = e.sweep(b, 10)
    assert ext_dict(e) == {same[0]: b"refreshed"}
    assert sorted(k for k, _ in deleted) == sorted(same[1:])
    assert e.floor[b] == 10
    e.apply([(same[1], b"late")], 8)           # older than the sweep: refused
    assert same[1] not in ext_dict(e)
    assert e.digests == digests_from_scratch(e.items())


def test_new_origin_epoch_keeps_entries_but_makes_them_oldest():
    e = ExternalCache()
    e.apply([(b"a", b"1"), (b"b", b"2")], 1000)
    e.apply([(b"c", None)], 1001)
    e.new_origin_epoch()
    assert ext_dict(e) == {b"a": b"1", b"b": b"2"} and not e.tombstones
    e.apply([(b"a", b"new epoch")], 1)         # counter 1 of the new epoch beats anything old
    assert ext_dict(e)[b"a"] == b"new epoch"
    assert all(v[-STAMP_LEN:] == bytes(8) for k, v in e.buckets[bucket_of(b"b")].items() if k == b"b")


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 20), st.one_of(st.none(), st.binary(min_size=1, max_size=5))),
                max_size=60), st.randoms())
def test_external_cache_converges_to_the_newest_stamp_whatever_the_order(records, rnd):
    """Frames in any order (and duplicated) leave each key at its newest state."""
    frames = [([(i.to_bytes(1, "big"), a)], stamp) for stamp, (i, a) in enumerate(records, start=1)]
    shuffled = frames + frames[: len(frames) // 3]
    rnd.shuffle(shuffled)
    e = ExternalCache()
    for recs, stamp in shuffled:
        e.apply(recs, stamp)
    newest: dict[bytes, bytes | None] = {}
    for recs, stamp in frames:
        for k, a in recs:
            newest[k] = a
    assert ext_dict(e) == {k: a for k, a in newest.items() if a is not None}
    assert e.digests == digests_from_scratch(e.items())


# ----------------------------------------------------------------- streams

def test_outbound_hold_release_take_evict():
    s = OutboundStream(limit=10)
    for _ in range(3):
        seq = s.next_seq()
        assert s.hold(seq, (b"a", b"b", b"c"), (), ()) == 0
    assert s.held_items == 9
    assert s.take(2) is not None and s.take(2) is None
    seq = s.next_seq()
    assert s.hold(seq, (b"x",) * 5, (), ()) == 1          # evicts 1, the oldest held
    assert s.low == 2 and s.held_items == 8 and list(s.held) == [3, 4]
    s.release_upto(3)
    assert list(s.held) == [4] and s.held_items == 5


def test_inbound_missing_and_resolution():
    r = InboundStream(anchored=True, max_gap=100)
    r.receive(1, 0.0)
    r.receive(4, 0.0)
    assert sorted(r.missing) == [2, 3] and r.resolved == 1
    r.receive(3, 0.1)
    r.learn_high(6, 0.1)                       # a heartbeat: 5 and 6 exist
    assert sorted(r.missing) == [2, 5, 6]
    r.supersede(5, 6, 0.2)
    assert sorted(r.missing) == [2] and r.high == 6
    r.receive(2, 0.3)
    assert r.resolved == 6 and not r.missing
    assert not r.receive(300, 0.4)              # a gap too large to list


def test_inbound_unanchored_then_anchored_by_a_bulk():
    r = InboundStream(anchored=False, max_gap=100)
    for s in (50, 52, 55):
        r.receive(s, 0.0)
    assert r.resolved == 0 and not r.missing
    assert r.anchor(51, 1.0)                   # the bulk covers <= 51
    assert sorted(r.missing) == [53, 54] and r.resolved == 52


def test_status_bitmap_rotates_through_a_long_missing_list():
    r = InboundStream(anchored=True, max_gap=10_000)
    r.receive(1, 0.0)
    for s in range(3, 2000, 2):
        r.receive(s, 0.0)
    missing = set(r.missing)
    seen: set[int] = set()
    after = 0
    for _ in range(10):
        cum, high, start, bitmap, after = r.status(1.0, 0.01, 32, after)
        assert cum == 1 and high == 1999
        seen |= set(bitmap_to_seqs(start, bitmap))
        if after == 0:
            break
    assert seen == missing
    # Too young to ask for: the frame may only be late.
    r2 = InboundStream(anchored=True, max_gap=100)
    r2.receive(3, 1.0)
    assert r2.status(1.005, 0.01, 32)[3] == b""


def test_memory_per_entry_stays_small():
    """tracemalloc with a generous bound; bench_core.py measures 100k/200k (about 290-298)."""
    import gc
    import tracemalloc
    n = 20_000
    rng = random.Random(3)
    for name in ("internal", "external"):
        gc.collect()
        tracemalloc.start()
        if name == "internal":
            cache = InternalCache(2000)
            cache.apply_events([(NEW, i.to_bytes(6, "big") + rng.randbytes(21), rng.randbytes(150))
                                for i in range(n)])
        else:
            cache = ExternalCache()
            for i in range(0, n, 8):
                cache.apply([(j.to_bytes(6, "big") + rng.randbytes(21), rng.randbytes(150))
                             for j in range(i, i + 8)], i + 1)
        gc.collect()
        per = tracemalloc.get_traced_memory()[0] / n
        tracemalloc.stop()
        assert per < 360, f"{name}: {per:.0f} bytes per entry (27 + 150 of payload)"
        del cache
