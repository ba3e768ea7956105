"""Fuzz targets for what arrives from the network: adverts and sync frames.

The seeds are real: a two-node failover cluster of the simulator
(tests/sim/cluster) runs with traffic, and every advert and frame node 1
sent (and node 2 received) is a seed.  Node 2 is the target.  Each mutation
is one of three classes:

* "nokey": what an attacker without the key can do to a seed (mutate.py:
  bit flips, overwritten bytes, truncation, extension, swapped header
  fields, splices of two seeds, shuffled chunks, random bytes) or an exact
  replay.  It must be rejected (one AdvertRejected / FrameRejected) and the
  whole target unchanged (snapshot.py);
* "malformed": resealed under the cluster key with a fresh counter (a valid
  MAC or tag), with contents the decoders must refuse (a wrong msgpack
  shape, a bad type, an advert field out of range or contradicting the
  group's configuration, an old epoch...).  Rejected, nothing changed: no
  partial application;
* "valid": resealed with a shape the decoder accepts but values picked at
  random (a peer with the key, or a bug): anything may happen but an
  exception or a hang (an input taking longer than SLOW_S).

Plus "reorder": a shuffled run of seeds, duplicates included, into a copy of
a node that has not received them: no exception, and every duplicate is
rejected without a change.

Must not: seal with anything but the public sealers (FrameSealer of a
sender core, encode_advert), so a change of the header or the key schedule
changes the seeds, not this file.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

from cluster import ADVERT, ELECTION_KEYS, FRAME, SYNC_KEYS, Cluster, reencode
from cluster.scenarios import failover_cluster, failover_texts

from meshd.crypto import hmac_sha256
from meshd.election.actions import AdvertRejected
from meshd.election.wire import HEADER as ADVERT_HEADER
from meshd.election.wire import AdvertError, decode_advert
from meshd.sync.actions import FrameRejected
from meshd.sync.core import QUIET_REJECTS
from meshd.sync.frames import FrameError, decode_body, decode_frame

from .mutate import INTERESTING_INTS, mutate_bytes, mutate_value, pack
from .snapshot import difference, snapshot

SLOW_S = 1.0
TARGET = 2          # the node under attack
SENDER = 1          # the node whose datagrams are the seeds
# Header fields (offset, size) that swaps exchange.
ADVERT_FIELDS = [(0, 1), (1, 1), (2, 2), (4, 4), (8, 4), (12, 1), (13, 1), (14, 2), (16, 4), (20, 8),
                 (28, 4), (32, 8)]
FRAME_FIELDS = [(0, 1), (1, 1), (2, 1), (3, 1), (4, 4), (8, 4), (12, 8)]
# Authenticated advert fields a peer bug could get wrong: (field, bad values).
ADVERT_BAD = {
    "type": (0, 3, 255), "group_id": (0, 77, 65535), "node_id": (0, TARGET),
    "advbase_ms": (0, 1, 9, 60001, 2**32 - 1), "config_digest": (b"\0" * 8, b"\xff" * 8),
    "counter": (0,),
}


@dataclass
class Finding:
    target: str
    kind: str          # "exception", "accepted", "state changed", "slow", "wrong answer"
    what: str
    data: bytes = b""

    def __str__(self) -> str:
        return f"{self.target}: {self.kind}: {self.what} (input {self.data[:80].hex()})"


@dataclass
class Tally:
    mutations: int = 0
    by_class: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)      # (class, reject reason) -> count
    findings: list = field(default_factory=list)

    def count(self, cls: str) -> None:
        self.mutations += 1
        self.by_class[cls] = self.by_class.get(cls, 0) + 1


class World:
    """The seeded two-node cluster and its captured seeds (see the module docstring)."""

    def __init__(self, seed: int = 1):
        self.rng = random.Random(seed)
        c = failover_cluster(seed, nodes=2, commit="continuous", capture=True, loss=0.0)
        c.run_for(0.8)
        for _ in range(10):
            for g in c.group_names():
                c.traffic(g, 5, self.rng)
            c.run_for(0.1)
        c.run_for(0.5)
        self.c = c
        got = [d for d in c.captured if d.src == SENDER and TARGET in d.delivered]
        self.adverts = [d.data for d in got if d.kind is ADVERT]
        self.frames = [d.data for d in got if d.kind is FRAME]
        assert len(self.adverts) > 10 and len(self.frames) > 20, (len(self.adverts), len(self.frames))
        self.frame_bodies = [(f.header.type, f.body) for f in (decode_frame(d, SYNC_KEYS) for d in self.frames)]
        self.advert_counter = max(decode_advert(d, ELECTION_KEYS).counter for d in self.adverts) + 1000
        self.sealer = copy.copy(c.nodes[SENDER].node.sync.sealer)     # a copy: node 1 is untouched
        self.sealer.counter += 1000
        self.target = c.nodes[TARGET]

    # ------------------------------------------------------------ resealing

    def fresh_advert_counter(self) -> int:
        self.advert_counter += 1
        return self.advert_counter

    def reseal_advert(self, seed: bytes, **changes) -> bytes:
        """The seed re-signed with the cluster key, a fresh counter and `changes`."""
        changes.setdefault("counter", self.fresh_advert_counter())
        return reencode(seed, ELECTION_KEYS, **changes)

    def reseal_advert_flags(self, seed: bytes, flags: int) -> bytes:
        """A fresh advert with non-zero flags, its MAC valid (encode_advert writes 0)."""
        data = bytearray(self.reseal_advert(seed))
        data[14:16] = flags.to_bytes(2, "big")
        header = bytes(data[:ADVERT_HEADER.size])
        return header + hmac_sha256(ELECTION_KEYS.send_key, header)

    def reseal_frame(self, ftype: int, body: bytes) -> bytes:
        return self.sealer.seal(ftype, body)


def _rejected(actions, kind) -> bool:
    return len(actions) == 1 and isinstance(actions[0], kind)


def _quiet_rejects(sync) -> int:
    """The sync core's rejects that it counts without reporting them."""
    return sum(sync.rejected[r] for r in QUIET_REJECTS)


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


# ================================================================== decoders


def advert_decoder(w: World, rng: random.Random, tally: Tally) -> None:
    seed = rng.choice(w.adverts)
    how, data = mutate_bytes(seed, rng, w.adverts, ADVERT_FIELDS)
    tally.count(how)
    try:
        decode_advert(data, ELECTION_KEYS)
    except AdvertError as e:
        if not e.reason:
            tally.findings.append(Finding("advert_decoder", "wrong answer", "empty reason", data))
        return
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("advert_decoder", "exception", repr(e), data))
        return
    if data != seed and data not in w.adverts:
        tally.findings.append(Finding("advert_decoder", "accepted", f"a {how} without the key", data))


def frame_decoder(w: World, rng: random.Random, tally: Tally) -> None:
    seed = rng.choice(w.frames)
    how, data = mutate_bytes(seed, rng, w.frames, FRAME_FIELDS)
    tally.count(how)
    try:
        decode_frame(data, SYNC_KEYS)
    except FrameError as e:
        if not e.reason:
            tally.findings.append(Finding("frame_decoder", "wrong answer", "empty reason", data))
        return
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("frame_decoder", "exception", repr(e), data))
        return
    if data != seed and data not in w.frames:
        tally.findings.append(Finding("frame_decoder", "accepted", f"a {how} without the key", data))


# ================================================================== the election core


def _malformed_advert(w: World, seed: bytes, rng: random.Random) -> tuple[str, bytes]:
    r = rng.random()
    if r < 0.12:
        return "flags", w.reseal_advert_flags(seed, rng.choice((1, 0x8000, 0xFFFF)))
    if r < 0.2:                                    # an epoch older than the sender's
        return "old epoch", w.reseal_advert(seed, epoch=decode_advert(seed, ELECTION_KEYS).epoch - 1)
    if r < 0.28:                                   # an exact counter seen already
        return "counter seen", w.reseal_advert(seed, counter=decode_advert(seed, ELECTION_KEYS).counter)
    name = rng.choice(tuple(ADVERT_BAD))
    value = rng.choice(ADVERT_BAD[name])
    if name == "counter":
        return name, w.reseal_advert(seed, counter=value)
    return name, w.reseal_advert(seed, **{name: value})


def _valid_advert(w: World, seed: bytes, rng: random.Random) -> bytes:
    a = decode_advert(seed, ELECTION_KEYS)
    return w.reseal_advert(seed, type=rng.choice((1, 1, 2)), advskew=rng.choice((0, 1, 128, 254, 255)),
                           demotion=rng.choice((0, 1, 100, 2**32 - 1, a.demotion)))


def _advert_input(w: World, rng: random.Random) -> tuple[str, bytes]:
    seed = rng.choice(w.adverts)
    r = rng.random()
    if r < 0.08:
        return "replay", seed
    if r < 0.7:
        return mutate_bytes(seed, rng, w.adverts, ADVERT_FIELDS)
    if r < 0.95:
        name, data = _malformed_advert(w, seed, rng)
        return "malformed " + name, data
    return "valid", _valid_advert(w, seed, rng)


def _check(target: str, tally: Tally, cls: str, data: bytes, before, after, actions, kind,
           seconds: float, skip_replay: bool = False) -> None:
    if seconds > SLOW_S:
        tally.findings.append(Finding(target, "slow", f"{cls}: {seconds:.2f} s", data))
    if actions and isinstance(actions[0], kind):
        key = (cls, actions[0].reason)
        tally.reasons[key] = tally.reasons.get(key, 0) + 1
    if cls == "valid":
        return
    if not _rejected(actions, kind):
        tally.findings.append(Finding(target, "accepted", f"{cls}: {actions!r:.300}", data))
        return
    if after != before:
        tally.findings.append(Finding(target, "state changed",
                                      f"{cls} ({actions[0].reason}): {difference(before, after)}", data))


def election_core(w: World, rng: random.Random, tally: Tally) -> None:
    core = w.target.node.election
    cls, data = _advert_input(w, rng)
    tally.count(cls.split(" ")[0])
    before = snapshot(core)
    try:
        actions, seconds = _timed(core.receive, data, "10.0.0.1", w.c.now, ttl=255, interface="eth0")
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("election_core", "exception", f"{cls}: {e!r}", data))
        return
    after = snapshot(core)
    # An authentic advert that passed the replay check is recorded in the window
    # before its digest is compared (proto/election.md, section 4): skip the window.
    if _rejected(actions, AdvertRejected) and actions[0].reason == "peer config differs":
        before, after = _without_replay(before), _without_replay(after)
    _check("election_core", tally, cls.split(" ")[0], data, before, after, actions, AdvertRejected, seconds)


def _without_replay(snap):
    """A snapshot taken with the replay window included, without it (see election_core)."""
    name, fields = snap
    return (name, tuple((k, v) for k, v in fields if k != "replay"))


# ================================================================== the sync core


def _malformed_frame(w: World, rng: random.Random) -> tuple[str, int, bytes]:
    """(what, type, body bytes) that decode_body refuses, or a bad type."""
    ftype, body = rng.choice(w.frame_bodies)
    for _ in range(20):
        r = rng.random()
        if r < 0.08:
            return "bad type", rng.choice((0, 7, 8, 255)), pack(body)
        if r < 0.16:
            raw = rng.choice((b"", b"\xc1", rng.randbytes(rng.randint(1, 40)), pack(body)[:-1],
                              pack(body) + b"\x00"))
            what, out = "not msgpack", raw
        elif r < 0.24:
            what, out = "other type's body", pack(rng.choice(w.frame_bodies)[1])
        else:
            what, out = "wrong shape", pack(mutate_value(body, rng))
        try:
            decode_body(ftype, out)
        except FrameError:
            return what, ftype, out
    return "bad type", 0, pack(body)


def _valid_frame(w: World, rng: random.Random) -> tuple[int, bytes]:
    """A body decode_body accepts, with values picked at random (shape kept)."""
    ftype, body = rng.choice(w.frame_bodies)
    for _ in range(20):
        out = _retype(body, rng)
        try:
            decode_body(ftype, pack(out))
        except FrameError:
            continue
        return ftype, pack(out)
    return ftype, pack(body)


def _retype(v, rng: random.Random):
    """The same shape, other integers (in range or at its edges) and byte strings."""
    if isinstance(v, (list, tuple)):
        return [_retype(x, rng) for x in v]
    if type(v) is int and rng.random() < 0.3:
        return rng.choice(INTERESTING_INTS[:18] + (v + 1, max(0, v - 1), v * 2))
    if type(v) is bytes and rng.random() < 0.3:
        return rng.randbytes(len(v)) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 64))
    return v


def _frame_input(w: World, rng: random.Random) -> tuple[str, bytes]:
    r = rng.random()
    seed = rng.choice(w.frames)
    if r < 0.08:
        return "replay", seed
    if r < 0.7:
        how, data = mutate_bytes(seed, rng, w.frames, FRAME_FIELDS)
        return how, data
    if r < 0.95:
        what, ftype, body = _malformed_frame(w, rng)
        return "malformed " + what, w.reseal_frame(ftype, body)
    ftype, body = _valid_frame(w, rng)
    return "valid", w.reseal_frame(ftype, body)


def sync_core(w: World, rng: random.Random, tally: Tally) -> None:
    core = w.target.node.sync
    cls, data = _frame_input(w, rng)
    tally.count(cls.split(" ")[0])
    before = snapshot(core)
    try:
        actions, seconds = _timed(core.receive, data, SENDER, w.c.now)
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("sync_core", "exception", f"{cls}: {e!r}", data))
        return
    _check("sync_core", tally, cls.split(" ")[0], data, before, snapshot(core), actions, FrameRejected,
           seconds)


# ================================================================== the whole node


def node_core(w: World, rng: random.Random, tally: Tally) -> None:
    """Adverts and frames into the NodeCore, as the shells hand them over."""
    node = w.target.node
    advert = rng.random() < 0.5
    cls, data = _advert_input(w, rng) if advert else _frame_input(w, rng)
    tally.count(cls.split(" ")[0])
    before = snapshot(node)
    try:
        if advert:
            actions, seconds = _timed(node.advert, data, "10.0.0.1", w.c.now, ttl=255, interface="eth0")
        else:
            actions, seconds = _timed(node.frame, data, SENDER, w.c.now)
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("node_core", "exception", f"{cls}: {e!r}", data))
        return
    after = snapshot(node)
    if advert and _rejected(actions, AdvertRejected) and actions[0].reason == "peer config differs":
        return                  # the replay window moved, as documented; election_core checks the rest
    _check("node_core", tally, cls.split(" ")[0], data, before, after, actions,
           AdvertRejected if advert else FrameRejected, seconds)


def reorder(w: World, rng: random.Random, tally: Tally) -> None:
    """A shuffled run of authentic seeds, with duplicates, into a pristine copy."""
    # Node 2 alone, started: it has heard nothing of node 1 yet.
    c = Cluster(failover_texts([SENDER, TARGET]), seed=rng.randrange(1000), capture=False)
    c.start(TARGET)
    c.run_for(0.05)
    election, sync = c.nodes[TARGET].node.election, c.nodes[TARGET].node.sync
    adverts = rng.random() < 0.5
    seeds = w.adverts if adverts else w.frames
    start = rng.randrange(len(seeds))
    run = seeds[start:start + rng.randint(2, 30)]
    run = run + [rng.choice(run) for _ in range(rng.randint(1, 5))]
    rng.shuffle(run)
    seen: set[bytes] = set()
    for data in run:
        tally.count("reorder")
        target = election if adverts else sync
        before = snapshot(target) if data in seen else None
        quiet = _quiet_rejects(sync)
        try:
            if adverts:
                actions = election.receive(data, "10.0.0.1", c.now, ttl=255, interface="eth0")
            else:
                actions = sync.receive(data, SENDER, c.now)
        except Exception as e:  # noqa: BLE001 -- the finding
            tally.findings.append(Finding("reorder", "exception", repr(e), data))
            return
        if before is not None and not adverts and not actions and _quiet_rejects(sync) > quiet:
            # Refused quietly (the frames of a start not yet proven, proto/sync.md 3.1):
            # counted, not reported; still nothing may have changed.
            tally.reasons[("duplicate", "unproven")] = tally.reasons.get(("duplicate", "unproven"), 0) + 1
            if snapshot(target) != before:
                tally.findings.append(Finding("reorder", "state changed", "duplicate (unproven)", data))
        elif before is not None:
            kind = AdvertRejected if adverts else FrameRejected
            _check("reorder", tally, "duplicate", data, before, snapshot(target), actions, kind, 0.0)
        seen.add(data)


TARGETS = {
    "advert_decoder": advert_decoder,
    "frame_decoder": frame_decoder,
    "election_core": election_core,
    "sync_core": sync_core,
    "node_core": node_core,
    "reorder": reorder,
}
