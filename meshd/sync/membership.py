"""Peers' lifecycle: first contact, restart, absent and back, adoption, added and removed.

Owns (proto/sync.md, sections 6.2, 7.3 and 10), and emits every
PeerChanged action:

* an authentic frame from a peer (`heard`): its first session or a new one
  (a restart: both directions of its streams reset, its external cache kept
  until its bulk replaces it, a bulk asked for), back after being absent,
  the end of an adoption when it is heard again after the grace;
* the proof of liveness (`prove`, proto/sync.md, 3.1): an authentic frame
  of a start of the peer not proven yet teaches us its boot id, which our
  heartbeats echo (an echo heartbeat goes out at once when it is new); its
  HEARTBEAT that echoes our own boot id makes that start its session;
* silence, checked at every heartbeat (`check_silence`): a peer silent for
  `peer_timeout_s` is absent and no longer holds our multicast queue back,
  and an in-sync round stops waiting for it; with it the per-heartbeat
  housekeeping of what we keep per peer (transferred seqs, tombstones);
* adoption after a takeover (`adopt`, `adoptable`, `move_adopted`);
* peers added or removed by a reload (`added`, `removed`);
* discovered candidates (proto/sync.md, 3.2): bounded in number, sent a
  heartbeat at most every CANDIDATE_INTERVAL_S (`candidate`, `poll_candidates`),
  and promoted to a peer only by the proof of 3.1 (`promote`).

It must not touch the streams' contents or the caches' entries beyond
what those events require (resetting them, moving adopted entries), and
sends nothing itself: a new or restarted peer is asked for a bulk through
bulk.ask_bulk, an echo goes out as outbound.send_heartbeat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .actions import PeerChanged
from .bulk import ask_bulk, check_round
from .cache import STAMP_LEN
from .frames import FrameType, Header
from .outbound import candidate_heartbeat, release_mcast, send_heartbeat
from .peer import Peer

if TYPE_CHECKING:
    from .core import SyncCore


def prove(core: SyncCore, p: Peer, h: Header, body: tuple, now: float) -> bool:
    """An authentic frame of a start of p that is not its session: learn its
    boot id (echoed from now on), and return whether the frame is the proof
    that this start is alive now: a HEARTBEAT echoing our boot id, which no
    frame sealed before our own start can carry.

    The frame's counter then becomes the floor of its session: anything the
    peer sealed before it (a capture from before our restart) is refused.
    A proof does not replace a proven session that is alive (heard within
    peer_timeout_s) unless its epoch is newer: the echo says "sealed after
    our start", not "after p's latest start", so a capture of an earlier
    start of p, echoing us, must not take the place of the one running now.
    """
    start = (h.epoch, h.boot_id)
    older = p.session is not None and h.epoch <= p.session[0] and p.last_heard is not None \
        and now - p.last_heard < core.peer_timeout_s
    if not older and h.boot_id not in p.echo:
        # (An earlier start's boot id is not learned: a replay of it must not
        # push the running start's out of our echoes, nor cost a heartbeat.)
        p.echo = (*p.echo[-1:], h.boot_id)
        p.unproven = {s: c for s, c in p.unproven.items() if s[1] in p.echo}
        if p.id in core.peers:
            send_heartbeat(core)           # its proof, at once
        else:
            candidate_heartbeat(core, p)   # a candidate: to it alone
    if older or h.type != FrameType.HEARTBEAT or (core.node_id, core.boot_id) not in body[3]:
        p.unproven[start] = max(p.unproven.pop(start, 0), h.counter)
        if len(p.unproven) > 4:          # starts are few: bound it all the same
            p.unproven.pop(next(iter(p.unproven)))
        return False
    p.session = start
    core.replay.start_at(p.id, h.epoch, h.counter, p.unproven.pop(start, 0))
    core.counters["sessions proven"] += 1
    return True


def heard(core: SyncCore, p: Peer, epoch: int, now: float, new_session: bool = False) -> None:
    """An authentic frame from p, sent in `epoch`, arrived at `now`
    (`new_session`: the first of a start of p just proven)."""
    if p.epoch != epoch or new_session:
        restarted(core, p, epoch, now)
    p.last_heard = now
    if p.absent:
        p.absent = False
        core.out.append(PeerChanged(p.id, "back", "heard again"))
    if p.adopted and now - p.adopted_at > core.adopt_grace_s:
        # Alive after all (not a frame that was in flight when it failed):
        # its own state is authoritative for its external cache again.
        p.adopted = False
        core.out.append(PeerChanged(p.id, "adoption ended", "heard again"))


def restarted(core: SyncCore, p: Peer, epoch: int, now: float) -> None:
    """p is heard in a new epoch: its first contact, or a restart."""
    first = p.epoch is None
    old = p.epoch
    p.epoch = epoch
    if not first:
        # Keep its entries until its bulk replaces them: they may be the
        # only copy of flows still running (proto/sync.md, section 7.3).
        p.ext.new_origin_epoch()
        core.counters["peer restarts"] += 1
    p.reset_origin()
    p.reset_recipient()
    p.adopted = False        # its bulk replaces its external cache
    ask_bulk(core, p, now)
    core.out.append(PeerChanged(p.id, "first contact" if first else "restarted",
                                f"epoch {epoch}" if first else f"epoch {old} -> {epoch}"))


def check_silence(core: SyncCore, now: float) -> None:
    """At every heartbeat: silent peers, and what we keep per peer."""
    started = core.started_at if core.started_at is not None else now
    released = False
    for p in core.peers.values():
        # A peer silent for peer_timeout no longer holds our resend queue
        # back; when it returns, what it missed comes by bulk resync.
        # Silent means no frame at all: a live peer with nothing to
        # acknowledge sends no STATUS, but its heartbeats still arrive.
        heard_at = max(p.mcast_status_at, p.last_heard or 0.0)
        if p.mcast_cum is not None and now - heard_at > core.peer_timeout_s:
            p.mcast_cum = None
            released = True
        silent_since = p.last_heard if p.last_heard is not None else \
            p.added_at if p.added_at is not None else started
        if not p.absent and now - silent_since >= core.peer_timeout_s:
            p.absent = True
            core.out.append(PeerChanged(p.id, "absent",
                                        f"nothing heard for {core.peer_timeout_s:g} s"))
        if p.transferred:
            low = core.mcast.low
            p.transferred = {s for s in p.transferred if s >= low}
        mark = core.replay.streams.get(p.id)
        if mark is not None and p.epoch == mark.epoch and p.ext.tombstones:
            p.ext.forget_tombstones_upto(mark.high - core.replay.window)
    if released:
        release_mcast(core)
    check_round(core, now)


# ------------------------------------------------------------------ adoption

def adopt(core: SyncCore, origin: int, now: float) -> None:
    """`origin`'s flows were committed here: note its state as of the takeover."""
    p = core.peers[origin]
    p.adopted = True
    p.adopted_at = now
    mark = core.replay.streams.get(origin)
    p.adopted_upto = (p.epoch, mark.high if mark is not None and mark.epoch == p.epoch else 0)
    core.counters["adoptions"] += 1


def adoptable(core: SyncCore, origin: int, bucket: int) -> list[tuple[bytes, bytes]]:
    """The entries of one bucket of `origin` stamped no later than the takeover."""
    p = core.peers[origin]
    if p.adopted_upto is None or p.adopted_upto[0] != p.epoch:
        return []
    upto = p.adopted_upto[1].to_bytes(STAMP_LEN, "big")
    return [(k, v[:-STAMP_LEN]) for k, v in p.ext.buckets[bucket].items() if v[-STAMP_LEN:] <= upto]


def move_adopted(core: SyncCore, changed) -> None:
    """Local flows that an adopted origin's external cache holds leave it (they are ours now)."""
    adopted = [p for p in core.peers.values() if p.adopted]
    for key, attrs in changed:
        if attrs is not None:
            for p in adopted:
                if p.ext.remove(key) is not None:
                    p.stats["adopted entries moved"] += 1


def drop_ended(core: SyncCore, keys) -> int:
    """Flows that ended here before they were adopted leave the adopted origins' caches.

    A flow committed at a takeover can end on this node before adoption
    moves it (ADOPT_DELAY after the addresses: an FTP data connection uses up
    its expectation at once): its DESTROY finds no internal entry and changes
    nothing, and the adoption would then bring it back from the origin's
    cache as this node's, for good.  The node core calls this for
    expectations (node/flows.py; conntrack entries have the same window,
    left as it was: see docs/operation.md).
    """
    adopted = [p for p in core.peers.values() if p.adopted]
    get = core.internal.get
    n = 0
    for key in keys:
        if get(key) is None:
            for p in adopted:
                if p.ext.remove(key) is not None:
                    p.stats["adopted entries ended"] += 1
                    n += 1
    return n


# ------------------------------------------------------------------ reload

def added(core: SyncCore, peer: int, now: float) -> None:
    """A peer added by a reload: ask it for a bulk; not part of a round under way."""
    p = core.peers[peer] = Peer(peer, core.resend_queue, core.max_gap, added_at=now)
    core.counters["peers added"] += 1
    core.out.append(PeerChanged(peer, "added", "added by reload"))
    ask_bulk(core, p, now)


def removed(core: SyncCore, p: Peer, now: float) -> None:
    """p, removed by a reload (and from core.peers already): nothing waits on it."""
    core.counters["peers removed"] += 1
    core.out.append(PeerChanged(p.id, "removed",
                                f"removed by reload ({len(p.ext)} external entries dropped)"))
    release_mcast(core)
    if core.round is not None and core.round.pop(p.id, None) is not None:
        check_round(core, now)


# ------------------------------------------------------------------ discovery

# At most this many discovered candidates at a time, each sent at most one
# heartbeat every CANDIDATE_INTERVAL_S (plus one echo per start of it learned
# from an authentic frame, which only a holder of the key can cause): what a
# forged announcement can make this node send is bounded by these two.
MAX_CANDIDATES = 8
CANDIDATE_INTERVAL_S = 0.5
# The discovery hold (bulk.begin_round): with [sync] discover, a node is not
# in sync (so stays demoted) until this long after its start, and until the
# peers it proved meanwhile have sent their bulks.  zeroconf announces a
# service about 1 s after registering it (probes, then the announcement);
# a candidate's heartbeats go every 0.5 s and a proof takes a round trip: a
# few seconds cover the peers present on the link, with room for loss.
DISCOVERY_WINDOW_S = 5.0


def candidate(core: SyncCore, peer: int, now: float) -> bool:
    """A node heard by discovery with this cluster's fingerprint: a candidate
    (a Peer object kept apart from core.peers), sent heartbeats until it
    proves the key or is withdrawn.  False when the table is full."""
    if peer in core.candidates:
        return True
    if len(core.candidates) >= MAX_CANDIDATES:
        core.counters["candidates refused (full)"] += 1
        return False
    core.candidates[peer] = Peer(peer, core.resend_queue, core.max_gap, added_at=now)
    core.candidate_at[peer] = now          # the first heartbeat at once
    core.counters["candidates"] += 1
    return True


def poll_candidates(core: SyncCore, now: float) -> None:
    """From handle_timer: the candidates' heartbeats that are due."""
    for cid, at in core.candidate_at.items():
        if at <= now:
            candidate_heartbeat(core, core.candidates[cid])
            core.counters["candidate heartbeats"] += 1
            core.candidate_at[cid] = now + CANDIDATE_INTERVAL_S


def withdraw(core: SyncCore, peer: int) -> None:
    """A candidate no longer announced (or configured now): forgotten."""
    core.candidates.pop(peer, None)
    core.candidate_at.pop(peer, None)


def promote(core: SyncCore, p: Peer, now: float) -> None:
    """Candidate p proved its start (prove returned True for it): a peer from
    now on, as if added by a reload; membership.heard then runs its first
    contact (a bulk asked for)."""
    withdraw(core, p.id)
    p.added_at = now
    core.peers[p.id] = p
    core.discovered[p.id] = now
    core.counters["peers discovered"] += 1
    core.out.append(PeerChanged(p.id, "discovered",
                                "proved the cluster key: its heartbeat echoed our start"))
