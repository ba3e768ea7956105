"""The receiver side of the streams: records, gaps, acks and NACKs (proto/sync.md, 6.3-6.5).

Owns, for each origin's two streams (its multicast stream, its direct
stream to us):

* a DATA frame: its records applied to the origin's external cache (stamps
  decide, cache.py), its seq tracked, the supersedes of a resend settled
  once their deps are resolved, its controls handed to bulk.py;
* what heartbeats and digests say of the origin's highest seqs, so that a
  lost tail shows up (`learn_highs`);
* the STATUS we send back: cumulative ack and NACK bitmap per stream,
  `ack_delay_s` after what calls for one, repeated every `nack_interval_s`
  while anything is missing (`send_status`).

It must not resend, release or pace anything (that is the origin's side:
resend.py, outbound.py, bulk.py), nor run a SWEEP or decide a bulk itself:
a gap too large goes to bulk.lost_track, BULK_BEGIN and SWEEP to bulk.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .actions import ExternalChanged
from .bulk import lost_track, on_bulk_begin, try_sweeps
from .frames import CTL_BULK_BEGIN, CTL_SWEEP, STREAM_DIRECT, STREAM_MCAST, FrameType
from .outbound import send

if TYPE_CHECKING:
    from .core import SyncCore
    from .peer import Peer


def on_data(core: SyncCore, p: Peer, stamp: int, body: tuple, now: float) -> None:
    """DATA from p; `stamp` is the frame's counter, the stamp of its records."""
    target, target_epoch, seq, records, supersedes, controls = body
    if target == 0:
        rx, direct = p.rx_mcast, False
    elif target == core.node_id and target_epoch == core.epoch:
        rx, direct = p.rx_direct, True
    else:
        p.stats["frames not for us"] += 1
        return
    if records:
        ext = p.ext
        applied, ups, dels = ext.apply(records, stamp, core.report)
        core.counters["records received"] += len(records)
        core.counters["records applied"] += applied
        if ups or dels:
            core.out.append(ExternalChanged(p.id, tuple(ups), tuple(dels)))
        if direct and p.bulk_remaining:
            p.bulk_received += len(records)      # progress of its bulk (bulk.progress)
    if not rx.receive(seq, now):
        lost_track(core, p, direct, now)
    if direct:
        for kind, lo, hi, deps in supersedes:
            p.pending_supersedes.append((deps, kind, lo, hi))
        for c in controls:
            if c[0] == CTL_BULK_BEGIN:
                on_bulk_begin(core, p, c, now)
            elif c[0] == CTL_SWEEP:
                p.pending_sweeps.append((seq, c[1], c[2], c[3]))
        if p.pending_supersedes:
            settle_supersedes(core, p, now)
        if p.pending_sweeps:
            try_sweeps(core, p, now)
    if p.status_due is None:
        p.status_due = now + core.ack_delay_s


def settle_supersedes(core: SyncCore, p: Peer, now: float) -> None:
    """Apply the supersedes whose dependencies have all been resolved.

    Repeated until nothing changes: one supersede can resolve another's
    dependency.  Dependencies always point to frames sent after the seq
    they resolve was resent, so they cannot wait for each other.
    """
    missing = p.rx_direct.missing

    def blocked(deps) -> bool:
        for dlo, dhi in deps:
            if dhi - dlo < len(missing):
                if any(s in missing for s in range(dlo, dhi + 1)):
                    return True
            elif any(dlo <= m <= dhi for m in missing):
                return True
        return False

    progress = True
    while progress and p.pending_supersedes:
        progress = False
        waiting = []
        for item in p.pending_supersedes:
            deps, kind, lo, hi = item
            if deps and missing and blocked(deps):
                waiting.append(item)
                continue
            stream = p.rx_mcast if kind == STREAM_MCAST else p.rx_direct
            if not stream.supersede(lo, hi, now):
                lost_track(core, p, kind == STREAM_DIRECT, now)
            progress = True
        p.pending_supersedes = waiting


def on_heartbeat(core: SyncCore, p: Peer, counter: int, body: tuple, now: float) -> None:
    mcast_high, directs, ask, _echoes = body     # the echoes were checked in SyncCore.receive
    learn_highs(core, p, mcast_high, directs, now)
    if ask and p.status_due is None:
        p.status_due = now + core.ack_delay_s


def learn_highs(core: SyncCore, p: Peer, mcast_high: int, directs: tuple, now: float) -> int:
    """Note the sender's highest seqs; return its direct high for us."""
    if not p.rx_mcast.learn_high(mcast_high, now):
        lost_track(core, p, False, now)
    mine = 0
    for pid, pep, high in directs:
        if pid == core.node_id and pep == core.epoch:
            mine = high
            if not p.rx_direct.learn_high(high, now):
                lost_track(core, p, True, now)
    if p.status_due is None and (p.rx_mcast.missing or p.rx_direct.missing):
        p.status_due = now + core.ack_delay_s
    return mine


def send_status(core: SyncCore, p: Peer, now: float) -> None:
    """STATUS to p: per tracked stream, the cumulative ack and the seqs to resend."""
    streams = []
    rm, rd = p.rx_mcast, p.rx_direct
    for kind, rx in ((STREAM_MCAST, rm), (STREAM_DIRECT, rd)):
        if rx.anchored and rx.high:
            cum, high, start, bitmap, p.nack_after[kind] = rx.status(
                now, core.ack_delay_s, core.status_bitmap_bytes, p.nack_after[kind])
            streams.append((kind, cum, high, start, bitmap))
    if streams and p.epoch is not None:
        send(core, p.id, FrameType.STATUS, (p.epoch, tuple(streams)))
    p.status_due = now + core.nack_interval_s if (rm.missing or rd.missing) else None
