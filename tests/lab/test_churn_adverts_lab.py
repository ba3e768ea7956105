"""Adverts under a sustained churn (issue 14): while fw1 replicates 20k new
flows/s for 60 s, its 100 ms adverts keep coming and fw2 never takes over.

The state mesh and the election share the daemon's trio loop; a replication
burst that held the loop for 3 advert intervals would make the backup take
over a master that is alive (a duplicate address). This checks the
behaviour, not a timing: no transition on either node, fw1 sent at least
95% of the adverts 100 ms means over the minute and fw2 heard 95% of
those, the longest silence fw2 saw is printed, the churn really
replicated (the kept flows are in fw2's copy), and the rate really reached.
Root only (tests/lab/conftest.py).
"""

from __future__ import annotations

import threading
import time

import pytest

from meshlab import meshd_node as md
from meshlab import scenarios as sc

pytestmark = pytest.mark.lab

RATE = 20_000           # new flows/s, each deleted 2 s later: 40k events/s on fw1
SECONDS = 60
ADVBASE_MS = 100
KEEP_EVERY = 100        # every 100th flow stays: what fw2's copy must hold at the end
PARTS = 3               # one generator process reaches about 7.5k flows/s
COPIES = 3              # advert_copies' default: each advert goes out 3 times, each its own counter


def _groups(run_dir: str, n: int) -> dict[str, dict]:
    return {g["name"]: g for g in md.status(run_dir, n)["groups"]}


def test_adverts_keep_their_interval_while_20k_flows_per_second_replicate(meshd_ready, lab):
    names = sc.start_mesh(lab.procs, lab.topo, (1, 2), advbase_ms=ADVBASE_MS)
    sc.wait_mesh(lab.procs, (1, 2), names)
    before = {n: _groups(lab.run_dir, n) for n in (1, 2)}

    # fw2's view of fw1, sampled while the churn runs: the longest silence seen.
    worst_silence = {"s": 0.0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                for g in _groups(lab.run_dir, 2).values():
                    peer = g["peers"].get("1")
                    if peer:
                        worst_silence["s"] = max(worst_silence["s"], peer["last_seen_ago_s"])
            except Exception:       # a control answer that timed out under load: sample again
                pass
            done.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        r = sc.run_churn(lab.procs, lab.topo, 1, RATE, SECONDS, keep_every=KEEP_EVERY, parts=PARTS)
    finally:
        done.set()
        watcher.join(5)
    elapsed = time.monotonic() - t0
    after = {n: _groups(lab.run_dir, n) for n in (1, 2)}
    caught_up = sc.wait_caught_up(lab.run_dir, 1, (2,), 15)
    print(f"churn {r['rate']:.0f} flows/s for {SECONDS} s (late at most {r['late_max_s']:.2f} s); "
          f"fw2's longest silence of fw1 seen {worst_silence['s']:.3f} s; adverts received by fw2: "
          + ", ".join(f"{g} {after[2][g]['adverts']['received'] - before[2][g]['adverts']['received']}"
                      for g in names) + f" over {elapsed:.1f} s")

    for n in (1, 2):
        for g in names:
            assert after[n][g]["transitions"] == before[n][g]["transitions"], (n, g, after[n][g])
            assert after[n][g]["state"] == ("MASTER" if n == 1 else "BACKUP"), (n, g, after[n][g])
    expected = elapsed * 1000 / ADVBASE_MS * COPIES
    for g in names:
        sent = after[1][g]["adverts"]["sent"] - before[1][g]["adverts"]["sent"]
        received = after[2][g]["adverts"]["received"] - before[2][g]["adverts"]["received"]
        assert sent >= 0.95 * expected, (g, sent, expected)        # fw1 kept its interval
        assert received >= 0.95 * sent, (g, received, sent)        # and fw2 heard them
    assert r["created"] >= 0.95 * RATE * SECONDS and not r["failed"], r
    assert r["rate"] >= 0.9 * RATE, r            # the generator was not the bottleneck
    assert caught_up["reached"], caught_up      # and every kept flow reached fw2
    assert caught_up["seen"][2] >= r["kept"], (caught_up, r["kept"])
