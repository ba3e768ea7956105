"""The Prometheus metric families of a Snapshot, and the collector that serves them.

`families(snapshot)` is pure: it turns one Snapshot (snapshot.py) into
prometheus-client metric families, and runs on the HTTP thread.  Every name
has the `meshd_` prefix and its unit (`_seconds`, `_bytes`, `_frames`,
`_ratio`), counters end in `_total` (prometheus-client adds it), and a label
takes its values from a bounded set only: configured names (groups, peers,
hosts, tables, redirects, demotion counters), states, transition causes
(election/actions.py Cause), and reject reasons, which the decoders
choose from fixed strings.  docs/metrics.md lists every family; a test
checks that the two agree.

`MeshdCollector` asks for a fresh snapshot at each scrape (`fetch`, see
server.py) and says how long that took: the event loop's answer time is
itself worth watching.  When the loop does not answer in time it serves
only that (and the process collector's families, registered beside it), so
a scrape never waits on a stuck daemon and never shows stale values as
current.

Must not: read a live object of the daemon (only the Snapshot), or import trio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)

from ..histogram import HistogramCounts
from .snapshot import GROUP_STATES, HOST_STATUSES, REDIRECT_STATUSES, Snapshot


class SnapshotUnavailable(Exception):
    """The event loop did not hand over a snapshot (too slow, or ended)."""


class MeshdCollector:
    """A prometheus-client collector over `fetch`, which returns a Snapshot or
    raises SnapshotUnavailable.  Called from the HTTP server's threads."""

    def __init__(self, fetch: Callable[[], Snapshot]):
        self.fetch = fetch
        self.unavailable = 0           # scrapes served without a snapshot
        self._lock = threading.Lock()  # scrapes run on several threads at once

    def describe(self) -> list:
        # Known only once a snapshot is taken; an empty answer keeps the
        # registry from calling collect() (and the event loop) at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        try:
            snapshot = self.fetch()
        except SnapshotUnavailable:
            with self._lock:
                self.unavailable += 1
            snapshot = None
        seconds = time.monotonic() - started
        yield _gauge("meshd_metrics_snapshot_seconds",
                     "How long the event loop took to hand over this scrape's snapshot.", seconds)
        yield _counter("meshd_metrics_snapshot_unavailable",
                       "Scrapes served without meshd's metrics: the event loop did not answer in time.",
                       self.unavailable)
        if snapshot is not None:
            yield from families(snapshot)


def families(s: Snapshot) -> list[Metric]:
    """Every metric family of one snapshot (docs/metrics.md)."""
    out: list[Metric] = []
    info = InfoMetricFamily("meshd_node", "This node: its name, id and meshd's version.",
                            labels=("node", "node_id", "version"))
    info.add_metric((s.node_name, str(s.node_id), s.version), {})
    out.append(info)
    out.append(_gauge("meshd_node_epoch", "The boot epoch this start advertises (raised at every start).",
                      s.epoch))
    out += _groups(s)
    out.append(_labelled(GaugeMetricFamily, "meshd_demotion", "A named demotion counter's value.",
                         ("counter",), [((name,), v) for name, v in s.demotions]))
    out.append(_labelled(CounterMetricFamily, "meshd_adverts_rejected",
                         "Adverts rejected, of every group and of none (unknown group), by reason.",
                         ("reason",), [((r,), n) for r, n in s.adverts_rejected]))
    out.append(_labelled(GaugeMetricFamily, "meshd_group_split_brain",
                         "1 while more than one node claims MASTER of the group for 3 s or more (this "
                         "node's state and the peers' ABOUT frames: meshctl cluster).",
                         ("group",), [((g.name,), int(g.name in s.split_brain)) for g in s.groups]))
    out.append(_counter("meshd_split_brains", "Split brains confirmed since start (two masters of a group "
                        "for 3 s or more).", s.split_brains))
    if s.sync is not None:
        out += _sync(s)
    if s.health is not None:
        out += _health(s)
    if s.relays is not None:
        out += _relays(s)
    return out


def _groups(s: Snapshot) -> list[Metric]:
    state = GaugeMetricFamily("meshd_group_state", "1 for the state the group is in, 0 for the others.",
                              labels=("group", "state"))
    demotion = GaugeMetricFamily("meshd_group_demotion", "The demotion the group advertises.",
                                 labels=("group",))
    advskew = GaugeMetricFamily("meshd_group_advskew", "The group's configured advskew.", labels=("group",))
    transitions = CounterMetricFamily("meshd_group_transitions",
                                      "State changes of the group, by the state entered and its cause.",
                                      labels=("group", "state", "cause"))
    sent = CounterMetricFamily("meshd_group_adverts_sent", "Adverts sent (each copy counts).",
                               labels=("group",))
    received = CounterMetricFamily("meshd_group_adverts_received", "Adverts accepted from peers.",
                                   labels=("group",))
    stale = CounterMetricFamily("meshd_group_adverts_stale",
                                "Authentic adverts older than one already acted on (reordered copies).",
                                labels=("group",))
    rejected = CounterMetricFamily("meshd_group_adverts_rejected", "Adverts of the group rejected, by reason.",
                                   labels=("group", "reason"))
    takeover = HistogramMetricFamily("meshd_takeover_duration_seconds",
                                     "From the decision to become MASTER to the virtual addresses up.",
                                     labels=("group",))
    for g in s.groups:
        for name in GROUP_STATES:
            state.add_metric((g.name, name), 1 if g.state == name else 0)
        demotion.add_metric((g.name,), g.demotion)
        advskew.add_metric((g.name,), g.advskew)
        for to, cause, n in g.transitions:
            transitions.add_metric((g.name, to, cause), n)
        sent.add_metric((g.name,), g.adverts_sent)
        received.add_metric((g.name,), g.adverts_received)
        stale.add_metric((g.name,), g.adverts_stale)
        for reason, n in g.adverts_rejected:
            rejected.add_metric((g.name, reason), n)
        _observe(takeover, (g.name,), g.takeover)
    return [state, demotion, advskew, transitions, sent, received, stale, rejected, takeover]


def _sync(s: Snapshot) -> list[Metric]:
    y = s.sync
    out: list[Metric] = [
        _gauge("meshd_sync_in_sync", "1 when every live peer's state has arrived (else the node is demoted).",
               1 if y.in_sync else 0),
        _gauge("meshd_sync_internal_entries", "Flows of this node in the internal cache.", y.internal_entries),
        _gauge("meshd_sync_internal_bytes", "Bytes of the internal cache (estimated from a sample).",
               y.internal_bytes),
        _counter("meshd_sync_kernel_events", "Conntrack events read from the kernel.", y.kernel_events),
        _counter("meshd_sync_kernel_overruns",
                 "Times the kernel dropped conntrack events (ENOBUFS); each one is a resync.", y.kernel_overruns),
        _counter("meshd_sync_resyncs", "Times the internal cache was rebuilt from a kernel dump.", y.resyncs),
        _labelled(CounterMetricFamily, "meshd_sync_frames_sent", "State-mesh frames sent, by type.",
                  ("type",), [((t,), n) for t, n in y.frames_sent]),
        _labelled(CounterMetricFamily, "meshd_sync_frames_received", "Authentic state-mesh frames, by type.",
                  ("type",), [((t,), n) for t, n in y.frames_received]),
        _labelled(CounterMetricFamily, "meshd_sync_frames_rejected", "State-mesh datagrams rejected, by reason.",
                  ("reason",), [((r,), n) for r, n in y.frames_rejected]),
    ]
    commits = HistogramMetricFamily("meshd_sync_commit_duration_seconds",
                                    "Kernel time of each commit of flows into conntrack, by what it was for.",
                                    labels=("kind",))
    for kind, h in y.commits:
        _observe(commits, (kind,), h)
    out.append(commits)
    per_peer = (
        ("meshd_sync_peer_absent", GaugeMetricFamily, "1 while the peer is declared absent (silent too long).",
         lambda p: 1 if p.absent else 0),
        ("meshd_sync_peer_last_heard_seconds", GaugeMetricFamily,
         "Seconds since the peer's last authentic frame (absent before its first).", lambda p: p.last_heard_ago_s),
        ("meshd_sync_peer_lag_frames", GaugeMetricFamily,
         "Frames of the peer's stream announced but not yet received or settled.", lambda p: p.lag_frames),
        ("meshd_sync_peer_missing_frames", GaugeMetricFamily,
         "Frames of the peer's two streams known to be missing now.", lambda p: p.missing_frames),
        ("meshd_sync_peer_frames_resent", CounterMetricFamily, "Frames resent to the peer after its NACKs.",
         lambda p: p.frames_resent),
        ("meshd_sync_peer_bulk_resyncs_sent", CounterMetricFamily, "Bulk resyncs of our flows sent to the peer.",
         lambda p: p.bulk_resyncs_sent),
        ("meshd_sync_peer_bulk_resyncs_received", CounterMetricFamily,
         "Bulk resyncs of the peer's flows received complete.", lambda p: p.bulk_resyncs_received),
        ("meshd_sync_peer_bulk_deadlines_missed", CounterMetricFamily,
         "Bulk resyncs asked of the peer that did not complete within their deadline.",
         lambda p: p.bulk_deadlines_missed),
        ("meshd_sync_peer_out_of_sync", GaugeMetricFamily,
         "1 while the peer is declared out of sync (its bulk never completed in bulk_attempts).",
         lambda p: int(p.out_of_sync)),
        ("meshd_sync_peer_external_entries", GaugeMetricFamily, "Flows of the peer in its external cache.",
         lambda p: p.external_entries),
        ("meshd_sync_peer_external_bytes", GaugeMetricFamily,
         "Bytes of the peer's external cache (estimated from a sample).", lambda p: p.external_bytes),
        ("meshd_sync_peer_path", GaugeMetricFamily,
         "The path the frames to the peer go over: 0 for the first of its addresses (peers with "
         "more than one).", lambda p: p.path),
        ("meshd_sync_peer_path_switches", CounterMetricFamily,
         "Switches of the path to the peer since start (peers with more than one).",
         lambda p: p.path_switches),
    )
    for name, kind, help_text, value in per_peer:
        out.append(_labelled(kind, name, help_text, ("peer",),
                             [((str(p.id),), value(p)) for p in y.peers if value(p) is not None]))
    return out


def _health(s: Snapshot) -> list[Metric]:
    h = s.health
    status = GaugeMetricFamily("meshd_health_host_status", "1 for the host's status in its table, 0 for the others.",
                               labels=("table", "host", "status"))
    availability = GaugeMetricFamily("meshd_health_host_availability_ratio",
                                     "Successful checks over all checks of the host since start.",
                                     labels=("table", "host"))
    checks = CounterMetricFamily("meshd_health_checks", "Checks of the host that answered, by result.",
                                 labels=("table", "host", "result"))
    latency = HistogramMetricFamily("meshd_health_check_latency_seconds", "Latency of the host's successful checks.",
                                    labels=("table", "host"))
    for x in h.hosts:
        for name in HOST_STATUSES:
            status.add_metric((x.table, x.host, name), 1 if x.status == name else 0)
        if x.availability is not None:
            availability.add_metric((x.table, x.host), x.availability)
        checks.add_metric((x.table, x.host, "success"), x.successes)
        checks.add_metric((x.table, x.host, "failure"), x.checks - x.successes)
        _observe(latency, (x.table, x.host), x.latency)
    redirect = GaugeMetricFamily("meshd_health_redirect_status",
                                 "1 for the redirect's status, 0 for the others (down: nothing to forward to).",
                                 labels=("redirect", "status"))
    backends = GaugeMetricFamily("meshd_health_redirect_backends", "Backends the redirect forwards to now.",
                                 labels=("redirect",))
    for r in h.redirects:
        for name in dict.fromkeys(REDIRECT_STATUSES.values()):
            redirect.add_metric((r.name, name), 1 if r.status == name else 0)
        backends.add_metric((r.name,), r.backends)
    return [status, availability, checks, latency, redirect, backends]


def _relays(s: Snapshot) -> list[Metric]:
    x = s.relays
    out: list[Metric] = [
        _gauge("meshd_relay_engine_up", "1 while the relay engine runs and answers.", int(x.engine_up)),
        _counter("meshd_relay_engine_starts", "Starts of the relay engine since meshd started.", x.engine_starts),
        _gauge("meshd_relay_report_age_seconds", "Age of the relay engine's last report (the relay "
               "metrics are this old; -1: no report yet).", -1 if x.age_s is None else x.age_s),
    ]
    status = GaugeMetricFamily("meshd_relay_status", "1 for the relay's status, 0 for the others.",
                               labels=("relay", "status"))
    for r in x.relays:
        for name in ("active", "backup", "down", "disabled", "unknown"):
            status.add_metric((r.name, name), 1 if r.status == name else 0)
    out.append(status)
    rows = [((r.name,), r) for r in x.relays]
    out.append(_labelled(GaugeMetricFamily, "meshd_relay_sessions", "Sessions open now.", ("relay",),
                         [(k, r.sessions) for k, r in rows]))
    out.append(_labelled(CounterMetricFamily, "meshd_relay_accepted", "Sessions accepted since the "
                         "relay engine started.", ("relay",), [(k, r.total) for k, r in rows]))
    for name, help_text, get in (
            ("meshd_relay_refused", "Sessions that found no backend (or a drained relay).", lambda r: r.refused),
            ("meshd_relay_errors", "Sessions ended by an error, and backend connects that failed.",
             lambda r: r.errors)):
        out.append(_labelled(CounterMetricFamily, name, help_text, ("relay",), [(k, get(r)) for k, r in rows]))
    backend = [((r.name, host), b) for r in x.relays for host, *b in r.backends]
    out.append(_labelled(GaugeMetricFamily, "meshd_relay_backend_sessions", "Sessions open now to the backend.",
                         ("relay", "host"), [(k, b[0]) for k, b in backend]))
    out.append(_labelled(CounterMetricFamily, "meshd_relay_backend_connects", "Sessions that reached the "
                         "backend since the relay engine started.", ("relay", "host"),
                         [(k, b[1]) for k, b in backend]))
    out.append(_labelled(CounterMetricFamily, "meshd_relay_backend_connect_failures",
                         "Connects to the backend that failed (refused, timed out, TLS).", ("relay", "host"),
                         [(k, b[2]) for k, b in backend]))
    return out


# ------------------------------------------------------------------ helpers

def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _labelled(kind, name: str, help_text: str, labels: tuple[str, ...],
              samples: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    family = kind(name, help_text, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _observe(family: HistogramMetricFamily, labels: tuple[str, ...], h: HistogramCounts) -> None:
    buckets = [("+Inf" if bound == float("inf") else repr(float(bound)), n) for bound, n in h.cumulative()]
    family.add_metric(labels, buckets, h.total)
