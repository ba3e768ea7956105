"""Which backend serves each slot of a redirect's slot map. Pure.

Owns: the order every node agrees on for a live set, smooth weighted
round-robin turns (weighted_turns), the interleaved fill of round-robin,
weighted and random (interleaved_slots), the Maglev-style stable fill of
source-hash (stable_slots), and slot_assignment, which picks one per mode.

Must not: render nft statements, talk to the kernel, or depend on the order
the backends came in: two nodes with the same live set must compute the same
map, which is what keeps a client's slot across a failover.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from .model import Backend, LbRedirect


def _sorted(backends: Sequence[Backend]) -> list[Backend]:
    # Every node must compute the same map from the same live set, whatever
    # order the set came in: the slot map is what makes source-hash and
    # round-robin agree across a failover.
    return sorted(backends, key=lambda b: (b.ip, b.port))


def weighted_turns(weights: Sequence[int], n: int) -> list[int]:
    """n picks of indices in smooth weighted round-robin order (nginx's algorithm).

    Over any sum(weights) consecutive picks each index appears exactly
    weight times, and picks of one index are spread out, not bunched.
    """
    total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(n):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


def interleaved_slots(backends: Sequence[Backend], slots: int, weighted: bool = True) -> list[Backend]:
    """Slots in smooth weighted round-robin order: counting slots in order gives a, b, c, a, b, c."""
    if not backends:
        return []
    order = _sorted(backends)
    weights = [b.weight if weighted else 1 for b in order]
    return [order[i] for i in weighted_turns(weights, slots)]


def _preference(backend: Backend, slots: int) -> tuple[int, int]:
    """(offset, skip) of a backend's permutation of the slots, from a hash of its address and port."""
    digest = hashlib.sha256(f"{backend.ip}|{backend.port}".encode()).digest()
    offset = int.from_bytes(digest[:8], "big") % slots
    skip = int.from_bytes(digest[8:16], "big") % slots or 1
    while math.gcd(skip, slots) != 1:    # a full permutation needs a step coprime to the size
        skip = skip % slots + 1
    return offset, skip


def stable_slots(backends: Sequence[Backend], slots: int) -> list[Backend]:
    """Slots filled Maglev style (Eisenbud et al., NSDI 2016; Linux IPVS `mh`).

    Each backend has its own permutation of the slots; backends take turns in
    smooth weighted order, each claiming its next preferred free slot. Shares
    are as exact as interleaved_slots gives, and when a backend leaves most
    slots of the others stay where they were: source-hash clients of live
    backends mostly keep their backend.
    """
    if not backends:
        return []
    order = _sorted(backends)
    prefs = [_preference(b, slots) for b in order]
    tried = [0] * len(order)
    table: list[int | None] = [None] * slots
    for i in weighted_turns([b.weight for b in order], slots):
        offset, skip = prefs[i]
        while True:
            slot = (offset + tried[i] * skip) % slots
            tried[i] += 1
            if table[slot] is None:
                table[slot] = i
                break
    return [order[i] for i in table]  # type: ignore[index]


def slot_assignment(redirect: LbRedirect, backends: Sequence[Backend]) -> list[Backend]:
    """Backend of each slot (slot i = element i); empty when no backend is live."""
    backends = redirect.check_backends(backends)
    if redirect.mode == "source-hash":
        return stable_slots(backends, redirect.slots)
    return interleaved_slots(backends, redirect.slots, weighted=redirect.mode != "round-robin")
