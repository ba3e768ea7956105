"""The sender side of the streams: sequencing, sealing, the resend queue, heartbeats.

Owns (proto/sync.md, sections 4.1, 6.2 and 6.5):

* sealing a frame and adding its SendFrame to the core's output (`send`);
* packing (key, attrs or None) records into as few DATA frames as fit, on
  the multicast stream or the direct stream to one peer, each frame
  numbered in its stream and its keys held for resends (`send_records`);
* the resend queue's bound: a frame evicted to stay under it degrades the
  peers that had not acknowledged it to a bulk resync (`overflow`,
  `need_bulk`), and what every tracking peer acknowledged is released
  (`release_mcast`);
* heartbeats and the tail probes, multicast and direct.

It must not decide what to send or when: the rules that call it (live
changes in core.py, resends in resend.py, bulks in bulk.py, digests in
antientropy.py) do.  It starts no bulk itself: `need_bulk` only marks the
peer, and SyncCore.handle_timer starts the bulk (bulk.start_bulk), never in
the middle of a batch being sent.  It imports no other part of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .actions import SendFrame
from .frames import FrameType, packb

if TYPE_CHECKING:
    from .core import SyncCore
    from .peer import Peer
    from .stream import OutboundStream

# DATA body overhead with an empty records array of up to 65535 entries, worst-case
# integers: array(6) + target u32 + target epoch u32 + seq u64 + array16 + [] + [].
DATA_BASE_OVERHEAD = 1 + 5 + 5 + 9 + 3 + 1 + 1
RECORD_OVERHEAD = 1 + 3 + 3          # fixarray + two bin16 headers, worst case
# Live and bulk frames leave this much room, so that resending one frame's keys
# (same sizes) together with its supersede entry still fits a single frame:
# a resend split over two frames makes the receiver wait for both.
RESEND_HEADROOM = 48


def send(core: SyncCore, peer: int | None, ftype: FrameType, body: tuple) -> None:
    """Seal one frame of any type but DATA for `peer` (None: every peer)."""
    data = core.sealer.seal(ftype, packb(body))
    core.frames_sent[ftype.name] += 1
    core.counters["bytes sent"] += len(data)
    core.out.append(SendFrame(peer, data))


def send_records(core: SyncCore, p: Peer | None, items, label: str, supersedes=(),
                 controls: tuple = ()) -> None:
    """Pack (key, attrs or None) items into as few DATA frames as fit.

    p None: the multicast stream; else the direct stream to p.  Supersedes
    and controls ride on the last frame, after every record they vouch for:
    a SWEEP must follow the bucket's records.  When the call needs several
    frames, each supersede also lists the earlier ones in its `deps`: the
    receiver resolves it only once those have arrived (or been resolved), so
    a resend never resolves a seq whose records were lost on the way.  Deps
    stay exact ranges, never widened: a widened range could make two
    supersedes wait for each other.
    """
    if p is None:
        stream, dest, tid, tep = core.mcast, None, 0, 0
    else:
        stream, dest, tid, tep = p.tx, p.id, p.id, p.epoch
    first = stream.seq + 1
    budget = core.record_budget if label == "resend" else core.pack_budget
    if not isinstance(items, list):
        items = list(items)
    frame = data_frame
    # (key, attrs or None) pairs are the wire records as they are: frames
    # are slices of `items`.  Sizes are msgpack's: fixarray(2), bin8/bin16
    # headers, nil for a flow that is gone.
    start = 0
    size = 0
    for i, (key, attrs) in enumerate(items):
        lk = len(key)
        if attrs is None:
            rs = lk + 4 + (lk > 255)
        else:
            la = len(attrs)
            rs = lk + la + 5 + (lk > 255) + (la > 255)
        if size + rs > budget and i > start:
            frame(core, stream, dest, tid, tep, items[start:i], (), ())
            start, size = i, 0
        size += rs
    n = len(items)
    if supersedes or controls:
        extra = len(packb(supersedes)) + len(packb(controls)) - 2
        if supersedes and start > 0:
            extra += 12 * len(supersedes)       # the dep range added below
        if start < n and size + extra > budget:
            frame(core, stream, dest, tid, tep, items[start:], (), ())
            start = n
        last = stream.seq + 1
        if supersedes:
            dep = ((first, last - 1),) if last > first else ()
            supersedes = tuple((kind, lo, hi, tuple(deps) + dep)
                               for kind, lo, hi, deps in supersedes)
        frame(core, stream, dest, tid, tep, items[start:], supersedes, controls)
    elif start < n:
        frame(core, stream, dest, tid, tep, items[start:], (), ())
    core.counters[f"records sent {label}"] += n


def data_frame(core: SyncCore, stream: OutboundStream, dest: int | None, tid: int, tep: int,
               recs, supersedes, controls) -> None:
    """Seal one DATA frame, the next seq of `stream`, and hold its keys for resends."""
    if dest is not None:
        p = core.peers[dest]
        if p.probe_at is None:
            p.probe_at = core.now + core.probe_delay_s
    seq = stream.next_seq()
    data = core.sealer.seal(FrameType.DATA, packb((tid, tep, seq, recs, supersedes, controls)))
    core.out.append(SendFrame(dest, data))
    core.frames_sent["DATA"] += 1
    core.counters["bytes sent"] += len(data)
    evicted = stream.hold(seq, tuple([r[0] for r in recs]), controls, supersedes)
    if evicted:
        overflow(core, stream, evicted)


def overflow(core: SyncCore, stream: OutboundStream, evicted: int) -> None:
    """Held keys over the bound: peers that had not acknowledged `evicted` get a bulk."""
    core.counters["queue overflows"] += 1
    now_due = core.now
    if stream is core.mcast:
        for p in core.peers.values():
            if p.mcast_cum is not None and p.mcast_cum < evicted and evicted > p.floor_mcast:
                need_bulk(p, "resend queue overflow", now_due)
    else:
        for p in core.peers.values():
            if p.tx is stream and evicted > p.floor_direct:
                need_bulk(p, "resend queue overflow", now_due)


def need_bulk(p: Peer, why: str, now: float) -> None:
    """Degrade p to a bulk resync, started from the next handle_timer (due at once).

    Not from inside the send that noticed it: a bulk is never interleaved
    with a half-sent batch.
    """
    if not p.bulk_needed:
        p.bulk_needed = why
        p.bulk_needed_at = now
        p.stats[f"degraded: {why}"] += 1


def release_mcast(core: SyncCore) -> None:
    """Release the multicast frames every tracking peer has acknowledged."""
    cums = [p.mcast_cum for p in core.peers.values() if p.mcast_cum is not None]
    core.mcast.release_upto(min(cums) if cums else core.mcast.seq)


def directs(core: SyncCore) -> tuple:
    """(peer, its epoch, our last seq to it) of every direct stream, for HEARTBEAT and DIGEST."""
    return tuple((p.id, p.epoch, p.tx.seq) for p in core.peers.values()
                 if p.epoch is not None and p.tx.seq)


def echoes(core: SyncCore, only: Peer | None = None) -> tuple:
    """(peer, boot id) of the peers' starts we heard, for HEARTBEAT: the proof
    a peer needs that our frames were sealed after its start (proto/sync.md, 3.1)."""
    peers = (only,) if only is not None else core.peers.values()
    return tuple((p.id, b) for p in peers for b in p.echo)


def send_heartbeat(core: SyncCore) -> None:
    if core.peers:
        # ask: "send me a STATUS", while a peer has not acknowledged all we sent
        # (its last STATUS may have been lost, and it has no reason to send another).
        ask = any((p.mcast_cum is not None and p.mcast_cum < core.mcast.seq) or p.tx.held
                  for p in core.peers.values())
        send(core, None, FrameType.HEARTBEAT, (core.mcast.seq, directs(core), int(ask), echoes(core)))


def candidate_heartbeat(core: SyncCore, c: Peer) -> None:
    """A HEARTBEAT to one discovered candidate (not a peer yet, proto/sync.md,
    3.2): it carries nothing of ours but the multicast high and the echo of
    the candidate's start, the one thing it needs to prove us (and we it)."""
    send(core, c.id, FrameType.HEARTBEAT, (core.mcast.seq, (), 0, echoes(core, c)))


def mcast_probe(core: SyncCore, now: float) -> None:
    """Tail probe: a heartbeat, repeated while a tracking peer may lack our tail."""
    send_heartbeat(core)
    lagging = any(p.mcast_cum is not None and p.known_mcast < core.mcast.seq
                  for p in core.peers.values())
    core.probe_at = now + max(core.probe_delay_s, core.nack_interval_s) if lagging else None


def direct_probe(core: SyncCore, p: Peer, now: float) -> None:
    """Unicast tail probe of our direct stream to p: repeated until its STATUS
    shows it knows our last frame (the probe, like the tail, may be lost)."""
    if p.known_direct >= p.tx.seq or p.epoch is None or p.absent:
        p.probe_at = None
        return
    send(core, p.id, FrameType.HEARTBEAT,
         (core.mcast.seq, ((p.id, p.epoch, p.tx.seq),), 1, echoes(core, p)))
    p.probe_at = now + max(core.probe_delay_s, core.nack_interval_s)
