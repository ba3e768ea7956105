"""A redirect with nothing to serve moves the group's address to a node that can serve.

Every node runs its own health checks of the same backends and sees them
through its own network (the simulated node's `up` map: a backend may be up
for one node and down for another).  The redirect `www` demotes the group
`g1`, which holds its address, while no backend is up (HealthCore's Demote,
turned into the election's demotion by the node core).

Property, over many seeded runs of 2 or 3 nodes, each a random sequence of
steps (a node loses or regains some or all backends, or is killed or
restarted): SETTLE seconds after each step (enough for a check to fall or
rise and for the election to hand over), if a live node can serve (it sees
a backend up), exactly one node holds g1's address and it is one that can
serve.
"""

from __future__ import annotations

import random
import time

from cluster import Cluster, group, health, node, redirect, table

RUNS = 400
SETTLE = 2.0
BACKENDS = {"web1": "10.1.0.11", "web2": "10.1.0.12"}
RESULTS: list[str] = []


def texts(n_nodes: int) -> dict[int, str]:
    section = health(BACKENDS, (table("web", list(BACKENDS), interval_ms=500, fast_interval_ms=200,
                                      down_interval_ms=500, rise=2, fall=2),),
                     (redirect(demote="g1"),))
    return {n: node(n, [group(1, advskew=40 * (n - 1))], health=section) for n in range(1, n_nodes + 1)}


def can_serve(c: Cluster, n: int) -> bool:
    return c.nodes[n].alive and any(c.nodes[n].up.get(a, True) for a in BACKENDS.values())


def run(seed: int, steps: int = 5) -> tuple[int, list[str]]:
    """(steps checked where some node could not serve, violations) of one seeded run."""
    rng = random.Random(seed)
    c = Cluster(texts(rng.choice((2, 3))), seed=seed, jitter=0.002, capture=False)
    c.start_all()
    c.run_for(SETTLE)
    checked = 0
    violations = []
    for step in range(steps):
        n = rng.choice(c.ids)
        what = rng.random()
        if what < 0.75:
            down = rng.choice((list(BACKENDS.values()), [rng.choice(list(BACKENDS.values()))], []))
            for a in BACKENDS.values():
                c.nodes[n].up[a] = a not in down
            done = f"node {n} sees {down or 'nothing'} down"
        elif c.nodes[n].alive and len(c.alive()) > 1:
            c.kill(n)
            done = f"node {n} killed"
        elif not c.nodes[n].alive:
            c.restart(n)
            done = f"node {n} restarted"
        else:
            continue
        c.run_for(SETTLE)
        servers = {m for m in c.alive() if can_serve(c, m)}
        if not servers:
            continue
        checked += len(servers) < len(c.alive())
        holders = c.holders("g1")
        if len(holders) != 1 or not holders <= servers:
            violations.append(f"seed {seed} step {step} ({done}): g1 on {sorted(holders)}, "
                              f"can serve: {sorted(servers)}\n{c.timeline(c.now - SETTLE - 1, limit=20)}")
    return checked, violations


def test_a_redirect_with_nothing_to_serve_moves_the_address_to_a_node_that_can():
    started = time.process_time()
    checked = 0
    violations: list[str] = []
    for seed in range(RUNS):
        k, v = run(seed)
        checked += k
        violations += v
    cpu = time.process_time() - started
    RESULTS.append(f"{RUNS} runs, {checked} steps where a live node could not serve, {RUNS / cpu:.1f} runs/s")
    assert checked >= RUNS, "too few steps where the redirect mattered"
    assert not violations, "\n\n".join(violations[:3])


def test_report(capsys):
    """Not a check: what the runs above covered (pytest -s)."""
    with capsys.disabled():
        for line in RESULTS:
            print("\nredirect demotion: " + line)
