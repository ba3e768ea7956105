"""The exposition built from a snapshot (meshd/metrics/snapshot.py, collector.py),
read back with prometheus-client's own text parser, as a scraper would."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshd.config import parse_config
from meshd.health.actions import StartCheck
from meshd.health.checkspec import CheckOutcome
from meshd.histogram import COMMIT_BUCKETS, Histogram
from meshd.metrics import snapshot
from meshd.metrics.collector import MeshdCollector, SnapshotUnavailable
from meshd.node.core import NodeCore
from meshd.sync.actions import SyncState

CONFIG = """\
[node]
id = 1
name = "fw1"

[cluster]
keys = [{ id = 1, secret_file = "k.key" }]

[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24"]
advskew = 20

[sync]
peers = [{ id = 2, address = "203.0.113.2" }]
commit = "takeover"

[health]
[[health.host]]
name = "web1"
address = "10.1.0.11"

[[health.table]]
name = "web"
hosts = ["web1"]
port = 80
check = { method = "tcp" }

[[health.redirect]]
name = "www"
address = "192.0.2.80"
port = 80
table = "web"
"""


def run_a_node() -> tuple[NodeCore, float]:
    """A node that started, got in sync, heard its checks answer, took over lan."""
    cfg = dataclasses.replace(parse_config(tomllib.loads(CONFIG), "meshd.toml", read_secrets=False),
                              secrets={1: b"s" * 32})
    node = NodeCore(cfg, epoch=7)
    pending = [a for a in node.start(0.0) if isinstance(a, StartCheck)]
    node._route([SyncState(True, "bulk resync complete")], 0.5)
    node._flush()
    node.sync.peers[2].ext.apply(tuple((b"k%02d" % i, b"flow %02d" % i) for i in range(12)), 3, False)
    now = 0.0
    while now < 10.0:
        for check in pending:
            node.check_done(check.check_id, CheckOutcome(True, 0.004), now)
        now += 0.25
        pending = [a for a in node.handle_timer(now) if isinstance(a, StartCheck)]
    lan = node.election.groups["lan"]
    assert lan.state.value == "MASTER"
    node.takeover_committed("lan", lan.last_change + 0.1)
    node.addresses_added("lan", lan.last_change + 0.4)
    return node, now + 0.5


def take(node: NodeCore, now: float) -> snapshot.Snapshot:
    commits = {kind: Histogram(COMMIT_BUCKETS) for kind in ("takeover", "operator", "continuous")}
    commits["takeover"].observe(0.002)
    return snapshot.take(node, now, node_name="fw1", version="0.1.0",
                         kernel={"events": 42, "overruns": 1}, commits=commits)


def scrape(collector: MeshdCollector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    found = [s.value for s in families[family].samples
             if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, sample, labels, families[family].samples)
    return found[0]


@pytest.fixture(scope="module")
def exported():
    node, now = run_a_node()
    return node, scrape(MeshdCollector(lambda: take(node, now)))


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
