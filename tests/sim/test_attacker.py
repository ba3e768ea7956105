"""No replayed or forged datagram changes any node's state.

The attacker sees every datagram (the simulation's capture) and, every few
milliseconds, hands one to a node: a replay of a captured advert or frame
to a node that has received it already (or to its sender), or a forgery (a
flipped bit, a truncation, random bytes, a valid advert or frame sealed with
another key, or with the right sender, epoch and a fresh counter but another
key), an extension (bytes appended), a splice (the head of one captured
datagram with the tail of another), or a reseal under the cluster key with
malformed contents (an advert with a bad type, flags, id or counter 0; a
frame with a body of the wrong shape or a bad type) and the sender's *next*
counter: rejected before the replay window records it, so the sender's real
datagram with that counter is still accepted, and the run stays the same
(were anything applied before the body was checked, it would not).  A
replay of a datagram the node never received is no attack: the network
could have delayed it that long.  tests/fuzz/ mutates the same kinds of
input by the million against single cores.

Property, over many seeded runs of a failover cluster under a random script
of faults (cluster/scenarios.py): each run is made twice from its seed, with
and without the attacker (whose randomness is its own); every datagram the
attacker hands over is rejected (AdvertRejected, FrameRejected, or nothing:
a node's own multicast frame looped back is counted, not reported), and the
two runs are the same: every state change of every group at the same time,
every in-sync verdict and peer change, every address change, and in the end
every cache and every kernel table.
"""

from __future__ import annotations

import copy
import random
import time

from cluster import (
    ADVERT,
    ELECTION_KEYS,
    OTHER_ELECTION_KEYS,
    OTHER_SYNC_KEYS,
    SYNC_KEYS,
    Cluster,
    flip_bit,
    reencode,
)
from cluster.scenarios import Chaos, failover_cluster

from meshd.election.actions import AdvertRejected
from meshd.sync.actions import FrameRejected, PeerChanged, SyncState
from meshd.sync.frames import FrameError, decode_frame, encode_frame, packb

RUNS = 60
PERIOD = 0.004
FORGERIES = ("flip", "truncate", "random", "other key", "fresh counter", "extend", "splice", "resealed")
RESULTS: list[str] = []


class Attacker:
    """Hands a replayed or forged datagram to a node every PERIOD seconds."""

    def __init__(self, c: Cluster, rng: random.Random):
        self.c = c
        self.rng = rng
        self.handed = 0
        self.accepted: list[str] = []
        c.every(PERIOD, self.strike)

    def strike(self) -> None:
        c, rng = self.c, self.rng
        recent = c.captured[-200:]
        if not recent:
            return
        dg = rng.choice(recent)
        if rng.random() < 0.5:
            targets = [n for n in sorted(dg.delivered | {dg.src}) if c.nodes[n].alive]
            if not targets:
                return
            how, target, data = "replay", rng.choice(targets), dg.data
        else:
            how = rng.choice(FORGERIES)
            target = rng.choice(c.alive())
            data = self.forge(how, dg)
        if dg.kind is ADVERT:
            actions = c.replay(target, dg) if how == "replay" else c.inject(target, data)
        else:
            actions = c.replay(target, dg) if how == "replay" else c.inject_frame(target, data, dg.src)
        self.handed += 1
        if not all(isinstance(a, (AdvertRejected, FrameRejected)) for a in actions):
            self.accepted.append(f"{how} of node {dg.src}'s {dg.kind} to node {target} at {c.now:.4f}s: {actions}")

    def forge(self, how: str, dg) -> bytes:
        rng, data = self.rng, dg.data
        if how == "extend":
            return data + rng.randbytes(rng.randint(1, 64))
        if how == "splice":
            other = rng.choice([d for d in self.c.captured[-200:] if d.kind is dg.kind]).data
            cut = rng.randrange(1, min(len(data), len(other)))
            spliced = data[:cut] + other[cut:]
            # Not one of the two (the other's head can be the same: then it is a replay).
            return spliced if spliced not in (data, other) else flip_bit(data, 0)
        if how == "resealed":
            return self.reseal(dg)
        if how == "flip":
            return flip_bit(data, rng.randrange(len(data) * 8))
        if how == "truncate":
            return data[:rng.randrange(len(data))]
        if how == "random":
            return rng.randbytes(len(data))
        if dg.kind is ADVERT:
            return reencode(data, OTHER_ELECTION_KEYS, **({"counter": 2**62} if how == "fresh counter" else {}))
        try:
            f = decode_frame(data, SYNC_KEYS)
        except FrameError:                       # sealed under a key rotated in (none here)
            return data
        h = f.header
        counter = h.counter + 10**9 if how == "fresh counter" else h.counter
        return encode_frame(OTHER_SYNC_KEYS, h.sender, h.epoch, counter, h.type, f.body)


    def reseal(self, dg) -> bytes:
        """Malformed contents under the cluster key, with the sender's next counter."""
        rng, sender = self.rng, self.c.nodes[dg.src]
        if not sender.alive:
            return flip_bit(dg.data, 0)
        if dg.kind is ADVERT:
            nxt = sender.node.election.counter + 1
            bad = rng.choice(({"type": 0}, {"type": 9}, {"node_id": 0}, {"group_id": 0}, {"counter": 0}))
            return reencode(dg.data, ELECTION_KEYS, **{"counter": nxt, **bad})
        sealer = copy.copy(sender.node.sync.sealer)              # the sender's own stays untouched
        ftype, body = rng.choice(((1, packb([0, 0])), (2, packb([[1, 2]])), (3, b"\xc1"), (4, packb({})),
                                  (9, packb([1])), (5, packb([0]))))
        return sealer.seal(ftype, body)


def trajectory(c: Cluster) -> tuple:
    """Everything that says what the nodes did, and where they ended."""
    nodes = []
    for n in c.ids:
        node = c.nodes[n]
        verdicts = [(t, a.in_sync, a.reason) for t, a in node.timed(SyncState)]
        peers = [(t, a.peer, a.state) for t, a in node.timed(PeerChanged)]
        caches = None
        if node.alive:
            caches = (dict(node.sync.dump_internal()),
                      {p: dict(node.sync.dump_external(p)) for p in node.sync.peers})
        nodes.append((verdicts, peers, list(node.kernel.changes), dict(node.kernel.table), caches))
    return list(c.transitions), nodes


def run(seed: int, attack: bool) -> tuple[tuple, Attacker | None]:
    commit = random.Random(seed).choice(("takeover", "continuous"))
    c = failover_cluster(seed, commit=commit, capture=True)
    chaos = Chaos(c, random.Random(seed))
    attacker = Attacker(c, random.Random(~seed)) if attack else None
    c.run_for(0.8)
    chaos.run(5)
    return trajectory(c), attacker


def test_no_replayed_or_forged_datagram_changes_any_node():
    started = time.process_time()
    handed = 0
    failures: list[str] = []
    for seed in range(RUNS):
        clean, _ = run(seed, attack=False)
        attacked, attacker = run(seed, attack=True)
        handed += attacker.handed
        failures += [f"seed {seed}: {a}" for a in attacker.accepted[:2]]
        if attacked != clean:
            failures.append(f"seed {seed}: the attacked run differs from the clean one")
    cpu = time.process_time() - started
    RESULTS.append(f"{RUNS} pairs of runs, {handed} datagrams handed over, {2 * RUNS / cpu:.1f} runs/s")
    assert handed > 100 * RUNS
    assert not failures, "\n".join(failures[:5])


def test_report(capsys):
    """Not a check: what the runs above covered (pytest -s)."""
    with capsys.disabled():
        for line in RESULTS:
            print("\nattacker: " + line)
