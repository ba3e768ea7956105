"""The benchmark harness (netns-lab/meshlab/bench/) in the netns lab, with tiny loads.

Root only (tests/lab/conftest.py).  Not a benchmark: the numbers are not
judged, only that every run measures what its rows need (counts that must be
exact are checked exactly), that a failing run is recorded while the others go
on, and that nothing is left behind (namespaces, processes, nf_conntrack_max).
The reference cases are skipped when meshlab/reference.py or keepalived /
conntrackd are not available.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
from meshlab import scenarios as sc
from meshlab.bench import rows as bench_rows
from meshlab.bench import session
from meshlab.bench.runs import run_loss, run_replication, run_survival
from meshlab.systems import MeshdSystem, make_system, reference_module
from meshlab.topology import LabError, down, lab_namespaces

pytestmark = pytest.mark.lab

CONNTRACK_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


def _system(name: str, lab):
    if name == "reference":
        try:
            ref = reference_module()
            ref.ensure_installed()
        except LabError as e:
            pytest.skip(f"the reference cannot run here: {e}")
    return make_system(name, lab.procs, lab.topo)


def _reset(system, lab) -> None:
    system.stop()
    lab.procs.kill_all()
    for n in (1, 2):
        lab.topo.reset_fw(n)
        sc.flush_conntrack(lab.topo, n)


@pytest.mark.parametrize("name", ["meshd", "reference"])
def test_runs_measure_a_failover_and_a_replication(meshd_ready, lab, name):
    system = _system(name, lab)
    try:
        r = run_survival(system, lab.topo, lab.procs, preload=1000, flows=10)
        print(name, r)
        assert r["flows"] == 10 and r["survived"] == 10, r
        assert r["flows_replicated"] is True, r
        assert 0 < r["takeover_ms"] < 5000, r
        assert r["median_gap_ms"] > 0 and r["max_gap_ms"] >= r["median_gap_ms"], r
        assert r["settled_s"] is not None, r             # the flows were seen running again
        _reset(system, lab)

        r = run_replication(system, lab.topo, lab.procs, entries=3000, rate=0, commit=True)
        print(name, r)
        assert r["cached"] == 3000, r
        assert r["committed"] >= 3000, r                  # really in fw2's kernel table
        assert r["lag_s"] >= 0 and r["cpu_s"] > 0 and r["commit_rate"] > 0, r
        assert r["rss_growth"] is not None, r
    finally:
        _reset(system, lab)


def test_loss_run_drops_replication_datagrams(meshd_ready, lab):
    system = MeshdSystem(lab.procs, lab.topo)
    try:
        r = run_loss(system, lab.topo, lab.procs, 50, entries=2000, rate=10000, give_up_s=60)
        print(r)
        assert r["fraction"] == 1.0 and r["converge_s"] is not None, r
        assert (r["dropped"]["fw2"] or 0) > 0, r          # the rule did drop datagrams
    finally:
        _reset(system, lab)
    assert sc.loss_dropped(lab.topo, 2) is None           # and it is gone


def test_relay_run_measures_meshd_tls_through_the_vip_and_leaves_nothing(meshd_ready, lab):
    """Row 9's run, cut to its TLS points at 2 clients for 1 s: meshd's HTTP relay terminating
    TLS on the VIP to the nginx backends, every request answered 200 by a backend."""
    from meshlab.bench.measure import read_sysctl
    from meshlab.bench.relayrun import SYSCTLS, run_relay
    from meshlab.relaysystems import BACKENDS, TOOLS
    from meshlab.reference import binary
    missing = [b for b in TOOLS if b != "haproxy" and binary(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (netns-lab/bench --rows 9 installs them)")
    topo = lab.topo
    before = {name: read_sysctl(topo.fw(1), name) for name in SYSCTLS}
    system = MeshdSystem(lab.procs, topo)
    try:
        r = run_relay(system, topo, lab.procs, clients=(2,), seconds=1, security=("tls",), direct=False,
                      profile=False)
        print(r)
        for conn in ("ka", "new"):
            assert r[f"{conn}_tls_c2_requests"] > 0 and r[f"{conn}_tls_c2_errors"] == 0, r
            assert r[f"{conn}_tls_c2_non_2xx"] == 0, r                 # every answer a backend's 200
            assert 0 < r[f"{conn}_tls_c2_p50_us"] <= r[f"{conn}_tls_c2_p99_us"], r
            assert r[f"{conn}_tls_c2_cpu_us_per_req"] > 0, r           # the relay engine did the work
        # a new connection per request costs the relay more than keep-alive (a TLS handshake each)
        assert r["new_tls_c2_cpu_us_per_req"] > r["ka_tls_c2_cpu_us_per_req"], r
        assert "ka_plain_c2_rps" not in r and "direct_ka_c2_rps" not in r
        assert sorted(r["backends_seen"]) == sorted(list(BACKENDS.values()) * 2), r     # round robin
    finally:
        _reset(system, lab)
    assert {name: read_sysctl(topo.fw(1), name) for name in SYSCTLS} == before
    held = {a.split("/")[0] for addrs in topo.addresses(topo.server).values() for a in addrs}
    assert not held & set(BACKENDS.values())
    assert [p for p in lab.procs.procs.values() if p.alive()] == []


def test_benchmark_records_a_failed_run_goes_on_and_cleans_up(meshd_ready, monkeypatch):
    prefix = f"mb{os.getpid() % 10000}-"
    def broken(system, lab, procs, say):
        system.start((1, 2))
        raise LabError("injected failure (test)")

    runs = dict(session.RUNS)
    runs["repl"] = (2, broken)
    monkeypatch.setattr(session, "RUNS", runs)
    # Row 1 from the empty-table run alone (the 100k and 200k runs would add
    # 25 s and test nothing more here).
    monkeypatch.setattr(bench_rows, "ROWS", tuple(
        dataclasses.replace(r, kind="gap0") if r.key == "takeover_ms" else r for r in bench_rows.ROWS))
    with open(CONNTRACK_MAX) as f:
        max_before = f.read().strip()
    report = None
    try:
        report = session.run_benchmark([1, 3], ["meshd"], reps=1, prefix=prefix)
    finally:
        left = lab_namespaces(prefix)
        if left:
            down(prefix)
    assert not left, f"namespaces left behind: {left}"
    with open(CONNTRACK_MAX) as f:
        assert f.read().strip() == max_before
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {"takeover_ms", "replication_lag_s", "replication_cpu_s"}
    assert rows["takeover_ms"]["meshd"] > 0 and "error" not in rows["takeover_ms"]
    assert rows["takeover_ms"]["reference"] is None and rows["takeover_ms"]["met"] is None
    assert "injected failure (test)" in rows["replication_lag_s"]["error"]
    assert rows["replication_lag_s"]["meshd"] is None
    assert report["failed_runs"] == 1 and not report["interrupted"]
    run_dir = report["run_dir_kept"]                      # kept after a failure, for its logs
    assert run_dir and os.path.isdir(run_dir)
    try:
        assert _processes_using(run_dir) == [], "daemons of the benchmark still running"
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _processes_using(run_dir: str) -> list[str]:
    """Command lines of live processes that name the run dir (meshd --config RUN_DIR/...)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if run_dir in cmd:
            found.append(f"{pid}: {cmd}")
    return found
