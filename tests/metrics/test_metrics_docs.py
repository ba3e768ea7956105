"""docs/metrics.md stays true to the code: every metric exported is listed, nothing
listed is missing, and the alert rules use only metrics that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshd.election.actions import Cause
from meshd.metrics.server import RefusedConnections, registry_for

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()


def documented() -> set[str]:
    return set(re.findall(r"^\| `(meshd_[a-z_]+)`", DOCS, re.M))


def rules_yaml() -> str:
    (block,) = re.findall(r"```yaml\n(groups:.*?)```", DOCS, re.S)
    return block


def test_every_exported_metric_is_documented_and_nothing_else(exported):
    _node, families = exported
    names = {f.name + "_total" if f.type == "counter" else f.name for f in families.values()}
    names |= {"meshd_metrics_snapshot_seconds", "meshd_metrics_snapshot_unavailable_total"}
    names |= {f.name + "_total" for f in RefusedConnections().collect()}     # the endpoint's own
    assert names - documented() == set(), "exported but not in docs/metrics.md"
    assert documented() - names == set(), "in docs/metrics.md but not exported"


def test_every_cause_is_in_the_table():
    table = set(re.findall(r"^\| `([a-z_]+)` \| [A-Z, ]+ \|", DOCS, re.M))
    assert table == {c.value for c in Cause}


def test_the_alert_rules_use_metrics_that_exist():
    block = rules_yaml()
    used = set(re.findall(r"\b(meshd_[a-z_]+)", block))
    assert used and used <= documented(), used - documented()
    yaml = pytest.importorskip("yaml")          # the structure, where PyYAML is installed
    rules = yaml.safe_load(block)["groups"][0]["rules"]
    wanted = {"MeshdTwoMasters", "MeshdPeerAbsent", "MeshdSyncLag", "MeshdDemoted", "MeshdRedirectDown"}
    assert wanted <= {r["alert"] for r in rules}
    assert all(r["expr"] and r["labels"]["severity"] for r in rules)
    two = next(r for r in rules if r["alert"] == "MeshdTwoMasters")
    assert two["expr"] == 'count by (group) (meshd_group_state{state="MASTER"} == 1) > 1'


def test_the_process_metrics_named_are_those_served():
    text = generate_latest(registry_for(_NoFamily(), RefusedConnections())).decode()
    served = {f.name + "_total" if f.type == "counter" else f.name
              for f in text_string_to_metric_families(text) if f.name.startswith("process_")}
    assert set(re.findall(r"`(process_[a-z_]+)`", DOCS)) == served


class _NoFamily:
    def collect(self):
        return []
