"""This node's conntrack flows between its kernel and its state mesh: the rules.

Owns: which kernel events reach the state mesh (the filter, the merge of
partial UPDATE events, expectations as records of their own key, the flows
held until they are min_age_ms old: node/young.py), the rebuild of the
internal cache from a kernel dump (at start, after an overrun, after a
filter change), in steps that a shell can
checkpoint between, with the events that arrive meanwhile held back and fed
after it, and which of the peers' changes go into the kernel in continuous
mode (a peer's expectation only once its master is there).

Must not: read a clock, touch a socket or netlink, log.  The shell dumps the
table and applies changes; it hands the dump to `begin_resync` and calls
`step` while `busy` (NodeCore does, from its timer).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from ..kernel import ctnetlink as ct
from ..sync.actions import DESTROY, NEW, UPDATE, ExternalChanged
from ..sync.core import SyncCore
from ..sync.digest import NBUCKETS, bucket_of
from ..sync.filters import EventFilter
from .actions import KernelResynced
from .young import YoungFlows

EXP_NEW = ct.EXP_NEW            # EXP_DESTROY is the only greater kind

# Dumped entries split into buckets per step, and entries diffed per step (whole
# buckets, at least one): after an overrun under a flood the table holds
# hundreds of thousands of entries, and the election's adverts share the loop.
SPLIT_STEP = 5000
DIFF_STEP = 2000
# Peers' expectations held back until their master is in the kernel (continuous commit).
EXPECT_WAITING = 4096


class KernelChanges(NamedTuple):
    """What the continuous applier writes into the kernel for a batch of peer changes (attrs)."""
    upserts: list
    deletes: list
    expect_upserts: list
    expect_deletes: list


class KernelFlows:
    """The kernel side of the state mesh of one node.

    Args:
        sync: the node's SyncCore.
        event_filter: the [sync] filter (its local addresses are set by the shell).
        continuous: commit = "continuous" (the kernel also holds the peers' flows).
        min_age_s: [sync] min_age_ms in seconds; 0: every flow is replicated at once.
    """

    def __init__(self, sync: SyncCore, event_filter: EventFilter, continuous: bool,
                 min_age_s: float = 0.0):
        self.sync = sync
        self.filter = event_filter
        if event_filter.helper_of is None:
            event_filter.helper_of = ct.expect_helper    # sync.filter.expectations = [helpers]
        self.continuous = continuous
        self.young: YoungFlows | None = YoungFlows(min_age_s) if min_age_s > 0 else None
        self._resync: _Resync | None = None
        self._held: list = []            # bursts that arrived during a resync
        # Continuous mode: the peers' deletes that a dump may still show.  A
        # delete is decided here (kernel_changes, the key leaves the external
        # cache) and carried out by the shell's applier later, in order, batch
        # by batch (changes_applied).  A dump read after the decision but
        # before the delete holds the entry, and when it is diffed the key is
        # in no external cache any more: it would pass for one of our flows.
        # So every batch of deletes not applied when a dump started reading is
        # kept until that dump is diffed: (batch number, keys), oldest first,
        # and by key the newest batch that deleted it (one lookup per dumped entry).
        self._decided = 0                # kernel_changes batches decided
        self._applied = 0                # and carried out by the applier
        self._recent_deletes: deque[tuple[int, set[bytes]]] = deque()
        self._deleted_in: dict[bytes, int] = {}
        # Per dump started and not handed over yet: (_applied, time) when it started.
        self._dump_floors: list[tuple[int, float]] = []
        self._waiting: dict[bytes, bytes] = {}   # peers' expectations whose master is not in yet

    # ------------------------------------------------------------ events

    def events(self, burst, now: float) -> list:
        """A burst of CtEvents from the kernel: filtered, merged, to the state mesh."""
        if self._resync is not None:
            self._held.append(burst)      # the cache is being diffed: after it
            return []
        keep = self.filter.keep
        get = self.sync.internal.get
        merge = ct.merge_attrs
        young = self.young
        events = []
        ended: list[bytes] = []
        for e in burst:
            if not keep(e):
                continue
            attrs = e.attrs
            if e.kind >= EXP_NEW:
                # an expectation rides the state mesh as a flow of its own key
                if e.kind == EXP_NEW:
                    events.append((NEW, e.key, attrs))
                else:
                    events.append((DESTROY, e.key, attrs))
                    if get(e.key) is None:        # used up here before its adoption
                        ended.append(e.key)
                continue
            if e.kind == UPDATE:
                # UPDATE events are partial (protoinfo, labels, seq-adjust and
                # helper come only when they change): merge into what we hold.
                old = get(e.key)
                if old is None and young is not None:
                    old = young.attrs(e.key)
                if old is not None:
                    attrs = merge(old, attrs)
            events.append((e.kind, e.key, attrs))
        if ended:
            self.sync.drop_adopted(ended)
        if young is not None and events:
            events = young.admit(events, get, now)
        return self.sync.local_events(events, now) if events else []

    # ------------------------------------------------------------ young flows

    def young_deadline(self) -> float | None:
        """When the next held flow comes of age (None: none held, or no threshold)."""
        return None if self.young is None or self._resync is not None else self.young.next_deadline()

    def release_young(self, now: float) -> list:
        """The held flows that are min_age_s old now, to the state mesh."""
        if self.young is None or self._resync is not None:
            return []
        due = self.young.due(now)
        return self.sync.local_events(due, now) if due else []

    def set_min_age(self, min_age_s: float, now: float) -> list:
        """A reload's [sync] min_age_ms: turned off, every held flow goes at once."""
        if min_age_s > 0:
            if self.young is None:
                self.young = YoungFlows(min_age_s)
            else:
                self.young.set_min_age(min_age_s)
            return []
        young, self.young = self.young, None
        held = young.release_all() if young is not None else []
        return self.sync.local_events(held, now) if held else []

    def kernel_changes(self, batch: list[ExternalChanged]) -> KernelChanges:
        """What of the peers' changes goes into the kernel: upserts and deletes (attrs),
        the expectations apart (the shell commits them after the entries: they
        need their master in the table).

        A flow this node carries now (adopted at a takeover) stays, whatever
        the old origin's bulk says: it is ours to replicate.  So does a flow
        that another peer still holds (it took the flow over from the origin
        that now says it is gone): its entry goes when the last holder says so.
        """
        is_expect = ct.is_expect_key
        upserts, exp_upserts = [], []
        waiting = self._waiting
        for change in batch:
            for key, attrs in change.upserts:
                if is_expect(key):
                    waiting.pop(key, None)
                    waiting[key] = attrs          # offered below once its master is there
                else:
                    upserts.append(attrs)
        mine = self.sync.internal.get
        peers = self.sync.peers.values()
        deletes, exp_deletes = [], []
        gone: set[bytes] = set()
        for change in batch:
            for key, attrs in change.deletes:
                if is_expect(key) and waiting.pop(key, None) is not None:
                    continue                      # never went in
                if mine(key) is not None:
                    continue
                b = bucket_of(key)
                if any(p.id != change.origin and key in p.ext.buckets[b] for p in peers):
                    continue
                (exp_deletes if is_expect(key) else deletes).append(attrs)
                gone.add(key)
        self._decided += 1
        if gone:
            self._recent_deletes.append((self._decided, gone))
            deleted_in, n = self._deleted_in, self._decided
            for key in gone:
                deleted_in[key] = n
        if waiting:
            exp_upserts = self._with_master(mine, peers)
        return KernelChanges(upserts, deletes, exp_upserts, exp_deletes)

    def _with_master(self, mine, peers) -> list[bytes]:
        """The waiting expectations whose master the kernel has, or gets in this batch.

        The kernel refuses an expectation whose master it does not hold
        (ENOENT), and the peers' records need not come in order: a bulk
        resync sweeps bucket by bucket, and an expectation's bucket can come
        before its master's. A master is in the table once it is in a cache
        (this batch's upserts go in before the expectations); until then the
        expectation waits, at most EXPECT_WAITING of them, oldest dropped.
        """
        waiting = self._waiting
        ready = []
        for key, attrs in list(waiting.items()):
            try:
                master = ct.expect_master_key(attrs)
            except ct.CtDecodeError:
                ready.append(attrs)               # the kernel will say what is wrong with it
                del waiting[key]
                continue
            b = bucket_of(master)
            if mine(master) is not None or any(master in p.ext.buckets[b] for p in peers):
                ready.append(attrs)
                del waiting[key]
        while len(waiting) > EXPECT_WAITING:
            del waiting[next(iter(waiting))]
        return ready

    def changes_applied(self) -> None:
        """The applier carried out the oldest kernel_changes batch not reported yet."""
        self._applied = min(self._applied + 1, self._decided)
        self._prune_deletes()

    def _prune_deletes(self) -> None:
        # Applied before every dump in progress started reading: no dump shows them.
        floor = min([self._applied, *(f for f, _ in self._dump_floors), *self._diffing()])
        recent, deleted_in = self._recent_deletes, self._deleted_in
        while recent and recent[0][0] <= floor:
            batch, keys = recent.popleft()
            for key in keys:
                if deleted_in.get(key) == batch:      # not deleted again since
                    del deleted_in[key]

    def _diffing(self) -> list[int]:
        """The floors of the dumps handed over and not diffed yet."""
        r = self._resync
        return [] if r is None else [r.floor, *(q[2] for q in r.queued)]

    # ------------------------------------------------------------ resync from a dump

    @property
    def busy(self) -> bool:
        return self._resync is not None

    def dump_started(self, now: float) -> None:
        """The shell starts reading the table (NodeCore.kernel_dump_started): the
        peers' deletes not carried out yet are kept until it is diffed (__init__)."""
        self._dump_floors.append((self._applied, now))

    def begin_resync(self, table: list, reason: str, now: float) -> None:
        """A dump of the kernel's table (CtEvents) to rebuild the internal cache from.

        A second dump while one is diffed replaces nothing: it waits its turn.
        """
        # (A dump the shell did not announce, as in tests, counts from now.)
        floor, read_at = self._dump_floors.pop(0) if self._dump_floors else (self._applied, None)
        if self._resync is not None:
            self._resync.queued.append((table, reason, floor, read_at))
            return
        self._resync = _Resync(table, reason, now, floor, read_at)

    def step(self, now: float) -> list:
        """One step of the resync in progress; its last step reports KernelResynced."""
        r = self._resync
        if r is None:
            return []
        if r.split < len(r.table):
            keep = self.filter.keep
            parts = r.parts
            end = min(len(r.table), r.split + SPLIT_STEP)
            for e in r.table[r.split:end]:
                if keep(e):
                    parts[bucket_of(e.key)][e.key] = e.attrs
                    r.kept += 1
            r.split = end
            return []
        out: list = []
        done = 0
        while r.bucket < NBUCKETS and done < DIFF_STEP:
            done += len(r.parts[r.bucket]) + 1
            if self.continuous:
                done += sum(len(p.ext.buckets[r.bucket]) for p in self.sync.peers.values())
            out += self._diff_bucket(r, r.bucket, now)
            r.bucket += 1
        if r.bucket < NBUCKETS:
            return out
        self.sync.local_resync_done()
        out.append(KernelResynced(r.reason, r.kept, len(r.table), now - r.started))
        self._resync = None
        if self.young is not None and len(self.young) and r.read_at is not None:
            # A held flow seen before the dump was read and absent from it
            # ended without a DESTROY we saw (an overrun ate it): gone.
            present = {e.key for e in r.table}
            self.young.forget_absent(present, r.read_at)
        if r.queued:
            (table, reason, floor, read_at), *rest = r.queued
            self._resync = _Resync(table, reason, now, floor, read_at)
            self._resync.queued = rest
        else:
            self._prune_deletes()
            held, self._held = self._held, []
            for burst in held:
                out += self.events(burst, now)
        return out

    def _diff_bucket(self, r: "_Resync", b: int, now: float) -> list:
        part = r.parts[b]
        r.parts[b] = None
        young = self.young
        if young is not None and len(young):
            # Held flows are not replicated yet: they come of age on their own.
            for key in [k for k in part if k in young]:
                del part[key]
        if self.continuous:
            # The table also holds the peers' flows we injected; they are not
            # ours unless the kernel already reported them as ours (traffic).
            internal = self.sync.internal.get
            for p in self.sync.peers.values():
                for key in p.ext.buckets[b]:
                    if key in part and internal(key) is None:
                        del part[key]
                        r.kept -= 1
            # And those a peer deleted, if the dump may have read them first.
            deleted_in, floor = self._deleted_in, r.floor
            if deleted_in:
                for key in [k for k in part if deleted_in.get(k, 0) > floor and internal(k) is None]:
                    del part[key]
                    r.kept -= 1
        return self.sync.local_resync_bucket(b, part, now)


class _Resync:
    def __init__(self, table: list, reason: str, now: float, floor: int, read_at: float | None):
        self.table = table
        self.floor = floor               # kernel_changes batches applied before it was read
        self.read_at = read_at           # when the shell started reading it (None: not said)
        self.reason = reason
        self.started = now
        self.parts: list[dict[bytes, bytes] | None] = [{} for _ in range(NBUCKETS)]
        self.split = 0
        self.bucket = 0
        self.kept = 0
        self.queued: list[tuple[list, str, int, float | None]] = []
