"""A snapshot of everything meshd exports: plain frozen values, copied at once.

`take` runs on the event loop's thread (meshd/metrics/server.py asks it
there), reads the node core and what the shells counted, and returns
numbers, strings and tuples only: the HTTP thread then builds the
Prometheus families from it (collector.py) without ever touching a dict the
event loop is changing.  It copies counters and histograms and sizes the
caches; it never walks a cache (the byte sizes are the caches' own
estimates, the ones `meshctl stats` prints), so its cost does not grow with
the number of flows (docs/metrics.md, "Pull or push").

The sources are the ones `meshctl status`, `meshctl stats` and
`meshctl show` answer from: ElectionCore (groups, adverts, rejects), SyncCore
and its peers, the conntrack reader's and the sync shell's counts, and the
health core's hosts and redirects.

Must not: change what it reads, or keep a reference to a live object in
what it returns (everything is copied or immutable).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..election.actions import State
from ..histogram import LATENCY_BUCKETS, Histogram, HistogramCounts

_EMPTY_LATENCY = Histogram(LATENCY_BUCKETS).copy()


@dataclass(frozen=True)
class GroupSample:
    name: str
    state: str
    demotion: int
    advskew: int
    transitions: tuple[tuple[str, str, int], ...]      # (to state, cause, count)
    adverts_sent: int
    adverts_received: int
    adverts_stale: int
    adverts_rejected: tuple[tuple[str, int], ...]      # (reason, count)
    takeover: HistogramCounts


@dataclass(frozen=True)
class PeerSample:
    id: int
    absent: bool
    last_heard_ago_s: float | None                     # None: never heard since this start
    lag_frames: int | None                             # None: its stream not anchored yet
    missing_frames: int
    frames_resent: int                                 # by us, to it
    bulk_resyncs_sent: int                             # our whole state, to it
    bulk_resyncs_received: int                         # its whole state, from it
    bulk_deadlines_missed: int                         # bulks of it that did not finish in time
    out_of_sync: bool                                  # declared so after its last attempt
    external_entries: int
    external_bytes: int
    path: int | None = None                            # the path in use (None: a single path)
    path_switches: int | None = None


@dataclass(frozen=True)
class SyncSample:
    in_sync: bool
    internal_entries: int
    internal_bytes: int
    kernel_events: int
    kernel_overruns: int
    resyncs: int                                       # internal cache rebuilt from a kernel dump
    frames_sent: tuple[tuple[str, int], ...]           # (frame type, count)
    frames_received: tuple[tuple[str, int], ...]
    frames_rejected: tuple[tuple[str, int], ...]       # (reason, count)
    commits: tuple[tuple[str, HistogramCounts], ...]   # (kind, durations)
    peers: tuple[PeerSample, ...]


@dataclass(frozen=True)
class HostSample:
    table: str
    host: str
    status: str                                        # up, down, unknown, disabled
    availability: float | None                         # 0..1; None before the first check
    checks: int
    successes: int
    latency: HistogramCounts


@dataclass(frozen=True)
class RedirectSample:
    name: str
    status: str                                        # REDIRECT_STATUSES
    backends: int


@dataclass(frozen=True)
class HealthSample:
    hosts: tuple[HostSample, ...]
    redirects: tuple[RedirectSample, ...]


@dataclass(frozen=True)
class RelaySample:
    """One relay, as the relay engine last reported it (RelayEngine.metrics_rows)."""
    name: str
    status: str                                        # a RELAY_STATUSES value
    sessions: int
    total: int
    refused: int
    errors: int
    backends: tuple[tuple[str, int, int, int], ...]    # (host, open, total, failed)


@dataclass(frozen=True)
class RelaysSample:
    engine_up: bool
    engine_starts: int
    age_s: float | None                                # of the engine's report; None: none yet
    relays: tuple[RelaySample, ...]


@dataclass(frozen=True)
class Snapshot:
    node_name: str
    node_id: int
    version: str
    epoch: int
    groups: tuple[GroupSample, ...]
    demotions: tuple[tuple[str, int], ...]             # (counter, value)
    adverts_rejected: tuple[tuple[str, int], ...]      # every group's and none's
    sync: SyncSample | None
    health: HealthSample | None
    split_brain: tuple[str, ...] = ()                  # groups with two masters now (node/cluster.py)
    split_brains: int = 0                              # confirmed since start
    relays: RelaysSample | None = None                 # with [[health.relay]]


GROUP_STATES = tuple(s.value for s in State)
HOST_STATUSES = ("up", "down", "unknown", "disabled")
# The health core's words for a redirect, as a bounded label.
REDIRECT_STATUSES = {"active": "active", "active (using backup table)": "backup",
                     "down": "down", "disabled": "disabled", None: "unknown"}
RELAY_STATUSES = {"active": "active", "active (using backup table)": "backup",
                  "down": "down", "disabled": "disabled"}


def take(node, now: float, *, node_name: str, version: str, kernel: dict | None = None,
         commits: dict[str, Histogram] | None = None,
         paths: dict[int, tuple[int, int]] | None = None,
         relays: dict | None = None) -> Snapshot:
    """Copy what is exported from a NodeCore at `now`.

    Args:
        node: the NodeCore.
        kernel: the conntrack reader's stats() (events, overruns), with a state mesh.
        commits: the sync shell's commit durations by kind, with a state mesh.
        paths: the sync shell's (path in use, switches) of each peer with more
            than one path (SyncShell.path_counts).
        relays: RelayEngine.metrics_rows(now), with relays: the engine's last
            report (copied here; the engine is asked every few seconds, never
            from a scrape).
    """
    election = node.election
    return Snapshot(
        node_name=node_name, node_id=election.node_id, version=version, epoch=election.epoch,
        groups=tuple(_group(election, g, node.takeover_seconds.get(name)) for name, g in election.groups.items()),
        demotions=tuple((n, election.counter_value(n)) for n in sorted(election.demotions)),
        adverts_rejected=_pairs(election.rejected),
        sync=None if node.sync is None else _sync(node.sync, now, kernel or {}, commits or {}, paths or {}),
        health=None if node.health is None else _health(node.health),
        split_brain=tuple(sorted(node.split_brain.confirmed)), split_brains=node.split_brain.count,
        relays=None if relays is None else _relays(relays),
    )


def _relays(report: dict) -> RelaysSample:
    return RelaysSample(
        engine_up=bool(report["up"]), engine_starts=int(report["starts"]), age_s=report["age_s"],
        relays=tuple(RelaySample(r["name"], RELAY_STATUSES.get(r.get("status"), "unknown"),
                                 r.get("sessions", 0), r.get("total", 0), r.get("refused", 0),
                                 r.get("errors", 0),
                                 tuple((b["host"], b["open"], b["total"], b["failed"])
                                       for b in r.get("backends", ())))
                     for r in report["rows"]))


def _group(election, g, takeover: Histogram | None) -> GroupSample:
    return GroupSample(
        name=g.config.name, state=g.state.value, demotion=election.group_demotion(g),
        advskew=g.config.advskew,
        transitions=tuple(sorted((state.value, cause.value, n)
                                 for (state, cause), n in g.transitions_by.items())),
        adverts_sent=g.sent, adverts_received=g.received, adverts_stale=g.stale,
        adverts_rejected=_pairs(g.rejected),
        takeover=takeover.copy() if takeover is not None else _EMPTY_LATENCY,
    )


def _sync(core, now: float, kernel: dict, commits: dict[str, Histogram],
          paths: dict[int, tuple[int, int]]) -> SyncSample:
    return SyncSample(
        in_sync=core.in_sync, internal_entries=len(core.internal), internal_bytes=core.internal.nbytes(),
        kernel_events=int(kernel.get("events", 0)), kernel_overruns=int(kernel.get("overruns", 0)),
        resyncs=core.counters["local resyncs"],
        frames_sent=_pairs(core.frames_sent), frames_received=_pairs(core.frames_received),
        frames_rejected=_pairs(core.rejected),
        commits=tuple((kind, h.copy()) for kind, h in commits.items()),
        peers=tuple(_peer(p, now, paths.get(p.id)) for p in core.peers.values()),
    )


def _peer(p, now: float, path: tuple[int, int] | None) -> PeerSample:
    rm, rd = p.rx_mcast, p.rx_direct
    return PeerSample(
        id=p.id, absent=p.absent,
        last_heard_ago_s=None if p.last_heard is None else max(0.0, now - p.last_heard),
        lag_frames=rm.high - rm.resolved if rm.anchored else None,
        missing_frames=len(rm.missing) + len(rd.missing),
        frames_resent=p.stats["frames resent"],
        bulk_resyncs_sent=p.stats["bulk resyncs sent"],
        bulk_resyncs_received=p.stats["bulk resyncs received"],
        bulk_deadlines_missed=p.stats["bulk deadlines missed"], out_of_sync=p.out_of_sync is not None,
        external_entries=len(p.ext), external_bytes=p.ext.nbytes(),
        path=path[0] if path else None, path_switches=path[1] if path else None,
    )


def _health(core) -> HealthSample:
    hosts = []
    for m in core.members.values():
        h = m.health
        status = core.host_status(m) if core.enabled("table", m.table) else "disabled"
        availability = h.availability()
        hosts.append(HostSample(
            table=m.table, host=m.host, status=status,
            availability=None if availability is None else availability / 100,
            checks=h.checks, successes=h.successes, latency=h.latency.copy()))
    redirects = tuple(RedirectSample(rs.config.name, REDIRECT_STATUSES.get(rs.status, "unknown"),
                                     len(rs.backends or ()))
                      for rs in core.redirects.values())
    return HealthSample(tuple(hosts), redirects)


def _pairs(counter) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in counter.items()))
