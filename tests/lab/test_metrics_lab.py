"""The Prometheus endpoint of two real nodes, scraped over HTTP through a failover.

Root only (tests/lab/conftest.py).  fw1 and fw2 run with the state mesh and a
`[metrics]` section on each namespace's loopback; fw1 holds 2,000 flows.
A scraper inside fw2's namespace (urllib, as any HTTP client) reads
fw2's endpoint every 50 ms while fw1 is SIGKILLed, and every answer is
parsed with prometheus-client's own text parser.  Checked: every scrape
answered; the groups went BACKUP -> MASTER in the scrapes; each group's
transitions counter rose by one with cause `master_down`; the takeover
histogram's count rose by the number of groups; the cache sizes match
`meshctl stats` read at a quiet moment; the endpoint re-binds on a reload
(to [::1]) and the old address is closed.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request

import pytest
from meshlab import meshd_node as md
from meshlab import scenarios as sc
from meshlab.nsutil import in_netns
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.lab

GROUPS = [g["name"] for g in md.default_groups()]
PORT = 7114
METRICS = f'[metrics]\nlisten = "127.0.0.1:{PORT}"\n'
FLOWS = 2000
SCRAPE_EVERY_S = 0.05


def scrape(ns: str, url: str = f"http://127.0.0.1:{PORT}/metrics", timeout: float = 5.0) -> dict:
    """One scrape from inside namespace `ns`: {family name: Family}."""
    def get() -> str:
        # No proxy from the environment: the endpoint is on this namespace's loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as answer:
            return answer.read().decode()
    return {f.name: f for f in text_string_to_metric_families(in_netns(ns, get))}


def sample(families: dict, family: str, name: str | None = None, **labels) -> float:
    """The one sample of `family` named `name` (default: the family's) with these labels; 0 if none."""
    found = [s.value for s in families[family].samples
             if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else 0.0


def masters(families: dict) -> set[str]:
    return {s.labels["group"] for s in families["meshd_group_state"].samples
            if s.labels["state"] == "MASTER" and s.value == 1}


def takeovers(families: dict) -> float:
    return sum(s.value for s in families["meshd_takeover_duration_seconds"].samples
               if s.name == "meshd_takeover_duration_seconds_count")


def master_down_transitions(families: dict, group: str) -> float:
    return sample(families, "meshd_group_transitions", "meshd_group_transitions_total",
                  group=group, state="MASTER", cause="master_down")


class Scraper:
    """Scrapes one node's endpoint in a thread until stopped: every answer and error, timed."""

    def __init__(self, ns: str):
        self.ns = ns
        self.answers: list[tuple[float, dict]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append((time.monotonic(), scrape(self.ns)))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
            self._stop.wait(SCRAPE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def quiet_stats(lab, n: int) -> tuple[dict, dict, dict]:
    """(meshctl stats, a scrape, meshctl stats) of node n taken back to back, repeated
    until the caches did not change in between (flows are adopted after a takeover)."""
    for _ in range(50):
        stats = md.sync_stats(lab.run_dir, n)
        families = scrape(lab.fw(n))
        again = md.sync_stats(lab.run_dir, n)
        if md.internal_count(stats) == md.internal_count(again) and \
                md.external_count(stats, 3 - n) == md.external_count(again, 3 - n):
            return stats, families, again
        time.sleep(0.1)
    raise AssertionError("the caches never held still")


def test_the_endpoint_follows_a_failover(meshd_ready, lab):
    for n in (1, 2):
        md.start_meshd(lab.procs, lab.topo, n, sync=md.sync_section(), extra_toml=METRICS)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    md.wait_in_sync(lab.run_dir, (1, 2), timeout=15, procs=lab.procs)
    sc.run_preload(lab.procs, lab.topo, 1, FLOWS)
    caught_up = sc.wait_caught_up(lab.run_dir, 1, (2,), 30, want=FLOWS)
    assert caught_up["reached"], caught_up

    stats, before, _ = quiet_stats(lab, 2)
    assert masters(before) == set()
    assert sample(before, "meshd_sync_peer_external_entries", peer="1") == md.external_count(stats, 1) >= FLOWS
    assert sample(before, "meshd_sync_internal_entries") == md.internal_count(stats)
    assert sample(before, "meshd_sync_in_sync") == 1
    assert sample(before, "meshd_node_info", node="fw2", node_id="2") == 1
    assert before["process_resident_memory_bytes"].samples[0].value > 0
    fw1 = scrape(lab.fw(1))
    assert masters(fw1) == set(GROUPS)
    assert sample(fw1, "meshd_sync_internal_entries") >= FLOWS

    scraper = Scraper(lab.fw(2))
    try:
        time.sleep(0.3)
        t_kill = time.monotonic()
        lab.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGKILL)
        lab.wait_states({2: "MASTER"}, GROUPS, timeout=5)
        time.sleep(0.5)
    finally:
        scraper.stop()
    assert not scraper.errors, scraper.errors[:3]
    during = [f for t, f in scraper.answers if t >= t_kill]
    assert len(during) >= 5, len(scraper.answers)
    seen = [masters(f) for _t, f in scraper.answers]
    assert seen[0] == set() and seen[-1] == set(GROUPS), seen
    print(f"\n{len(scraper.answers)} scrapes of fw2 around the kill, none failed; "
          f"MASTER of both groups from scrape {seen.index(set(GROUPS))} on")

    after = scraper.answers[-1][1]
    for g in GROUPS:
        assert master_down_transitions(after, g) == master_down_transitions(before, g) + 1, g
        assert sample(after, "meshd_group_state", group=g, state="MASTER") == 1
        assert sample(after, "meshd_group_demotion", group=g) == 0
    assert takeovers(after) == takeovers(before) + len(GROUPS)
    took = sum(s.value for s in after["meshd_takeover_duration_seconds"].samples
               if s.name == "meshd_takeover_duration_seconds_sum")
    assert 0 < took < 2.0 * len(GROUPS), took
    # fw1's flows: still replicated (continuous commit), now adopted by fw2 bucket by bucket.
    stats, quiet, later = quiet_stats(lab, 2)
    assert sample(quiet, "meshd_sync_internal_entries") == md.internal_count(stats)
    assert sample(quiet, "meshd_sync_peer_external_entries", peer="1") == md.external_count(stats, 1)
    assert sample(quiet, "meshd_sync_internal_entries") + \
        sample(quiet, "meshd_sync_peer_external_entries", peer="1") >= FLOWS
    assert sample(quiet, "meshd_sync_commit_duration_seconds", "meshd_sync_commit_duration_seconds_count",
                  kind="continuous") == stats["commits"]["continuous"] >= 1
    # Events go on arriving (the peers' adverts are flows too): between the two answers.
    assert stats["kernel"]["events"] <= sample(quiet, "meshd_sync_kernel_events", "meshd_sync_kernel_events_total") \
        <= later["kernel"]["events"]

    # A reload moves the endpoint to [::1]; the old address no longer answers.
    md.write_config(lab.run_dir, 2, sync=md.sync_section(),
                    extra_toml=METRICS.replace(f"127.0.0.1:{PORT}", f"[::1]:{PORT + 1}"))
    reload = md.meshctl(lab.run_dir, 2, "reload")
    assert reload.returncode == 0 and "metrics.listen: 127.0.0.1:7114 -> [::1]:7115" in reload.stdout, \
        reload.stdout + reload.stderr
    moved = scrape(lab.fw(2), f"http://[::1]:{PORT + 1}/metrics")
    assert masters(moved) == set(GROUPS)
    with pytest.raises(OSError):
        scrape(lab.fw(2), timeout=2)
