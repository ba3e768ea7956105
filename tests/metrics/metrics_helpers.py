"""What the metrics tests share: a node core that lived a little, its snapshot, a scrape of it."""

from __future__ import annotations

import dataclasses
import tomllib

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshd.config import parse_config
from meshd.health.actions import StartCheck
from meshd.health.checkspec import CheckOutcome
from meshd.histogram import COMMIT_BUCKETS, Histogram
from meshd.metrics import snapshot
from meshd.metrics.collector import MeshdCollector
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
                         kernel={"events": 42, "overruns": 1}, commits=commits, relays=RELAYS)


# What RelayEngine.metrics_rows returns: the engine up, one relay with a backend.
RELAYS = {"up": True, "starts": 2, "age_s": 0.4, "rows": [
    {"name": "www", "status": "active (using backup table)", "sessions": 3, "total": 40, "refused": 2,
     "errors": 1, "backends": [{"host": "sorry1", "address": "10.1.0.99", "port": 80, "live": True,
                                "open": 3, "total": 40, "failed": 1}]}]}


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
