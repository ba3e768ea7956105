#!/usr/bin/env python3
"""Benchmarks of the sync core, run by hand (not collected by pytest):

    python3 tests/sync/bench_core.py            # everything
    python3 tests/sync/bench_core.py events     # local events -> sealed frames, receive side
    python3 tests/sync/bench_core.py memory     # bytes per entry, internal and external caches
    python3 tests/sync/bench_core.py converge   # 50k entries at 20% and 50% loss, simulated time
    python3 tests/sync/bench_core.py levers     # issue 14's levers that predate it, measured

`events`: 100k NEW events (keys 13-40 bytes, attrs 80-250 bytes) through
local_events in batches, as the ctnetlink reader delivers them; CPU time of
packing, sealing and "sending" (building SendFrame actions), then the same
frames through a receiving core.  Then 100k UPDATEs of the same flows.

`memory`: tracemalloc of an internal and an external cache of 100k and 200k
entries (attrs 150 bytes, the middle of the 80-250 range), bytes per entry
including every Python object, minus nothing.

`converge`: two nodes of the simulated cluster (tests/sim/cluster/); node 1 gets 50k flows at
25k/s (what ctnetlink injection reached on the lab VM), with 20% or 50%
random loss both ways; we report when node 2's copy equals node 1's table,
counted from the end of the injection, in simulated seconds.
"""

from __future__ import annotations

import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from meshd.crypto import SYNC_INFO, KeyRing
from meshd.sync import NEW, UPDATE, SendFrame, SyncCore
from meshd.sync.cache import ExternalCache, InternalCache

KEYS = KeyRing.from_secrets({1: b"bench secret bench secret bench!"}, 1, SYNC_INFO)


def flows(n: int, rng: random.Random, attr_len=(80, 250)):
    keys = [i.to_bytes(6, "big") + rng.randbytes(rng.randint(7, 34)) for i in range(n)]
    attrs = [rng.randbytes(rng.randint(*attr_len)) for _ in range(n)]
    return keys, attrs


def prove_each_other(a: SyncCore, b: SyncCore, now: float) -> float:
    """Heartbeats both ways until each has proved the other (proto/sync.md,
    3.1): a receiver applies no DATA of a peer before.  Returns the time."""
    def frames(actions) -> list[bytes]:
        return [x.data for x in actions if type(x) is SendFrame]

    fa, fb = frames(a.start(now)), frames(b.start(now))
    for _ in range(6):
        now += 0.3
        to_a = [x for f in fb for x in a.receive(f, b.node_id, now)]
        to_b = [x for f in fa for x in b.receive(f, a.node_id, now)]
        fa, fb = frames(to_a + a.handle_timer(now)), frames(to_b + b.handle_timer(now))
    return now


def bench_events(n: int = 100_000, batch: int = 256) -> None:
    rng = random.Random(1)
    keys, attrs = flows(n, rng)
    sender = SyncCore(1, [2], KEYS, 1)
    receiver = SyncCore(2, [1], KEYS, 1)
    prove_each_other(sender, receiver, 0.0)
    events = [(NEW, k, a) for k, a in zip(keys, attrs)]
    batches = [events[i:i + batch] for i in range(0, n, batch)]
    gc.collect()
    frames: list[bytes] = []
    t0 = time.process_time()
    for i, b in enumerate(batches):
        for a in sender.local_events(b, 2 + i * 0.001):
            if type(a) is SendFrame:
                frames.append(a.data)
    dt = time.process_time() - t0
    nbytes = sum(map(len, frames))
    print(f"local NEW:    {n} events in {dt:.3f} s CPU = {n / dt:,.0f} events/s; "
          f"{len(frames)} frames, {n / len(frames):.1f} records/frame, "
          f"{nbytes / n:.0f} wire bytes/record (attrs avg {sum(map(len, attrs)) / n:.0f})")
    t0 = time.process_time()
    for f in frames:
        receiver.receive(f, 1, 2.5)
    dt = time.process_time() - t0
    got = len(receiver.peers[1].ext)
    print(f"receive NEW:  {len(frames)} frames, {got} records applied in {dt:.3f} s CPU = "
          f"{got / dt:,.0f} records/s")

    upd = [(UPDATE, k, rng.randbytes(len(a))) for k, a in zip(keys, attrs)]
    batches = [upd[i:i + batch] for i in range(0, n, batch)]
    frames = []
    t0 = time.process_time()
    for i, b in enumerate(batches):
        for a in sender.local_events(b, 3 + i * 0.001):
            if type(a) is SendFrame:
                frames.append(a.data)
    dt = time.process_time() - t0
    print(f"local UPDATE: {n} events in {dt:.3f} s CPU = {n / dt:,.0f} events/s")
    t0 = time.process_time()
    for f in frames:
        receiver.receive(f, 1, 3.5)
    dt = time.process_time() - t0
    print(f"receive UPDATE: {len(frames)} frames in {dt:.3f} s CPU = {n / dt:,.0f} records/s")

    # Coalescing: the same 10k flows updated 10 times within each batch.
    few = keys[:1000]
    coalesce = [(UPDATE, rng.choice(few), rng.randbytes(150)) for _ in range(n)]
    before = sender.counters["records sent live"]
    t0 = time.process_time()
    for i in range(0, n, 10_000):
        sender.local_events(coalesce[i:i + 10_000], 4 + i * 1e-6)
    dt = time.process_time() - t0
    sent = sender.counters["records sent live"] - before
    print(f"coalescing:   {n} UPDATEs on 1000 flows, batches of 10k: {sent} records sent, "
          f"{dt:.3f} s CPU = {n / dt:,.0f} events/s")


def bench_memory(n: int) -> None:
    """Everything the cache keeps alive is allocated inside the traced window:
    the key and attrs bytes (they arrive from netlink or msgpack), the dicts,
    the digests; the event and record lists are dropped before measuring."""
    for name in ("internal", "external"):
        rng = random.Random(2)
        gc.collect()
        tracemalloc.start()
        if name == "internal":
            cache = InternalCache(2000)
            for i in range(0, n, 1000):
                cache.apply_events([(NEW, j.to_bytes(6, "big") + rng.randbytes(rng.randint(7, 34)),
                                     rng.randbytes(150)) for j in range(i, i + 1000)])
        else:
            cache = ExternalCache()
            for i in range(0, n, 8):
                cache.apply([(j.to_bytes(6, "big") + rng.randbytes(rng.randint(7, 34)),
                              rng.randbytes(150)) for j in range(i, i + 8)], i + 1)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        per = current / n
        key_len = sum(len(k) for d in cache.buckets for k in d) / n
        print(f"memory {name:8s} {n:>7} entries: {per:.0f} bytes/entry "
              f"(payload: key {key_len:.0f} + attrs 150 bytes; Python overhead {per - key_len - 150:.0f})")
        del cache


def bench_converge(entries: int = 50_000, rate: float = 25_000.0) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))
    from cluster import Cluster, mesh
    for loss in (0.2, 0.5):
        c = Cluster(mesh([1, 2], commit="takeover"), seed=7, loss=loss, delay=0.0005, jitter=0.0005,
                    capture=False)
        c.start_all()
        c.run_for(0.5)
        per_batch = 250
        batches = entries // per_batch
        for i in range(batches):
            c.at(c.now + i * per_batch / rate, c.create, 1, per_batch)
        t_end = c.now + batches * per_batch / rate
        t0 = time.process_time()
        c.run_until(t_end)
        at = c.run_for(120, c.converged, 0.05)
        cpu = time.process_time() - t0
        n = len(c.nodes[1].kernel.local)
        s = c.nodes[1].sync.stats(c.now)
        print(f"converge {n} entries, {loss:.0%} loss: "
              + (f"converged {at - t_end:.2f} s (simulated) after the injection ended"
                 if at is not None else "NOT converged after 120 s: " + "; ".join(c.differences()))
              + f"; {s['counters'].get('frames resent', 0)} frames resent; "
                f"{sum(s['frames_sent'].values())} frames sent; sim CPU {cpu:.1f} s")


def _best(fn, reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def bench_levers(n: int = 60_000) -> None:
    """Issue 14's levers that were in the design before it, each against its alternative.

    key only: the hot path's decode (key, a few fields, attrs kept as bytes)
    against the full decode of every attribute (parse.py, what `meshctl dump`
    uses), on the captured kernel messages of proto/vectors/ctnetlink.json.
    msgpack per frame: one packb of a frame's records against one per record.
    cache: the per-record loops in C (meshd/_fastcache.c) against Python.
    coalescing: NEW then DESTROY of a flow inside one batch costs no record.
    """
    import json

    import msgpack

    from meshd.kernel import ctnetlink as ct
    from meshd.kernel.ctnetlink.parse import parse_entry
    from meshd.sync import DESTROY
    from meshd.sync import cache as cache_mod

    vectors = json.loads((Path(__file__).resolve().parents[2] / "proto/vectors/ctnetlink.json").read_text())
    msgs = [bytes.fromhex(v["hex"]) for v in vectors["vectors"] if v["name"].startswith(("ipv4", "ipv6", "snat"))]
    msgs = (msgs * (n // len(msgs) + 1))[:n]
    key_only = _best(lambda: [ct.decode_events(m) for m in msgs])
    events = [ct.decode_events(m)[0] for m in msgs]
    full = _best(lambda: [parse_entry(e.attrs) for e in events])
    print(f"key only:     {key_only / n * 1e6:.2f} us/event (decode_events) vs {full / n * 1e6:.2f} "
          f"(+ parse_entry of every attribute): the full decode costs {full / key_only:.1f}x the hot path's")

    rng = random.Random(2)
    keys, attrs = flows(n, rng)
    records = list(zip(keys, attrs))
    frames = [records[i:i + 6] for i in range(0, n, 6)]
    packer = msgpack.Packer(use_bin_type=True)
    per_frame = _best(lambda: [packer.pack((1, 2, 3, f, ())) for f in frames])
    per_record = _best(lambda: [b"".join(packer.pack(r) for r in f) for f in frames])
    print(f"msgpack:      {per_frame / n * 1e6:.2f} us/record with one packb per frame vs "
          f"{per_record / n * 1e6:.2f} with one per record")

    fast = cache_mod._accelerator()
    recs = tuple(records)
    gone = tuple((k, None) for k in keys)
    for name, impl in (("C", fast), ("Python", None)):
        if name == "C" and impl is None:
            print("cache:        meshd._fastcache is not built")
            continue

        def run_ext():
            c = ExternalCache()
            c.fast = impl
            for i in range(0, n, 6):
                c.apply(recs[i:i + 6], 1 + i)
            for i in range(0, n, 6):
                c.apply(gone[i:i + 6], n + 1 + i)

        def run_int():
            c = InternalCache(1200)
            c.fast = impl
            for i in range(0, n, 64):
                c.apply_events([(NEW, k, a) for k, a in records[i:i + 64]])
            for i in range(0, n, 64):
                c.apply_events([(DESTROY, k, None) for k, _a in records[i:i + 64]])

        print(f"cache ({name}): external {_best(run_ext) / (2 * n) * 1e6:.2f} us/record, "
              f"internal {_best(run_int) / (2 * n) * 1e6:.2f} us/event (NEW then DESTROY)")

    sender = SyncCore(1, [2], KEYS, 1)
    receiver = SyncCore(2, [1], KEYS, 1)
    prove_each_other(sender, receiver, 0.0)
    pairs = [[(NEW, k, a), (DESTROY, k, None)] for k, a in records[:10_000]]
    before = sender.counters["records sent live"]
    t = _best(lambda: [sender.local_events(b, 3.0) for b in pairs], reps=1)
    print(f"coalescing:   10000 flows with NEW and DESTROY in one batch: "
          f"{sender.counters['records sent live'] - before} records sent, {t / 10_000 * 1e6:.2f} us/flow")


def main(argv: list[str]) -> int:
    what = set(argv) or {"events", "memory", "converge", "levers"}
    if "levers" in what:
        bench_levers()
    if "events" in what:
        bench_events()
    if "memory" in what:
        bench_memory(100_000)
        bench_memory(200_000)
    if "converge" in what:
        bench_converge()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
