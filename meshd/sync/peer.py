"""Everything one node keeps about one peer, in both directions.

As an *origin* (it sends us its flows): its external cache, what we are
missing of its two streams, our bulk-resync requests to it and the bucket
sweeps waiting for its direct stream to be complete.

As a *recipient* (we send it our flows): our direct stream to it, how far it
acknowledged our multicast stream, and the buckets queued for it (bulk resync
or anti-entropy repair), paced by a token bucket.

Both halves are reset when the peer's epoch changes (it restarted): its
counters start again, and it lost whatever it knew about us.

Must not: hold a rule: this is state, which the core's parts read and change
(membership.py resets it, outbound, inbound, resend, bulk and antientropy
use its halves).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .cache import ExternalCache
from .stream import InboundStream, OutboundStream


@dataclass(eq=False)
class Peer:
    id: int
    resend_limit: int
    max_gap: int
    epoch: int | None = None             # authenticated epoch; None until first heard
    about: dict | None = None            # its last ABOUT (about.py), kept across its restarts
    about_heard: float | None = None
    # The last frame refused that named this peer as its sender, (reason, detail,
    # when): unauthenticated for the reasons before the tag, so a hint
    # (`meshctl cluster`), never acted on.
    last_reject: tuple[str, str, float] | None = None
    # Its start that proved fresh to us (epoch, boot id): a HEARTBEAT of it
    # echoed our boot id.  Only frames of this session pass (proto/sync.md, 3.1).
    session: tuple[int, bytes] | None = None
    # The boot ids of its last two starts seen in authentic frames, newest
    # last: echoed in our heartbeats so that it can prove its frames fresh.
    echo: tuple[bytes, ...] = ()
    # (epoch, boot id) of those starts -> the highest counter refused before
    # its proof: such a frame stays refused once the start is proven.
    unproven: dict = field(default_factory=dict)
    last_heard: float | None = None
    absent: bool = False
    added_at: float | None = None        # added by a reload: silence counts from then
    stats: Counter = field(default_factory=Counter)

    # ---- as an origin
    ext: ExternalCache = field(default_factory=ExternalCache)
    rx_mcast: InboundStream = None       # type: ignore[assignment]
    rx_direct: InboundStream = None      # type: ignore[assignment]
    status_due: float | None = None      # when to send it a STATUS
    pending_sweeps: list = field(default_factory=list)   # (frame seq, bucket, start, instance)
    pending_supersedes: list = field(default_factory=list)  # (deps, stream, lo, hi)
    nack_after: list = field(default_factory=lambda: [0, 0])   # NACK rotation cursor per stream
    req_id: int = 0                      # our last RESYNC_REQUEST id to it
    req_pending: bool = False            # not answered by a BULK_BEGIN yet
    req_next: float | None = None        # retry time while pending
    bulk_instance: int = 0               # newest bulk from it we know of
    bulk_req: int = 0                    # the request id it answers
    bulk_remaining: set = field(default_factory=set)
    bulk_complete_req: int = 0           # request id of the last complete bulk (0: none)
    # The deadline of the bulk we asked for (bulk.check_deadlines): the
    # attempt (0: none running), when its clock started, the entries its
    # BULK_INFO announced, the records received in it; why it was given up.
    bulk_attempt: int = 0
    bulk_since: float = 0.0
    bulk_announced: int | None = None
    bulk_received: int = 0
    out_of_sync: str | None = None
    repair_wait: dict = field(default_factory=dict)      # bucket -> when we asked for it
    adopted: bool = False                # its flows were committed here (takeover)
    adopted_at: float = 0.0
    # Its state as of the takeover: (epoch, highest frame counter heard).  A
    # record stamped later was sent by a node alive after the takeover, about
    # a flow that runs through it: that one is not ours to adopt.
    adopted_upto: tuple[int, int] | None = None

    # ---- as a recipient
    tx: OutboundStream = None            # type: ignore[assignment]
    mcast_cum: int | None = None         # its cumulative ack of our mcast stream (None: not tracking)
    mcast_status_at: float = 0.0
    floor_mcast: int = 0                 # our mcast seqs <= this are covered by a bulk we began
    floor_direct: int = 0                # same for our direct stream to it
    transferred: set = field(default_factory=set)        # our mcast seqs resent to it directly
    repairs: dict = field(default_factory=dict)          # bucket -> instance (0: repair), to send
    bulk_needed: str | None = None       # why a bulk must be (re)started at the next tick
    bulk_needed_at: float = 0.0
    bulk_tx_instance: int = 0
    bulk_info: tuple | None = None       # (request, instance, entries) of the bulk sent to it
    bulk_info_at: float | None = None    # when to repeat it (bulk.pump)
    last_req_from: int = 0               # its last RESYNC_REQUEST id
    known_mcast: int = 0                 # the highest seq of ours its last STATUS knew of
    known_direct: int = 0
    probe_at: float | None = None        # unicast tail probe while it may have lost our tail
    tokens: float = 0.0
    tokens_at: float = 0.0
    pump_at: float | None = None

    def __post_init__(self):
        self.reset_origin()
        self.reset_recipient()

    def reset_origin(self) -> None:
        """Its streams restart (new epoch, or first contact)."""
        self.rx_mcast = InboundStream(anchored=False, max_gap=self.max_gap)
        self.rx_direct = InboundStream(anchored=True, max_gap=self.max_gap)
        self.status_due = None
        self.pending_sweeps = []
        self.pending_supersedes = []
        self.nack_after = [0, 0]
        self.bulk_instance = 0
        self.bulk_req = 0
        self.bulk_remaining = set()
        self.repair_wait = {}

    def reset_recipient(self) -> None:
        """It forgot everything about our streams (it restarted)."""
        # Room for resends of everything the multicast queue may hold, plus
        # the bulk window (half of it): the direct stream does not overflow
        # from its own traffic, only when the peer stops acknowledging.
        self.tx = OutboundStream(2 * self.resend_limit)
        self.mcast_cum = None
        self.floor_mcast = 0
        self.floor_direct = 0
        self.transferred = set()
        self.repairs = {}
        self.bulk_needed = None
        self.bulk_tx_instance = 0
        self.bulk_info = None
        self.bulk_info_at = None
        self.last_req_from = 0
        self.pump_at = None
        self.known_mcast = 0
        self.known_direct = 0
        self.probe_at = None

    @property
    def bulk_in_progress(self) -> bool:
        return bool(self.bulk_remaining)

    def summary(self, now: float | None = None, progress: dict | None = None) -> dict:
        """Both halves, for SyncCore.stats()["peers"][id] (`meshctl stats`)."""
        rm, rd = self.rx_mcast, self.rx_direct
        return {
            "epoch": self.epoch,
            "since_last_frame_s": None if self.last_heard is None or now is None
            else round(now - self.last_heard, 3),
            "absent": self.absent,
            "adopted": self.adopted,
            "in": {
                "mcast": {"anchored": rm.anchored, "high": rm.high, "resolved": rm.resolved,
                          "lag": rm.high - rm.resolved if rm.anchored else None,
                          "missing": len(rm.missing), "received": rm.received,
                          "went_missing": rm.went_missing},
                "direct": {"anchored": rd.anchored, "high": rd.high, "resolved": rd.resolved,
                           "missing": len(rd.missing), "received": rd.received,
                           "went_missing": rd.went_missing},
                "bulk": {"in_progress": bool(self.bulk_remaining),
                         "buckets_remaining": len(self.bulk_remaining),
                         "complete_for_request": self.bulk_complete_req,
                         "requested": self.req_id, "pending": self.req_pending,
                         "waiting": progress, "out_of_sync": self.out_of_sync},
                "pending_sweeps": len(self.pending_sweeps),
                "external_entries": len(self.ext),
                "external_bytes": self.ext.nbytes(),
                "tombstones": len(self.ext.tombstones),
                "tombstones_dropped": self.ext.tombstones_dropped,
                "stale_records": self.ext.stale,
            },
            "out": {
                "mcast_acked": self.mcast_cum,
                "direct_seq": self.tx.seq,
                "direct_held": self.tx.held_items,
                "buckets_queued": len(self.repairs),
                "bulk_pending": self.bulk_needed,
            },
            "counters": dict(self.stats),
        }
