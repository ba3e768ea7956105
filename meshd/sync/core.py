"""The conntrack state mesh: a sans-I/O core (proto/sync.md is the specification).

Inputs are method calls that take `now` (seconds, any monotonic origin):
local kernel events, datagrams from peers, timers, operator commands and
reloads.  Outputs are lists of actions (meshd.sync.actions).

`SyncCore` is the one object the shell talks to, and this module the one
place to read where each rule lives: every input is a method here, every
frame type has its handler in HANDLERS, and each timer its line in
handle_timer.  The rules themselves live in one module per part of the
protocol:

* A datagram is checked in the order of proto/sync.md, section 9, before
  anything changes (`receive` here; the codec's checks in frames.py, the
  replay window in meshd/replay.py; from a peer with more than one path,
  a copy inside the window is counted, not refused: `_copy`).  A peer's frames count only once one
  of its heartbeats echoed this start's boot id (membership.prove,
  proto/sync.md, 3.1): nothing captured before a restart is accepted after it.
* Local events update the internal cache (cache.py); the net change of a
  batch is sent at once on this node's multicast stream, many records per
  frame (`local_events` here; packing in outbound.send_records).
* Every DATA frame has a sequence number in its stream (the multicast
  stream, or the direct stream to one peer).  The sender keeps only the keys
  each frame carried (outbound.py, stream.OutboundStream).  Receivers report,
  per stream, a cumulative ack and a bitmap of missing seqs (STATUS:
  inbound.send_status); the sender resends the *current* state of those
  keys on the direct stream to that receiver, saying which seqs it
  supersedes (resend.on_status, resend.resend).  A resend is itself
  sequenced, so it is repaired the same way (inbound.settle_supersedes).
* Heartbeats carry the highest seq of every stream, so a lost tail shows up
  within one heartbeat (and a tail probe shortly after each burst):
  outbound.send_heartbeat, mcast_probe, direct_probe; inbound.learn_highs.
* Records carry the frame counter as a stamp; receivers never let an older
  stamp overwrite a newer one (cache.py, applied in inbound.on_data).
* A node that starts asks every peer for a bulk resync: the peer sends its
  whole internal cache bucket by bucket on the direct stream, paced, each
  bucket closed by a SWEEP that lets the receiver drop what the bucket no
  longer holds.  The node reports "not in sync" until every peer's bulk is
  complete or the peer is declared absent.  All of it, both ends, and the
  in-sync round: bulk.py.
* Anti-entropy: per-bucket digests are multicast periodically; a receiver
  whose copy of a bucket is provably comparable and differs asks for that
  bucket only (antientropy.py; the buckets go out through bulk.pump).
* Peers: first contact, restart (new epoch), absent and back, adoption
  after a takeover, added and removed by a reload (membership.py, which
  emits every PeerChanged).
* Discovery (proto/sync.md, 3.2): a node announced with this cluster's
  fingerprint is only a *candidate* (`add_candidate`): bounded in number,
  sent bounded heartbeats, its frames checked like a peer's (the AEAD, then
  the proof of liveness), and it becomes a peer only when a heartbeat of it
  echoes this start (membership.candidate, poll_candidates, promote).
* Nothing is dropped silently: a resend queue over its bound
  (outbound.overflow), a gap too large to track (bulk.lost_track) or a
  resend of a seq no longer held (resend.resend) all degrade to a bulk
  resync of the peer concerned, counted in stats(); the bulk starts from
  handle_timer.

The shape.  The parts are modules of plain functions that take the core as
their first argument, `f(core, peer, ..., now)`, not mixins nor objects of
their own: the parts share nearly all their state (a bulk is sent on the
direct stream and paced by its resend window, a STATUS releases the queue
and pumps the bulk, a SWEEP completes the in-sync round), so collaborator
objects would each need the others and the sealer, the output and the
counters, and a mixin's `self._pump` says neither where it is defined nor
what it may touch.  The state is in two places only: the attributes set in
SyncCore.__init__ (this node's, one copy) and Peer (peer.py, per peer, both
directions).  Each part imports only parts after it in this list, by name
(`from .bulk import pump`, so that a cycle would fail at import):
membership, antientropy, inbound, resend, bulk, about, outbound.  A frame handler
takes `(core, peer, counter, body, now)`: the counter is the frame's, the
stamp of its records.

Must not: read a clock, touch a socket or log; nor look inside an entry: a
flow is two opaque byte strings (key, attrs), and which kernel events are
replicated is decided before local_events (node/flows.py, sync/filters.py).
"""

from __future__ import annotations

import os
from collections import Counter

from ..crypto import KeyRing
from ..replay import ReplayGuard
from . import about, antientropy, bulk, inbound, membership, outbound, resend
from .actions import Action, ExternalChanged, FrameRejected
from .cache import InternalCache
from .frames import (
    MIN_DATAGRAM,
    OVERHEAD,
    FrameError,
    FrameOpener,
    FrameSealer,
    FrameType,
    decode_body,
    parse_header,
)
from .outbound import DATA_BASE_OVERHEAD, RECORD_OVERHEAD, RESEND_HEADROOM
from .peer import Peer
from .stream import OutboundStream

# Looped-back multicast, and the frames of a peer's start before its proof
# (every start has a few): counted, not reported.
QUIET_REJECTS = frozenset({"own frame", "unproven"})
TYPE_NAMES = {t.value: t.name for t in FrameType}

# What an authentic frame does, by type: proto/sync.md, section 4.
HANDLERS = {
    FrameType.DATA: inbound.on_data,                        # records, seqs, supersedes, controls
    FrameType.STATUS: resend.on_status,                     # acks release, NACKs resend (6.4)
    FrameType.HEARTBEAT: inbound.on_heartbeat,              # highs: lost tails (6.5)
    FrameType.DIGEST: antientropy.on_digest,                # compare, ask for repairs (8)
    FrameType.RESYNC_REQUEST: bulk.on_resync_request,       # start a bulk (7.1)
    FrameType.REPAIR_REQUEST: antientropy.on_repair_request,  # queue buckets (8)
    FrameType.ABOUT: about.on_about,                        # who the peer is (4.7)
    FrameType.BULK_INFO: bulk.on_bulk_info,                 # a bulk's size: its deadline (7.4)
}


class SyncCore:
    """The state mesh of one node.

    Args:
        node_id: this node (1..2**32-1).
        peers: the other nodes' ids (fixed, from the configuration).
        keys: the sync KeyRing (`KeyRing.from_secrets(secrets, send_id, SYNC_INFO)`).
        epoch: the persisted boot epoch, raised at each start (see proto/sync.md, 3).
        max_datagram: the largest datagram sent (path MTU minus IP/UDP headers).
        heartbeat_s: heartbeat interval; a lost tail is noticed within it.
        ack_delay_s: how long a receiver waits before acknowledging (and how late a
            frame may be before it is called missing).
        nack_interval_s: how often a receiver repeats its list of missing frames.
        resend_queue: keys held per stream for resends; beyond it, degrade to bulk.
        digest_interval_s: anti-entropy period.
        bulk_rate: entries per second sent to one peer by a bulk resync or repair.
        peer_timeout_s: silence after which a peer is declared absent.
        bulk_timeout_s: the fixed part of a requested bulk's deadline (the rest is
            sized from the entries the peer announces; proto/sync.md, 7.4).
        bulk_attempts: requests of one bulk before its peer is declared out of sync.
        replay_window: frames that may arrive out of order per sender.
        report_external_changes: emit ExternalChanged actions.
        replay: a ReplayGuard (keyed by peer id), for the windows of the peers'
            proven sessions; restored marks are overwritten by each proof and so
            change nothing: the proof (membership.prove) is what refuses captures.
        boot_id: this start's 16 random bytes (proto/sync.md, 3); os.urandom(16)
            when None.  Bound into the frame key, echoed back by the peers.

    Every input returns the actions to carry out, in that order.

    Raises:
        ValueError: an id, the epoch, max_datagram, resend_queue or a timer out
            of range, or this node among its peers.
        KeyError: from the inputs that name a peer (flush_external,
            remove_peer, dump_external, external_entries) for a peer not
            configured.
    """

    def __init__(self, node_id: int, peers, keys: KeyRing, epoch: int, *,
                 max_datagram: int = 1400, heartbeat_s: float = 0.25, ack_delay_s: float = 0.01,
                 nack_interval_s: float = 0.05, resend_queue: int = 131072,
                 digest_interval_s: float = 5.0, bulk_rate: float = 100_000,
                 peer_timeout_s: float = 3.0, replay_window: int = 4096,
                 report_external_changes: bool = False, replay: ReplayGuard | None = None,
                 boot_id: bytes | None = None, discovery_window_s: float = 0.0,
                 bulk_timeout_s: float = 10.0, bulk_attempts: int = 3):
        if not 1 <= node_id <= 2**32 - 1:
            raise ValueError(f"node id {node_id} out of range")
        if not 0 <= epoch <= 2**32 - 1:
            raise ValueError(f"epoch {epoch} out of range")
        peers = sorted(set(peers))
        if node_id in peers:
            raise ValueError("a node is not its own peer")
        if any(not 1 <= p <= 2**32 - 1 for p in peers):
            raise ValueError("peer ids must be 1..2**32-1")
        if not MIN_DATAGRAM <= max_datagram <= 65507:
            raise ValueError(f"max_datagram must be {MIN_DATAGRAM}..65507")
        if resend_queue < 16:
            raise ValueError("resend_queue must be at least 16")
        _check_timers(heartbeat_s, digest_interval_s, peer_timeout_s)
        _check_bulk_limits(bulk_timeout_s, bulk_attempts)
        self.node_id = node_id
        self.epoch = epoch
        self.keys = keys
        self.max_datagram = max_datagram
        self.max_body = max_datagram - OVERHEAD
        self.record_budget = self.max_body - DATA_BASE_OVERHEAD
        self.pack_budget = self.record_budget - RESEND_HEADROOM
        self.ack_delay_s = ack_delay_s
        self.nack_interval_s = nack_interval_s
        self._timer_values(heartbeat_s, digest_interval_s, peer_timeout_s)
        self.bulk_rate = float(bulk_rate)
        self.bulk_timeout_s = float(bulk_timeout_s)
        self.bulk_attempts = int(bulk_attempts)
        self.bulk_burst = max(1.0, self.bulk_rate * 0.01)
        self.probe_delay_s = 4 * ack_delay_s
        self.report = report_external_changes
        self.status_bitmap_bytes = max(1, (self.max_body - 72) // 2)
        self.resend_queue = resend_queue
        self.max_gap = max(4096, resend_queue // 2)

        self.boot_id = os.urandom(16) if boot_id is None else boot_id
        self.sealer = FrameSealer(keys, node_id, epoch, self.boot_id)
        self.opener = FrameOpener(keys)
        self.replay = replay if replay is not None else ReplayGuard(window=replay_window)
        self.internal = InternalCache(self.pack_budget - RECORD_OVERHEAD)
        self.mcast = OutboundStream(resend_queue)
        self.peers: dict[int, Peer] = {p: Peer(p, resend_queue, self.max_gap) for p in peers}
        # Discovery: candidates (not peers: nothing of ours but heartbeats goes
        # to them), when each one's next heartbeat is due, and the peers that
        # were candidates, with when they proved the key.
        self.candidates: dict[int, Peer] = {}
        self.candidate_at: dict[int, float] = {}
        self.discovered: dict[int, float] = {}
        # The discovery hold (bulk.begin_round, check_round): with discovery, the
        # start-up round stays open this long for the peers still to be found.
        self.discovery_window_s = float(discovery_window_s)
        self.hold_until: float | None = None

        # Redundant paths (sync/paths.py, in the shell): the peers whose frames
        # may come twice, over two paths; a copy is not a replay (receive).
        self.multipath: frozenset[int] = frozenset()
        # Of the datagram just received: its sender if it was authentic and
        # current (accepted, or such a copy), else None; what the shell judges
        # a path by.
        self.heard_from: int | None = None

        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()
        self.frames_sent: Counter = Counter()
        self.frames_received: Counter = Counter()
        self.bulks: Counter = Counter()        # bulk resyncs we started, by reason

        self.started_at: float | None = None
        self.heartbeat_at: float | None = None
        self.digest_at: float | None = None
        # ABOUT (about.py): set by the node core; None until then, and nothing is sent.
        self.about_identity: tuple | None = None
        self.about_groups: tuple = ()
        self.about_at: float | None = None
        self.probe_at: float | None = None
        self.round: dict[int, int] | None = None     # peer -> request id its bulk must answer
        self.round_started = 0.0
        self.round_why = ""
        self.round_out_of_sync: list[int] = []     # peers of the round declared out of sync
        self.in_sync = False
        self.sync_reason = "not started"
        # Of the input being handled: its `now` (for the parts that send, deep
        # down) and the actions gathered so far (the parts append to it).
        self.now = 0.0
        self.out: list[Action] = []

    # ================================================================== inputs

    def start(self, now: float) -> list[Action]:
        """Announce this epoch and ask every peer for a bulk resync."""
        self.now = now
        self.started_at = now
        self.heartbeat_at = now            # first heartbeat at once: peers learn the epoch
        self.digest_at = now + self.digest_interval_s
        if self.discovery_window_s > 0:
            self.hold_until = now + self.discovery_window_s
        bulk.begin_round(self, now, "startup")
        return self._flush()

    def request_resync(self, now: float) -> list[Action]:
        """Operator: fetch every peer's whole state again; not in sync until done."""
        self.now = now
        bulk.begin_round(self, now, "operator resync")
        return self._flush()

    def local_events(self, events, now: float) -> list[Action]:
        """Local kernel events: iterable of (kind, key, attrs); attrs None for DESTROY."""
        self.now = now
        changed = self.internal.apply_events(events)
        if not changed:
            return self._flush()
        self.counters["local changes"] += len(changed)
        if any(p.adopted for p in self.peers.values()):
            membership.move_adopted(self, changed)
        if self.peers:
            outbound.send_records(self, None, changed, "live")
            self.probe_at = now + self.probe_delay_s     # tail probe once the burst is over
        return self._flush()

    def local_resync(self, table: dict[bytes, bytes], now: float) -> list[Action]:
        """After a kernel overrun: `table` is a fresh dump; send what differs."""
        events = self.internal.diff(table)
        self.counters["local resyncs"] += 1
        self.counters["local resync differences"] += len(events)
        return self.local_events(events, now)

    def local_resync_bucket(self, bucket: int, part: dict[bytes, bytes], now: float) -> list[Action]:
        """local_resync one bucket at a time (`part`: the dump's entries of that bucket),
        so that the node core can spread a dump over its timer's steps
        (node/flows.py); local_resync_done() at the end."""
        events = self.internal.diff_bucket(bucket, part)
        self.counters["local resync differences"] += len(events)
        return self.local_events(events, now) if events else []

    def local_resync_done(self) -> None:
        self.counters["local resyncs"] += 1

    def receive(self, data: bytes, source_peer_hint: int | None, now: float) -> list[Action]:
        """A datagram arrived.  `source_peer_hint`: the peer its source address maps to.

        The checks run in the order of proto/sync.md, section 9; an authentic
        frame is then its sender's news (membership.heard) and goes to the
        handler of its type (HANDLERS).
        """
        self.now = now
        self.heard_from = None
        self.counters["bytes received"] += len(data)
        try:
            h = parse_header(data)
        except FrameError as e:
            return self._reject(e.reason, e.detail, source_peer_hint)
        sender = h.sender
        if sender == self.node_id:
            if h.epoch < self.epoch or (h.epoch == self.epoch and h.counter <= self.sealer.counter):
                return self._reject("own frame", "looped back", sender)
            return self._reject("duplicate node id", f"another node sends as node {sender}", sender)
        p = self.peers.get(sender)
        if p is None:
            p = self.candidates.get(sender)
            # A candidate's frames come from the address it was discovered at
            # (the shell's hint), and only its proof can let them in.
            if p is None or source_peer_hint != sender:
                return self._reject("unknown sender", f"node {sender} is not a peer", source_peer_hint)
        if source_peer_hint is not None and source_peer_hint != sender:
            return self._reject("sender mismatch",
                                f"header says node {sender}, address is node {source_peer_hint}", sender)
        # Replay check before the AEAD: free for duplicates, records nothing.
        # A frame of any other start than the peer's proven session has no
        # window to be checked against: only its proof can let it in.
        proven = p.session is not None and p.session[0] == h.epoch and p.session[1] == h.boot_id
        if proven:
            why = self.replay.check(sender, h.epoch, h.counter)
            if why:
                if sender in self.multipath and self.replay.seen_in_window(sender, h.epoch, h.counter):
                    return self._copy(p, data, h)
                return self._reject(why, f"node {sender} epoch {h.epoch} counter {h.counter}", sender)
        try:
            plaintext = self.opener.open(data, h)
            self.opener.check_fields(h)
            body = decode_body(h.type, plaintext)
        except FrameError as e:
            return self._reject(e.reason, e.detail, sender)
        # ---- authenticated from here on
        if proven:
            self.replay.accept(sender, h.epoch, h.counter)
        elif not membership.prove(self, p, h, body, now):
            self.out.extend(self._reject("unproven", f"node {sender} epoch {h.epoch} counter "
                                         f"{h.counter}: no echo of our start yet", sender))
            return self._flush()
        elif sender not in self.peers:
            membership.promote(self, p, now)          # a candidate proved the key
        self.frames_received[TYPE_NAMES[h.type]] += 1
        self.heard_from = sender
        membership.heard(self, p, h.epoch, now, not proven)
        HANDLERS[h.type](self, p, h.counter, body, now)
        return self._flush()

    def _copy(self, p: Peer, data: bytes, h) -> list[Action]:
        """A frame accepted already, again (a heartbeat goes out on every path to
        a peer, so it comes once per path that works): nothing to do but to say
        it was authentic, for the path it came over.  Opened first, so that a
        forged copy is still a reject."""
        try:
            self.opener.open(data, h)
        except FrameError as e:
            return self._reject(e.reason, e.detail, p.id)
        self.counters["copies over another path"] += 1
        p.stats["copies over another path"] += 1
        self.heard_from = p.id
        return []

    def set_multipath(self, peers, now: float) -> list[Action]:
        """The peers with more than one path (the configuration's): their frames
        may arrive twice, and a copy inside the replay window is counted as
        such, never as a replay."""
        self.now = now
        self.multipath = frozenset(peers)
        return self._flush()

    def next_deadline(self) -> float | None:
        """When handle_timer has work next (heartbeat, probe, digest, a peer's
        STATUS, retry, bulk or pacing), or None."""
        times = [self.heartbeat_at, self.probe_at, self.digest_at, self.about_at,
                 *self.candidate_at.values()]
        for p in self.peers.values():
            times.append(p.status_due)
            times.append(p.pump_at)
            times.append(p.probe_at)
            if p.req_pending:
                times.append(p.req_next)
            if p.bulk_needed and p.epoch is not None:
                times.append(p.bulk_needed_at)
            times.append(bulk.deadline(self, p))
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Action]:
        """Every timer due at `now`, each on its line below."""
        self.now = now
        for p in self.peers.values():
            if p.status_due is not None and p.status_due <= now:
                inbound.send_status(self, p, now)                  # acks and NACKs
            if p.req_pending and p.req_next is not None and p.req_next <= now:
                bulk.send_resync_request(self, p, now)             # retry
            if p.bulk_needed and p.epoch is not None and p.bulk_needed_at <= now:
                bulk.start_bulk(self, p, p.last_req_from, now, p.bulk_needed)   # degraded
            if p.pump_at is not None and p.pump_at <= now:
                bulk.pump(self, p, now)                            # paced buckets
            if p.probe_at is not None and p.probe_at <= now:
                outbound.direct_probe(self, p, now)                # direct tail
        bulk.check_deadlines(self, now)                            # bulks that do not finish
        if self.heartbeat_at is not None and self.heartbeat_at <= now:
            outbound.send_heartbeat(self)
            self.heartbeat_at = now + self.heartbeat_s
            self.probe_at = None
            membership.check_silence(self, now)                     # absent peers, the round
        elif self.probe_at is not None and self.probe_at <= now:
            outbound.mcast_probe(self, now)                        # multicast tail
        if self.digest_at is not None and self.digest_at <= now:
            antientropy.send_digests(self)
            self.digest_at = now + self.digest_interval_s
        if self.about_at is not None and self.about_at <= now:
            about.send(self, now)                                  # who we are (4.7)
        if self.candidate_at:
            membership.poll_candidates(self, now)                  # discovered (3.2)
        return self._flush()

    def set_about(self, name: str, version: str, settings: list[tuple[str, str]], digest: bytes,
                  now: float) -> list[Action]:
        """Who this node is, for its ABOUT frames (sent at once, then every
        about.ABOUT_INTERVAL_S): its name, meshd's version, the shared settings
        (meshd/config/shared.py) and their digest.  Again after a reload."""
        self.about_identity = (name, version, list(settings), digest)
        self.about_at = now
        return []

    def about_soon(self, now: float) -> list[Action]:
        """The path to a peer changed (the shell's sync/paths.py): our ABOUT goes
        out at once, over the new path, since a peer judges which path we use
        by our own frames (anything but heartbeats), and an idle node sends
        few others."""
        if self.about_identity is not None:
            self.about_at = now
        return []

    def set_about_groups(self, groups, now: float) -> list[Action]:
        """The groups as this node sees them, [(id, state, demotion)]: sent at once
        when they changed."""
        groups = tuple(groups)
        if groups != self.about_groups:
            self.about_groups = groups
            if self.about_identity is not None:
                self.about_at = now
        return []

    def peer_rejects(self, now: float) -> dict[int, dict]:
        """Per peer: its frames refused, by reason, and the last one (a hint:
        the reasons before the tag are not authenticated)."""
        out = {}
        for pid, p in self.peers.items():
            counts = {k[len("rejected: "):]: v for k, v in p.stats.items()
                      if k.startswith("rejected: ") and v and k[len("rejected: "):] not in QUIET_REJECTS}
            last = None
            if p.last_reject is not None:
                reason, detail, when = p.last_reject
                last = {"reason": reason, "detail": detail, "ago_s": round(now - when, 3)}
            out[pid] = {"counts": counts, "last": last}
        return out

    def peer_about(self) -> dict[int, tuple[dict | None, float | None]]:
        """What each peer last said in its ABOUT, and when (None: never)."""
        return {pid: (p.about, p.about_heard) for pid, p in self.peers.items()}

    # ------------------------------------------------------------ takeover and operator

    def adopt(self, origin: int, now: float) -> list[Action]:
        """The takeover from `origin` is committed (node/takeover.py calls this).

        Those flows now run through this node: as the kernel reports them
        (local events), they move from the external cache of `origin` to the
        internal cache, and the node core moves the rest bucket by bucket
        (adoptable_bucket).  Adoption ends when `origin` is heard again after
        the grace (its own state is then authoritative) or restarts.
        """
        membership.adopt(self, origin, now)
        return []

    def drop_adopted(self, keys) -> int:
        """Flows that ended on this node before they were adopted (their DESTROY found no
        internal entry): they leave the adopted origins' caches, so that the adoption does
        not bring them back as this node's (membership.drop_ended).  Returns how many."""
        return membership.drop_ended(self, keys)

    def adoptable_bucket(self, origin: int, bucket: int) -> list[tuple[bytes, bytes]]:
        """The flows of one bucket that the takeover from `origin` made ours:
        those in its external cache with a state from before the takeover (see
        Peer.adopted_upto); nothing if it restarted since (its bulk is newer)."""
        return membership.adoptable(self, origin, bucket)

    def flush_internal(self) -> int:
        """Forget the internal cache (peers are not told; follow with local_resync)."""
        n = self.internal.clear()
        self.counters["internal flushes"] += 1
        return n

    def flush_external(self, origin: int | None = None) -> list[Action]:
        """Forget one origin's (or every origin's) external cache.

        A live origin's entries come back through anti-entropy; this is for
        origins that are gone for good, or to force a refresh.
        """
        for p in ([self.peers[origin]] if origin is not None else self.peers.values()):
            gone = p.ext.clear()
            self.counters["external flushes"] += 1
            if gone and self.report:
                self.out.append(ExternalChanged(p.id, (), tuple(gone)))
        return self._flush()

    # ------------------------------------------------------------ reload
    #
    # What a configuration reload can change while the mesh runs (meshd/reload.py
    # says why the rest needs a restart).  None of these costs a peer its state
    # or this node its in-sync status.

    def set_keys(self, keys: KeyRing, now: float) -> list[Action]:
        """New cluster keys: seal under keys.send_id from the next frame on, open
        frames under any key of `keys`; a removed key opens nothing from now on.

        The frame counter goes on (see FrameSealer.rekey): the peers' replay
        guards and the records' stamps need it to grow anyway.
        """
        self.now = now
        self.keys = keys
        self.sealer.rekey(keys)
        self.opener.rekey(keys)
        self.counters["key changes"] += 1
        return self._flush()

    def add_peer(self, peer: int, now: float) -> list[Action]:
        """A new peer: ask it for a bulk resync; it gets ours when it asks (at its
        start, or its retry once it knows us).

        Not part of an in-sync round: a node in sync stays in sync (its groups
        are not demoted because a node joined), as when an absent peer returns.
        Raises ValueError for an id that is ours, known, or out of range.
        """
        if peer == self.node_id or peer in self.peers or not 1 <= peer <= 2**32 - 1:
            raise ValueError(f"cannot add peer {peer}: ours, known already, or out of range")
        self.now = now
        membership.withdraw(self, peer)       # configured now: no longer a candidate
        membership.added(self, peer, now)
        return self._flush()

    # ------------------------------------------------------------ discovery

    def add_candidate(self, peer: int, now: float) -> bool:
        """A node announced with this cluster's fingerprint (the shell's
        discovery): a candidate, sent a heartbeat at once and then every
        membership.CANDIDATE_INTERVAL_S, a peer once it proves the key.
        False when membership.MAX_CANDIDATES are held already.  The heartbeats
        go out from handle_timer (next_deadline says when).
        Raises ValueError for our own id or a peer's (configured or proven).
        """
        if peer == self.node_id or peer in self.peers or not 1 <= peer <= 2**32 - 1:
            raise ValueError(f"cannot add candidate {peer}: ours, a peer already, or out of range")
        return membership.candidate(self, peer, now)

    def remove_candidate(self, peer: int) -> None:
        """A candidate no longer announced: forgotten (nothing for an unknown id)."""
        membership.withdraw(self, peer)

    def remove_peer(self, peer: int, now: float) -> list[Action]:
        """A peer removed from the mesh: forget its flows and what we held for it.

        Nothing waits on it any more: the multicast resend queue no longer
        holds frames for its acknowledgement, and an in-sync round waiting for
        its bulk completes without it.  The flows of it that were already
        committed to the kernel stay there (they may be running through this
        node after a takeover) until they time out.  Its replay mark stays, so
        its old frames are still refused if it is added again.
        KeyError for an unknown peer.
        """
        p = self.peers.pop(peer)
        self.discovered.pop(peer, None)
        self.now = now
        membership.removed(self, p, now)
        return self._flush()

    def set_timers(self, heartbeat_s: float, digest_interval_s: float, peer_timeout_s: float,
                   now: float, bulk_timeout_s: float | None = None,
                   bulk_attempts: int | None = None) -> list[Action]:
        """New heartbeat, anti-entropy and peer-timeout periods, from now on, and
        new bulk limits (None: unchanged), which apply to the attempt under way.

        A deadline that the new period brings closer moves closer at once;
        one that it pushes away runs once more at its old time.
        ValueError as in the constructor.
        """
        _check_timers(heartbeat_s, digest_interval_s, peer_timeout_s)
        timeout = self.bulk_timeout_s if bulk_timeout_s is None else float(bulk_timeout_s)
        attempts = self.bulk_attempts if bulk_attempts is None else int(bulk_attempts)
        _check_bulk_limits(timeout, attempts)
        self.bulk_timeout_s, self.bulk_attempts = timeout, attempts
        self.now = now
        self._timer_values(heartbeat_s, digest_interval_s, peer_timeout_s)
        if self.heartbeat_at is not None:
            self.heartbeat_at = min(self.heartbeat_at, now + heartbeat_s)
        if self.digest_at is not None:
            self.digest_at = min(self.digest_at, now + digest_interval_s)
        return self._flush()

    def set_report_external_changes(self, on: bool, now: float) -> list[Action]:
        """Switch ExternalChanged reporting (commit = "continuous") on or off.

        Switched on, every external entry held now is reported first, as one
        upsert per origin: the shell's applier then puts the flows replicated
        so far into the kernel, ahead of the changes that follow, in order.
        """
        self.now = now
        was, self.report = self.report, on
        if on and not was:
            for p in self.peers.values():
                entries = tuple(p.ext.items())
                if entries:
                    self.out.append(ExternalChanged(p.id, entries, ()))
        return self._flush()

    def _timer_values(self, heartbeat_s: float, digest_interval_s: float,
                      peer_timeout_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.digest_interval_s = digest_interval_s
        self.repair_timeout_s = digest_interval_s * 0.9
        self.peer_timeout_s = peer_timeout_s
        self.adopt_grace_s = 4 * heartbeat_s
        self.request_retry_s = max(heartbeat_s, 4 * self.nack_interval_s)

    # ------------------------------------------------------------ queries

    def external_entries(self, origin: int | None = None):
        """The attrs of one origin's external entries, or of all origins (each key once).

        For the operator's `commit` (a takeover commits through dump_external,
        node/takeover.py).  Raises KeyError for an unknown origin.
        """
        if origin is not None:
            return self.peers[origin].ext.attrs()
        return self._all_external()

    def _all_external(self):
        seen: set[bytes] = set()
        for p in self.peers.values():
            for key, attrs in p.ext.items():
                if key not in seen:
                    seen.add(key)
                    yield attrs

    def dump_internal(self):
        """(key, attrs) of the internal cache."""
        return self.internal.items()

    def dump_external(self, origin: int):
        """(key, attrs) of one origin's external cache.  KeyError for an unknown origin."""
        return self.peers[origin].ext.items()

    def progress(self, now: float) -> dict:
        """`meshctl status`: in sync or not and why, each bulk waited for (its
        attempt, buckets, entries, deadline) and the peers declared out of sync."""
        waiting = {}
        for p in self.peers.values():
            if (w := bulk.progress(self, p, now)) is not None:
                waiting[p.id] = w
        return {"in_sync": self.in_sync, "reason": self.sync_reason, "waiting": waiting,
                "out_of_sync": {p.id: p.out_of_sync for p in self.peers.values()
                                if p.out_of_sync is not None}}

    def stats(self, now: float | None = None) -> dict:
        """The `meshctl stats` answer's "sync" part; ages counted from `now` when given."""
        return {
            "node": self.node_id,
            "epoch": self.epoch,
            "in_sync": self.in_sync,
            "sync_reason": self.sync_reason,
            "frames_sent": dict(self.frames_sent),
            "frames_received": dict(self.frames_received),
            "rejected": dict(self.rejected),
            "counters": dict(self.counters),
            "bulk_resyncs_started": dict(self.bulks),
            "internal": {"entries": len(self.internal), "bytes": self.internal.nbytes(),
                         "oversized_refused": self.internal.oversized},
            "mcast": {"seq": self.mcast.seq, "held": self.mcast.held_items},
            "peers": {p.id: p.summary(now, None if now is None else bulk.progress(self, p, now))
                      for p in self.peers.values()},
            "candidates": sorted(self.candidates),
            "discovered": sorted(self.discovered),
        }

    # ================================================================== output

    def _flush(self) -> list[Action]:
        out, self.out = self.out, []
        return out

    def rejected_elsewhere(self, reason: str, detail: str, peer: int | None, count: int,
                           now: float) -> list[Action]:
        """`count` datagrams refused before they reached this core (the wire
        engine's screen: truncated, an unknown key, a bad tag), from the address
        of `peer` (None: no peer's); counted as if refused here."""
        self.now = now
        return self._reject(reason, detail, peer, count)

    def _reject(self, reason: str, detail: str, peer: int | None, count: int = 1) -> list[Action]:
        self.rejected[reason] += count
        if peer is not None and peer in self.peers:
            p = self.peers[peer]
            p.stats[f"rejected: {reason}"] += count
            if reason not in QUIET_REJECTS:
                p.last_reject = (reason, detail, self.now)
        if reason in QUIET_REJECTS:
            return []
        return [FrameRejected(reason, detail, peer, count)]


def _check_bulk_limits(bulk_timeout_s: float, bulk_attempts: int) -> None:
    if bulk_timeout_s <= 0 or bulk_attempts < 1:
        raise ValueError("bulk_timeout_s must be positive and bulk_attempts at least 1")


def _check_timers(heartbeat_s: float, digest_interval_s: float, peer_timeout_s: float) -> None:
    if heartbeat_s <= 0 or digest_interval_s <= 0:
        raise ValueError("heartbeat_s and digest_interval_s must be positive")
    if peer_timeout_s < 2 * heartbeat_s:
        # Two lost heartbeats would declare a live peer absent (and cost it a bulk).
        raise ValueError("peer_timeout_s must be at least 2 * heartbeat_s")
