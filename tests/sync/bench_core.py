#!/usr/bin/env python3
"""Benchmarks of the sync core, run by hand (not collected by pytest):

    python3 tests/sync/bench_core.py            # everything
    python3 tests/sync/bench_core.py events     # local events -> sealed frames, receive side
    python3 tests/sync/bench_core.py memory     # bytes per entry, internal and external caches
    python3 tests/sync/bench_core.py converge   # 50k entries at 20% and 50% loss, simulated time

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


def main(argv: list[str]) -> int:
    what = set(argv) or {"events", "memory", "converge"}
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
