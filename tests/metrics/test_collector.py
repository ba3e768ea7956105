"""The exposition built from a snapshot (meshd/metrics/snapshot.py, collector.py),
read back with prometheus-client's own text parser, as a scraper would."""

from __future__ import annotations

import pytest
from metrics_helpers import run_a_node, scrape, take, value

from meshd.metrics import snapshot
from meshd.metrics.collector import MeshdCollector, SnapshotUnavailable


def test_groups_their_states_causes_and_takeover(exported):
    node, f = exported
    assert value(f, "meshd_group_state", group="lan", state="MASTER") == 1
    assert sum(s.value for s in f["meshd_group_state"].samples) == 1          # one series per state
    assert {s.labels["state"] for s in f["meshd_group_state"].samples} == \
        {"INIT", "BACKUP", "MASTER", "FAULT", "DISABLED"}
    assert value(f, "meshd_group_transitions", "meshd_group_transitions_total",
                 group="lan", state="MASTER", cause="master_down") == 1
    assert value(f, "meshd_group_transitions", "meshd_group_transitions_total",
                 group="lan", state="BACKUP", cause="startup") == 1
    assert value(f, "meshd_group_demotion", group="lan") == 0
    assert value(f, "meshd_group_advskew", group="lan") == 20
    assert value(f, "meshd_group_adverts_sent", "meshd_group_adverts_sent_total", group="lan") == \
        node.election.groups["lan"].sent > 0
    assert value(f, "meshd_takeover_duration_seconds", "meshd_takeover_duration_seconds_count", group="lan") == 1
    # From the transition (the master-down timer) to addresses_added, which run_a_node
    # reports 0.4 s after the commit it waited for.
    assert value(f, "meshd_takeover_duration_seconds", "meshd_takeover_duration_seconds_sum",
                 group="lan") == pytest.approx(0.4)
    assert value(f, "meshd_takeover_duration_seconds", "meshd_takeover_duration_seconds_bucket",
                 group="lan", le="0.25") == 0
    assert value(f, "meshd_takeover_duration_seconds", "meshd_takeover_duration_seconds_bucket",
                 group="lan", le="0.5") == 1
    assert value(f, "meshd_node_info", node="fw1", node_id="1", version="0.1.0") == 1
    assert value(f, "meshd_node_epoch") == 7


def test_the_state_mesh_and_its_peers(exported):
    node, f = exported
    assert value(f, "meshd_sync_in_sync") == 1
    assert value(f, "meshd_sync_peer_external_entries", peer="2") == 12
    assert value(f, "meshd_sync_peer_external_bytes", peer="2") > 0
    assert value(f, "meshd_sync_peer_absent", peer="2") == 1      # silent since the start
    assert value(f, "meshd_sync_kernel_events", "meshd_sync_kernel_events_total") == 42
    assert value(f, "meshd_sync_kernel_overruns", "meshd_sync_kernel_overruns_total") == 1
    assert value(f, "meshd_sync_internal_entries") == len(node.sync.internal)
    assert value(f, "meshd_sync_commit_duration_seconds", "meshd_sync_commit_duration_seconds_count",
                 kind="takeover") == 1
    assert value(f, "meshd_sync_commit_duration_seconds", "meshd_sync_commit_duration_seconds_count",
                 kind="continuous") == 0
    # Never heard since this start: no sample rather than a made-up age.
    assert not f["meshd_sync_peer_last_heard_seconds"].samples


def test_health_hosts_latency_and_redirects(exported):
    _node, f = exported
    assert value(f, "meshd_health_host_status", table="web", host="web1", status="up") == 1
    assert value(f, "meshd_health_host_status", table="web", host="web1", status="down") == 0
    assert value(f, "meshd_health_host_availability_ratio", table="web", host="web1") == 1.0
    checks = value(f, "meshd_health_checks", "meshd_health_checks_total", table="web", host="web1",
                   result="success")
    assert checks >= 1
    assert value(f, "meshd_health_check_latency_seconds", "meshd_health_check_latency_seconds_count",
                 table="web", host="web1") == checks
    assert value(f, "meshd_health_check_latency_seconds", "meshd_health_check_latency_seconds_bucket",
                 table="web", host="web1", le="0.005") == checks
    assert value(f, "meshd_health_redirect_status", redirect="www", status="active") == 1
    assert value(f, "meshd_health_redirect_backends", redirect="www") == 1


def test_a_scrape_without_a_snapshot_says_so_and_nothing_else():
    def stuck():
        raise SnapshotUnavailable("no snapshot within 2 s")
    collector = MeshdCollector(stuck)
    scrape(collector)
    f = scrape(collector)
    assert set(f) == {"meshd_metrics_snapshot_seconds", "meshd_metrics_snapshot_unavailable"}
    assert value(f, "meshd_metrics_snapshot_unavailable", "meshd_metrics_snapshot_unavailable_total") == 2


def test_the_snapshot_is_a_copy_that_later_events_do_not_change():
    node, now = run_a_node()
    before = take(node, now)
    node.operator_demote("all", 50, now)
    node.sync.peers[2].ext.apply(((b"new", b"flow new"),), 4, False)
    assert before.groups[0].demotion == 0 and before.sync.peers[0].external_entries == 12
    after = take(node, now)
    assert after.groups[0].demotion == 50 and after.sync.peers[0].external_entries == 13


def test_the_path_to_a_peer_with_more_than_one(exported):
    """What the sync shell hands over (SyncShell.path_counts): the path in use and
    the switches, for the peers with a backup path only."""
    node, f = exported
    assert "meshd_sync_peer_path" not in f or not f["meshd_sync_peer_path"].samples    # one path: none
    with_paths = snapshot.take(node, 100.0, node_name="fw1", version="0.1.0", paths={2: (1, 3)})
    g = scrape(MeshdCollector(lambda: with_paths))
    assert value(g, "meshd_sync_peer_path", peer="2") == 1
    assert value(g, "meshd_sync_peer_path_switches", "meshd_sync_peer_path_switches_total", peer="2") == 3


def test_relays_as_the_relay_engine_last_reported_them(exported):
    _node, f = exported
    assert value(f, "meshd_relay_engine_up") == 1
    assert value(f, "meshd_relay_engine_starts", "meshd_relay_engine_starts_total") == 2
    assert value(f, "meshd_relay_report_age_seconds") == 0.4
    assert value(f, "meshd_relay_status", relay="www", status="backup") == 1
    assert value(f, "meshd_relay_status", relay="www", status="active") == 0
    assert value(f, "meshd_relay_sessions", relay="www") == 3
    assert value(f, "meshd_relay_accepted", "meshd_relay_accepted_total", relay="www") == 40
    assert value(f, "meshd_relay_refused", "meshd_relay_refused_total", relay="www") == 2
    assert value(f, "meshd_relay_backend_sessions", relay="www", host="sorry1") == 3
    assert value(f, "meshd_relay_backend_connect_failures", "meshd_relay_backend_connect_failures_total",
                 relay="www", host="sorry1") == 1
