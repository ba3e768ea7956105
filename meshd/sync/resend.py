"""What a sender does with a STATUS: release what was acknowledged, resend what was not.

Owns (proto/sync.md, sections 6.2 and 6.4):

* the acknowledgements: a peer's cumulative ack of our multicast stream
  (the multicast queue is released up to the lowest of the tracking peers),
  of our direct stream to it (released at once), and what its STATUS shows
  it knows of our last seqs (which ends the tail probes);
* the resend of the *current* state of the keys a NACKed frame carried, on
  the direct stream to that peer, with the supersedes that take over the
  original frame's duty (a direct frame's held entry moves to the resend;
  a multicast seq is marked as transferred for that peer);
* a NACK for a seq no longer held degrades the peer to a bulk resync.

It must not pack or seal frames (outbound.py does) nor choose buckets (a
STATUS only gives a bulk or repair in progress more window: bulk.pump).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bulk import pump
from .frames import STREAM_MCAST
from .outbound import need_bulk, release_mcast, send_records
from .stream import bitmap_to_seqs

if TYPE_CHECKING:
    from .core import SyncCore
    from .peer import Peer
    from .stream import OutboundStream

MAX_SUPERSEDES = 32                  # ranges per resend frame (about 600 bytes at most)


def on_status(core: SyncCore, p: Peer, counter: int, body: tuple, now: float) -> None:
    origin_epoch, streams = body
    if origin_epoch != core.epoch:
        p.stats["status for another epoch"] += 1
        return
    for kind, cum, high, start, bitmap in streams:
        stream = core.mcast if kind == STREAM_MCAST else p.tx
        if high > stream.seq:
            p.stats["status beyond sent"] += 1
            continue
        if kind == STREAM_MCAST:
            if p.mcast_cum is None or cum > p.mcast_cum:
                p.mcast_cum = cum
            p.mcast_status_at = now
            p.known_mcast = max(p.known_mcast, high)
        else:
            stream.release_upto(cum)
            p.known_direct = max(p.known_direct, high)
        if bitmap:
            resend(core, p, kind, stream, bitmap_to_seqs(start, bitmap), now)
    release_mcast(core)
    if p.repairs:
        pump(core, p, now)
    if p.known_direct >= p.tx.seq:
        p.probe_at = None


def resend(core: SyncCore, p: Peer, kind: int, stream: OutboundStream, seqs: list[int],
           now: float) -> None:
    """Resend the current state of the keys that the NACKed frames carried.

    The resend takes over the frame's duty: a direct frame's entry moves
    to the frame that resends it (with its controls and the supersedes it
    carried), and a multicast seq is marked as transferred for this peer.
    If the resend is lost too, the receiver asks for the resend, not
    again for the original.
    """
    floor = p.floor_mcast if kind == STREAM_MCAST else p.floor_direct
    transferred = p.transferred if kind == STREAM_MCAST else None
    get = core.internal.get
    budget = core.record_budget - 32
    batch: dict[bytes, bytes | None] = {}
    sup: list = []              # [stream, lo, hi, deps]
    ctl: list = []
    size = 0
    nseqs = 0

    def flush():
        nonlocal batch, sup, ctl, size
        if sup or ctl:
            send_records(core, p, list(batch.items()), "resend", supersedes=sup,
                         controls=tuple(dict.fromkeys(ctl)))
        batch, sup, ctl, size = {}, [], [], 0

    low = stream.low
    if seqs and seqs[0] < low and min(seqs[-1], low - 1) > floor:
        # No longer held (released while the peer was silent, or evicted).
        # Not superseded one by one: a bulk resync covers it, and its
        # BULK_BEGIN resolves these seqs at once.
        need_bulk(p, "asked for a frame no longer held", now)
    for s in seqs:
        if s < low:
            continue
        if transferred is None:
            entry = stream.take(s)
        elif s in transferred:
            continue
        else:
            entry = stream.held.get(s)
            if entry is not None:
                transferred.add(s)
        if entry is None:
            continue          # already resent: the resend answers for it
        keys, controls, carried = entry
        new = [(k, get(k)) for k in keys if k not in batch]
        rs = 24 * (1 + len(carried)) + 48 * len(controls)
        for k, a in new:
            rs += len(k) + 6 + (len(a) + 3 if a is not None else 0)
        if (batch or sup) and (size + rs > budget or len(sup) + len(carried) >= MAX_SUPERSEDES):
            flush()
        batch.update(new)
        size += rs
        if sup and sup[-1][0] == kind and sup[-1][2] == s - 1 and not sup[-1][3]:
            sup[-1][2] = s
        else:
            sup.append([kind, s, s, ()])
        sup.extend(list(c) for c in carried)
        ctl.extend(controls)
        nseqs += 1
    flush()
    p.stats["frames resent"] += nseqs
    core.counters["frames resent"] += nseqs
