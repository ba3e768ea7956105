"""Runs the fuzz targets: a number of mutations each, from a seed; the tallies.

A target is `fn(world, rng, tally)`: one input (or, for `reorder`, one run
of inputs), its checks, its findings in `tally`.  The world (targets_wire.World,
a seeded cluster and its captured seeds) is made per target and made again
every WORLD_SPAN mutations from another seed, so a long run sees many
clusters and the state left by accepted reseals does not pile up.

Must not: decide what a finding is (the targets do).
"""

from __future__ import annotations

import random
import time

from .targets_input import TARGETS as INPUT_TARGETS
from .targets_relay import TARGETS as RELAY_TARGETS
from .targets_wire import TARGETS as WIRE_TARGETS
from .targets_wire import Tally, World

TARGETS = {**WIRE_TARGETS, **INPUT_TARGETS, **RELAY_TARGETS}
# Shares of a total (`--mutations N`): the cheap decoders get more.
WEIGHTS = {"advert_decoder": 0.2, "frame_decoder": 0.2, "election_core": 0.15, "sync_core": 0.1,
           "node_core": 0.1, "reorder": 0.05, "control": 0.1, "config": 0.1, "dns_idmap": 0.1}
WORLD_SPAN = 20_000


def split(total: int, names=None) -> dict[str, int]:
    names = list(names or WEIGHTS)
    weight = sum(WEIGHTS[n] for n in names)
    return {n: max(1, round(total * WEIGHTS[n] / weight)) for n in names}


def run_target(name: str, mutations: int, seed: int = 0) -> tuple[Tally, float]:
    """At least `mutations` inputs into one target; (its tally, seconds)."""
    fn = TARGETS[name]
    rng = random.Random(f"{name}/{seed}")
    tally = Tally()
    world = None
    made_at = -WORLD_SPAN
    started = time.perf_counter()
    while tally.mutations < mutations:
        if name in WIRE_TARGETS and tally.mutations - made_at >= WORLD_SPAN:
            world = World(seed * 1000 + tally.mutations // WORLD_SPAN + 1)
            made_at = tally.mutations
        fn(world, rng, tally)
    return tally, time.perf_counter() - started
