"""Bulk resync, both ends, and the in-sync round (proto/sync.md, sections 7.1 to 7.3).

Owns:

* as the node that asks: RESYNC_REQUEST and its retries (`ask_bulk`), the
  degrade of a stream too far behind to track (`lost_track`), BULK_BEGIN
  (`on_bulk_begin`: the bases it resolves, the request it answers) and the
  SWEEPs run once the direct stream is resolved up to them (`try_sweeps`);
* as the node that answers: a RESYNC_REQUEST (`on_resync_request`), the
  start of a bulk (`start_bulk`: BULK_BEGIN, the floors, the order of the
  buckets) and the pacing of queued buckets, for bulks and anti-entropy
  repairs alike (`pump`: token bucket and resend window, small buckets
  sharing frames);
* the in-sync round: "not in sync" until every peer's bulk has completed,
  the peer is absent, or it was declared out of sync (`begin_round`,
  `check_round`, `set_sync`);
* the deadline of a bulk we asked for (proto/sync.md, 7.4): sized from the
  size the peer announces in its BULK_INFO (`on_bulk_info`, `span`),
  retried with a new request a bounded number of times, then the peer is
  declared out of sync and the round goes on without it
  (`check_deadlines`); its progress (`progress`).

It must not decide *that* a bulk is needed from the sending side (queue
overflow, a seq no longer held: outbound.need_bulk marks it; the core's
handle_timer calls start_bulk) nor which buckets a repair needs
(antientropy.py).  It sends through outbound.py only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .actions import ExternalChanged, PeerChanged, SyncState
from .digest import NBUCKETS
from .frames import CTL_BULK_BEGIN, CTL_SWEEP, FrameType
from .outbound import send, send_records

if TYPE_CHECKING:
    from .core import SyncCore
    from .peer import Peer

SWEEPS_PER_CALL = 16                 # SWEEP controls per frame (about 350 bytes at most)
SMALL_BUCKETS = 32                   # buckets share frames while they hold fewer entries
# A bulk's deadline allows this many times the time its announced entries
# take at bulk_rate on top of bulk_timeout_s: under 20% loss a bulk takes
# about twice as long as on a clean link (resends share the window), and a
# peer under load paces slower than it could.
BULK_SLACK = 4
BULK_INFO_INTERVAL_S = 1.0           # BULK_INFO repeated this often while a bulk is sent


# ------------------------------------------------------------------ asking for a bulk

def ask_bulk(core: SyncCore, p: Peer, now: float, attempt: int = 1) -> None:
    """Ask p for its whole state: a new request id unless one is still pending.

    A new request starts an attempt (`attempt`: its number, 1 unless
    check_deadlines retries), with a deadline that the peer's BULK_INFO
    then sizes."""
    if not p.req_pending:
        p.req_id += 1
        p.req_pending = True
        p.bulk_attempt = attempt
        p.bulk_since = now
        p.bulk_announced = None
        p.bulk_received = 0
    send_resync_request(core, p, now)


def send_resync_request(core: SyncCore, p: Peer, now: float) -> None:
    send(core, p.id, FrameType.RESYNC_REQUEST, (p.req_id,))
    retry = core.request_retry_s if not p.absent else max(core.request_retry_s, 1.0)
    p.req_next = now + retry


def lost_track(core: SyncCore, p: Peer, direct: bool, now: float) -> None:
    """A gap too large to list: stop tracking that stream and ask for a bulk."""
    p.stats["lost track"] += 1
    (p.rx_direct if direct else p.rx_mcast).unanchor()
    ask_bulk(core, p, now)


def span(core: SyncCore, p: Peer) -> float:
    """How long the current attempt may take: bulk_timeout_s, plus BULK_SLACK
    times what the peer's announced entries take at bulk_rate."""
    entries = p.bulk_announced or 0
    return core.bulk_timeout_s + BULK_SLACK * entries / core.bulk_rate


def waiting_for_bulk(p: Peer) -> bool:
    """A bulk we asked p for has not completed (the attempt's clock runs)."""
    return p.bulk_attempt > 0 and p.bulk_complete_req < p.req_id


def deadline(core: SyncCore, p: Peer) -> float | None:
    """When the current attempt fails, or None (none running, or p is
    absent: silence has its own rule, and the clock restarts when it is back)."""
    if not waiting_for_bulk(p) or p.absent:
        return None
    return p.bulk_since + span(core, p)


def on_bulk_info(core: SyncCore, p: Peer, counter: int, body: tuple, now: float) -> None:
    """BULK_INFO from p: how many entries the bulk answering our request holds."""
    req, instance, entries = body
    if req != p.req_id or instance < p.bulk_instance:
        p.stats["stale bulk infos"] += 1
        return                      # about a request or a bulk replaced since
    p.bulk_announced = entries


def check_deadlines(core: SyncCore, now: float) -> None:
    """Attempts past their deadline: a new request, or, after bulk_attempts, out of sync.

    A peer that talks (so it is not absent) but never finishes a bulk
    (stalled, restarting it forever, or far slower than it announced) must
    not keep this node demoted: after the last attempt it is declared out
    of sync, loudly, and the round goes on without it.  Its copy here stays
    as it is, live changes and anti-entropy repairs still apply, and a
    later bulk that completes (its restart, `meshctl resync`) clears it.
    """
    for p in core.peers.values():
        due = deadline(core, p)
        if due is None:
            if p.absent and waiting_for_bulk(p):
                p.bulk_since = now          # the clock counts only while p is heard
            continue
        if due > now:
            continue
        took = now - p.bulk_since
        what = _progress_text(p)
        core.counters["bulk deadlines missed"] += 1
        p.stats["bulk deadlines missed"] += 1
        if p.bulk_attempt < core.bulk_attempts:
            p.req_pending = False           # a new request id: the peer starts over
            ask_bulk(core, p, now, attempt=p.bulk_attempt + 1)
            if core.round is not None and p.id in core.round:
                core.round[p.id] = p.req_id
                set_sync(core, False, f"{core.round_why}: waiting for bulk resync from peers "
                                      f"{', '.join(map(str, core.round))} (peer {p.id}: attempt "
                                      f"{p.bulk_attempt} of {core.bulk_attempts})")
            core.out.append(PeerChanged(p.id, "bulk retry",
                                        f"its bulk resync did not complete in {took:.1f} s ({what}); "
                                        f"asked again, attempt {p.bulk_attempt} of {core.bulk_attempts}"))
            continue
        reason = (f"its bulk resync did not complete in {core.bulk_attempts} attempts "
                  f"(the last {took:.1f} s, {what})")
        p.out_of_sync = reason
        p.bulk_attempt = 0                   # no clock: the deadline is spent
        p.req_pending, p.req_next = False, None     # and no more requests until a new need
        core.counters["peers declared out of sync"] += 1
        p.stats["declared out of sync"] += 1
        core.out.append(PeerChanged(p.id, "out of sync", reason))
        if core.round is not None and core.round.pop(p.id, None) is not None:
            core.round_out_of_sync.append(p.id)
            check_round(core, now)


def bulk_completed(core: SyncCore, p: Peer) -> None:
    """A bulk from p completed: the attempt is over; an out-of-sync peer is in sync again."""
    if p.bulk_complete_req >= p.req_id:
        p.bulk_attempt = 0
    if p.out_of_sync is not None:
        p.out_of_sync = None
        core.counters["peers back in sync"] += 1
        core.out.append(PeerChanged(p.id, "in sync", "a later bulk resync of it completed"))


def _progress_text(p: Peer) -> str:
    text = f"{NBUCKETS - len(p.bulk_remaining)}/{NBUCKETS} buckets" if p.bulk_remaining \
        else "not begun"
    text += f", {p.bulk_received} entries received"
    if p.bulk_announced is not None:
        text += f" of {p.bulk_announced} announced"
    return text


def progress(core: SyncCore, p: Peer, now: float) -> dict | None:
    """The bulk we wait for from p, for `meshctl status` and stats; None: none."""
    if not waiting_for_bulk(p):
        return None
    due = deadline(core, p)
    return {"attempt": p.bulk_attempt, "attempts": core.bulk_attempts,
            "begun": not p.req_pending,
            "buckets_done": NBUCKETS - len(p.bulk_remaining) if p.bulk_remaining else 0,
            "buckets": NBUCKETS,
            "entries_received": p.bulk_received, "entries_announced": p.bulk_announced,
            "elapsed_s": round(now - p.bulk_since, 3),
            "deadline_in_s": None if due is None else round(due - now, 3)}


def on_bulk_begin(core: SyncCore, p: Peer, c: tuple, now: float) -> None:
    """BULK_BEGIN from p: a newer bulk replaces ours; its bases resolve both streams."""
    _, req, instance, base_m, base_d = c
    if instance < p.bulk_instance:
        return                      # an older bulk, replaced since
    if instance > p.bulk_instance:
        p.bulk_instance = instance
        p.bulk_req = req
        p.bulk_remaining = set(range(NBUCKETS))
        p.bulk_received = 0
        core.counters["bulk resyncs received"] += 1
        p.stats["bulk resyncs received"] += 1
    if not p.rx_mcast.anchor(base_m, now):
        lost_track(core, p, False, now)
    if not p.rx_direct.anchor(base_d, now):
        lost_track(core, p, True, now)
    if p.req_pending and req >= p.req_id:
        p.req_pending = False
        p.req_next = None


def try_sweeps(core: SyncCore, p: Peer, now: float) -> None:
    """Run the SWEEPs whose frame and everything before it are resolved.

    A SWEEP vouches for its bucket's dump, sent before it on the direct
    stream: with nothing missing up to the SWEEP's frame, each dump frame
    was received or resent with the current state.  A SWEEP that started
    before the newest BULK_BEGIN is void: that bulk may have skipped some
    of its frames, and it sends every bucket again anyway.
    """
    rx = p.rx_direct
    if not rx.anchored:
        return
    resolved = rx.resolved
    waiting = []
    for item in p.pending_sweeps:
        frame, bucket, start, instance = item
        if start < p.bulk_instance:
            p.stats["sweeps void"] += 1
            continue
        if frame > resolved:
            waiting.append(item)
            continue
        deleted = p.ext.sweep(bucket, start)
        p.stats["sweeps"] += 1
        if deleted:
            p.stats["entries swept"] += len(deleted)
            if core.report:
                core.out.append(ExternalChanged(p.id, (), tuple(deleted)))
        p.repair_wait.pop(bucket, None)
        if instance == p.bulk_instance and p.bulk_remaining:
            p.bulk_remaining.discard(bucket)
            if not p.bulk_remaining:
                p.bulk_complete_req = p.bulk_req
                core.counters["bulk resyncs completed"] += 1
                bulk_completed(core, p)
                check_round(core, now)
    p.pending_sweeps = waiting


# ------------------------------------------------------------------ answering with a bulk

def on_resync_request(core: SyncCore, p: Peer, counter: int, body: tuple, now: float) -> None:
    (req,) = body
    if req <= p.last_req_from:
        p.stats["duplicate resync requests"] += 1
        return
    p.last_req_from = req
    start_bulk(core, p, req, now, "requested")


def start_bulk(core: SyncCore, p: Peer, req: int, now: float, why: str) -> None:
    """Send the whole internal cache to p: BULK_BEGIN, then every bucket, paced."""
    instance = core.sealer.next_counter          # the BULK_BEGIN frame's own counter
    base_m, base_d = core.mcast.seq, p.tx.seq
    p.bulk_tx_instance = instance
    p.floor_mcast, p.floor_direct = base_m, base_d
    if p.mcast_cum is None or p.mcast_cum < base_m:
        p.mcast_cum = base_m     # hold our next mcast frames for it from now on
    p.mcast_status_at = now
    # Buckets a replaced bulk had not reached yet go first, so that repeated
    # restarts (a peer that keeps overflowing) do not starve the last buckets.
    order = [b for b in p.repairs] + [b for b in range(NBUCKETS) if b not in p.repairs]
    p.repairs = dict.fromkeys(order, instance)
    p.bulk_needed = None
    p.tokens, p.tokens_at = core.bulk_burst, now
    core.bulks[why] += 1
    p.stats["bulk resyncs sent"] += 1
    send_records(core, p, (), "bulk", controls=((CTL_BULK_BEGIN, req, instance, base_m, base_d),))
    # Its size, so that the requester can size its deadline (7.4); a frame of
    # its own, which a node of an older version ignores (`bad type`).
    p.bulk_info = (req, instance, len(core.internal)) if req else None
    send_bulk_info(core, p, now)
    pump(core, p, now)


def send_bulk_info(core: SyncCore, p: Peer, now: float) -> None:
    """BULK_INFO to p for the bulk being sent to it, then every BULK_INFO_INTERVAL_S
    while its buckets go out (pump).  Not for a bulk nobody asked for (request 0)."""
    if p.bulk_info is None:
        p.bulk_info_at = None
        return
    send(core, p.id, FrameType.BULK_INFO, p.bulk_info)
    p.bulk_info_at = now + BULK_INFO_INTERVAL_S


def pump(core: SyncCore, p: Peer, now: float) -> None:
    """Send queued buckets (bulk or repair) to p as the rate and the resend window allow."""
    if p.epoch is None or not p.repairs:
        p.pump_at = None
        return
    rate = core.bulk_rate
    p.tokens = min(core.bulk_burst, p.tokens + (now - p.tokens_at) * rate)
    p.tokens_at = now
    window = p.tx.limit // 4                 # = resend_queue / 2
    batch = max(1, min(SMALL_BUCKETS, window // 4))
    buckets = core.internal.buckets
    repairs = p.repairs
    while repairs and p.tokens > 0 and p.tx.held_items < window:
        # Small buckets share frames (an empty cache is 16 frames, not 256):
        # every frame of this call has counter >= start, so one start
        # serves all the buckets it carries.
        start = core.sealer.next_counter
        items: list = []
        controls = []
        while repairs and len(controls) < SWEEPS_PER_CALL:
            b = next(iter(repairs))
            bucket = buckets[b]
            if controls and len(items) + len(bucket) > batch:
                break
            controls.append((CTL_SWEEP, b, start, repairs.pop(b)))
            items.extend(bucket.items())
        send_records(core, p, items, "bulk", controls=tuple(controls))
        p.tokens -= max(1, len(items))
        p.stats["buckets sent"] += len(controls)
    if p.bulk_info_at is not None and now >= p.bulk_info_at:
        if any(repairs.values()):              # bulk buckets (not repairs: 0) still to send
            send_bulk_info(core, p, now)
        else:
            p.bulk_info = p.bulk_info_at = None
    if not p.repairs:
        p.pump_at = None
    elif p.tokens <= 0:
        p.pump_at = now + (1 - p.tokens) / rate
    else:
        p.pump_at = now + core.heartbeat_s    # window full; a STATUS pumps sooner


# ------------------------------------------------------------------ the in-sync round

def begin_round(core: SyncCore, now: float, why: str) -> None:
    """Ask every peer for a bulk; not in sync until each one completed or is absent.

    With discovery, the start-up round also stays open until the discovery
    window has passed (`core.hold_until`, membership.DISCOVERY_WINDOW_S), and
    the peers proven meanwhile join it (check_round): a restarted node whose
    peers are all discovered is not "in sync", and so not promoted, with
    an empty cache, before it had the time to find them."""
    holding = core.hold_until is not None and now < core.hold_until
    if not core.peers and not holding:
        set_sync(core, True, f"{why}: no peers")
        return
    for p in core.peers.values():
        ask_bulk(core, p, now)
    core.round = {p.id: p.req_id for p in core.peers.values()}
    core.round_started = now
    core.round_why = why
    core.round_out_of_sync = []
    if not core.round:
        set_sync(core, False, f"{why}: discovery window: looking for peers for "
                              f"{core.hold_until - now:g} s")
        return
    set_sync(core, False, f"{why}: waiting for bulk resync from peers "
                          f"{', '.join(map(str, core.round))}"
             + (f"; discovery window {core.hold_until - now:g} s" if holding else ""))


def check_round(core: SyncCore, now: float) -> None:
    if core.round is None:
        return
    hold = core.hold_until
    if hold is not None:
        # Peers proven within the discovery window join the round (their
        # first contact asked for their bulk); after it, they are late
        # comers like any other (7.3) and the hold is over.
        for pid, at in core.discovered.items():
            if at <= hold and pid not in core.round and pid in core.peers:
                core.round[pid] = core.peers[pid].req_id
        if now < hold:
            return
        core.hold_until = None
    absent = []
    for pid, req in core.round.items():
        p = core.peers[pid]
        if p.bulk_complete_req >= req:
            continue
        heard = p.last_heard if p.last_heard is not None else float("-inf")
        if now - max(heard, core.round_started) >= core.peer_timeout_s:
            absent.append(pid)
            continue
        return
    core.round = None
    reason = "bulk resync complete"
    if absent:
        reason += f"; absent: peers {', '.join(map(str, absent))}"
    if core.round_out_of_sync:
        reason += (f"; out of sync (bulk not complete after {core.bulk_attempts} attempts): "
                   f"peers {', '.join(map(str, core.round_out_of_sync))}")
    set_sync(core, True, reason)


def set_sync(core: SyncCore, in_sync: bool, reason: str) -> None:
    # Every new round says "not in sync" again, even if it already was.
    announce = in_sync != core.in_sync or not in_sync
    core.in_sync, core.sync_reason = in_sync, reason
    if announce:
        core.out.append(SyncState(in_sync, reason))
