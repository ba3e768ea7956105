"""Row 9 of the benchmark (the HTTP relay against HAProxy): wrk's report read, the rows built
from synthetic runs (ratios, the issue's targets, the direct rows), the plan, the table, the
py-spy summary, and both systems' configurations (meshd's read by meshd's own parser).
No root, no lab, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

NETNS_LAB = Path(__file__).resolve().parents[1] / "netns-lab"
if str(NETNS_LAB) not in sys.path:
    sys.path.insert(0, str(NETNS_LAB))

from meshlab.bench.load import RELAY_CLIENTS
from meshlab.bench.plan import plan_phases
from meshlab.bench.relayrun import point_key, profile_summary
from meshlab.bench.report import format_relay_table, format_table
from meshlab.bench.rows import DIRECT_NOTE, build_rows, kinds_for_rows
from meshlab.relaysystems import BACKENDS, TLS_PORT, VIP, HaproxyRelay, MeshdRelay, write_certificate
from meshlab.wrk import parse_wrk, wrk_argv

# wrk 4.1.0's report as it printed it here (keep-alive, 5 connections), and with errors.
WRK_KEEPALIVE = """\
Running 1s test @ http://127.0.0.1:18777/
  1 threads and 5 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.66ms  761.01us   7.83ms   73.25%
    Req/Sec     1.86k    53.53     1.97k    72.73%
  Latency Distribution
     50%    2.57ms
     75%    3.05ms
     90%    3.62ms
     99%    5.07ms
  2037 requests in 1.10s, 0.90MB read
Requests/sec:   1851.64
Transfer/sec:    837.22KB
"""
WRK_ERRORS = """\
Running 3s test @ https://192.0.2.1:8443/
  1 threads and 200 connections
  Latency Distribution
     50%  523.00us
     75%    1.20ms
     90%    1.90ms
     99%    1.02s
  3001 requests in 3.00s, 1.22MB read
  Socket errors: connect 0, read 12, write 1, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   1000.33
Transfer/sec:      1.11MB
"""


def test_parse_wrk_reads_rate_percentiles_in_microseconds_and_errors():
    r = parse_wrk(WRK_KEEPALIVE)
    assert r == {"rps": 1851.64, "p50_us": 2570.0, "p99_us": 5070.0, "requests": 2037, "errors": 0, "non_2xx": 0}
    r = parse_wrk(WRK_ERRORS)
    assert (r["p50_us"], r["p99_us"]) == (523.0, 1_020_000.0)            # us and s units
    assert (r["errors"], r["non_2xx"], r["requests"]) == (16, 7, 3001)


def test_parse_wrk_names_what_is_missing():
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 192.0.2.1:8080 Connection refused\n")
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk(WRK_KEEPALIVE.replace("     99%    5.07ms\n", ""))


def test_wrk_argv_one_thread_and_close_only_for_new_connections():
    ka = wrk_argv("http://x/", 50, 3, new_connections=False)
    new = wrk_argv("http://x/", 200, 3, new_connections=True)
    assert ka[:4] == ["wrk", "-t1", "-c50", "-d3s"] and "--latency" in ka and "Connection: close" not in ka
    assert new[new.index("-H") + 1] == "Connection: close" and new[-1] == "http://x/"


def _relay_run(system: str, scale: float, **extra) -> dict:
    r = {"kind": "relay", "system": system, "rep": 1}
    for sec in ("plain", "tls"):
        for conn in ("ka", "new"):
            for n in RELAY_CLIENTS:
                r[point_key(conn, sec, n, "rps")] = 10_000 * scale
                r[point_key(conn, sec, n, "p50_us")] = 1000 / scale
                r[point_key(conn, sec, n, "p99_us")] = 3000 / scale
                r[point_key(conn, sec, n, "cpu_us_per_req")] = 50 / scale
    r.update(extra)
    return r


def _row(rows, key):
    (row,) = [r for r in rows if r["key"] == key]
    return row


def test_relay_rows_ratio_targets_on_keep_alive_only():
    direct = {point_key(c, "", n, "rps"): 60_000.0 for c in ("ka", "new") for n in RELAY_CLIENTS}
    runs = [_relay_run("meshd", 0.1, **direct), _relay_run("reference", 1.0)]
    rows = build_rows(runs, ["meshd", "reference"], [9])
    assert {r["issue_row"] for r in rows} == {9}
    assert len(rows) == 2 * 2 * len(RELAY_CLIENTS) * 4 + 2 * len(RELAY_CLIENTS)
    rps = _row(rows, "relay_ka_plain_c50_rps")
    assert (rps["meshd"], rps["reference"], rps["ratio"]) == (1000, 10000, 0.1)
    assert rps["unit"] == "requests/s" and rps["target"] == "ratio >= 0.5" and rps["met"] is False
    p99 = _row(rows, "relay_ka_tls_c200_p99")
    assert p99["ratio"] == 10.0 and p99["target"] == "ratio <= 2" and p99["met"] is False
    new = _row(rows, "relay_new_tls_c1_rps")
    assert new["ratio"] == 0.1 and new["target"] is None and new["met"] is None
    assert _row(rows, "relay_ka_plain_c50_cpu")["meshd"] == 500
    d = _row(rows, "relay_direct_ka_c200_rps")
    assert d["meshd"] == 60000 and d["reference"] is None and d["ratio"] is None and DIRECT_NOTE in d["note"]


def test_relay_rows_met_when_meshd_is_at_target_and_errors_are_carried():
    runs = [_relay_run("meshd", 0.6), {"kind": "relay", "system": "reference", "rep": 1,
                                       "error": "haproxy is not installed"}]
    rows = build_rows(runs, ["meshd", "reference"], [9])
    assert _row(rows, "relay_ka_plain_c1_rps")["reference"] is None
    assert "reference run 1: haproxy is not installed" in _row(rows, "relay_ka_plain_c1_rps")["error"]
    rows = build_rows([_relay_run("meshd", 0.6), _relay_run("reference", 1.0)], ["meshd", "reference"], [9])
    assert _row(rows, "relay_ka_plain_c200_rps")["met"] is True
    assert _row(rows, "relay_ka_plain_c200_p99")["met"] is True          # 1/0.6 = 1.67x
    text = format_table(rows)
    assert "HTTP relay, keep-alive, tls, 200 clients: p99 latency" in text and "5,000" in text
    lines = format_relay_table(rows).splitlines()
    assert lines[0].startswith("| load | clients | meshd req/s | HAProxy req/s | ratio |")
    (line,) = [x for x in lines if x.startswith("| keep-alive, TLS | 200 |")]
    # requests/s both, ratio, p50 ms both, p99 ms both, p99 ratio, CPU µs both, met
    assert line.split(" | ")[2:] == ["6,000", "10,000", "0.60", "1.67", "1.00", "5.00", "3.00", "1.67", "83", "50",
                                     "yes |"]
    assert len(lines) == 2 + 2 * 2 * len(RELAY_CLIENTS)             # no direct rows in these runs
    assert format_relay_table(build_rows([], ["meshd"], [1])) == ""


def test_relay_row_is_one_run_per_system_and_only_its_kind():
    assert kinds_for_rows([9]) == ["relay"]
    (phase,) = plan_phases([9], ["meshd", "reference"], reps=3)
    assert phase.runs == (("relay", "meshd", 1), ("relay", "reference", 1)) and not phase.optional


def test_profile_summary_shares_by_innermost_and_by_any_frame():
    collapsed = ("main (/m/meshd/relay/engine.py:10);handle (/m/meshd/relay/http.py:50);"
                 "next_event (/l/h11/_connection.py:400) 6\n"
                 "main (/m/meshd/relay/engine.py:10);handle (/m/meshd/relay/http.py:50);"
                 "send (/l/trio/_socket.py:20) 3\n"
                 "main (meshd/relay/engine.py:10);handle (meshd/relay/http.py:50) 1\n"
                 "garbage line\n")
    s = profile_summary(collapsed)
    assert s["samples"] == 10
    assert s["self"][0] == ["next_event (h11/_connection.py)", 0.6]
    assert dict(map(tuple, s["inclusive"]))["handle (relay/http.py)"] == 1.0
    assert "main (relay/engine.py)" not in dict(map(tuple, s["inclusive"]))        # the outermost frames
    # (py-spy's own short names, "meshd/relay/http.py", and --full-filenames' both count)
    assert s["by_package"] == [["h11", 0.6], ["trio (its socket calls included)", 0.3], ["meshd.relay", 0.1]]
    assert profile_summary("") == {"samples": 0, "self": [], "inclusive": [], "by_package": []}


def test_both_systems_listen_alike_and_meshd_accepts_its_configuration(tmp_path):
    from meshd.config.load import load_config
    from meshlab import meshd_node as md
    cert = write_certificate(str(tmp_path))
    assert Path(cert["pem"]).read_bytes() == Path(cert["cert"]).read_bytes() + Path(cert["key"]).read_bytes()
    haproxy = HaproxyRelay(None, None).config(cert)
    assert "nbthread 1" in haproxy and "balance roundrobin" in haproxy
    assert f"bind {VIP}:{TLS_PORT} ssl crt {cert['pem']}" in haproxy
    assert all(f"server {n} {a}:80 check" in haproxy for n, a in BACKENDS.items())
    path = md.write_config(str(tmp_path), 1, md.default_groups(), extra_toml=MeshdRelay(None, None).config(cert))
    config = load_config(path)
    relays = {r.name: r for r in config.health.relays}
    assert set(relays) == {"bench-plain", "bench-tls"}
    assert {(r.protocol, r.mode, r.table, r.address) for r in relays.values()} == {("http", "roundrobin", "web", VIP)}
    assert relays["bench-tls"].port == TLS_PORT and relays["bench-tls"].tls is not None
    assert relays["bench-plain"].tls is None
    assert {t.name: set(t.hosts) for t in config.health.tables} == {"web": set(BACKENDS)}


def test_install_packages_denies_service_starts_and_keeps_a_policy_already_there(tmp_path, monkeypatch):
    """apt-get is not run: subprocess.run is replaced by a recorder that checks what the real
    install would meet (a policy-rc.d that denies every start)."""
    import subprocess
    from meshlab import reference
    policy = tmp_path / "policy-rc.d"
    installed: set[str] = set()
    calls = []

    def fake_run(argv, **kw):
        calls.append((list(argv), policy.read_text() if policy.exists() else None))
        installed.update(argv[5:])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(reference, "POLICY_RC_D", str(policy))
    monkeypatch.setattr(reference.subprocess, "run", fake_run)
    monkeypatch.setattr(reference.os, "geteuid", lambda: 0)
    monkeypatch.setattr(reference.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(reference, "binary", lambda b: "/usr/sbin/" + b if {"haproxy": "haproxy",
                        "wrk": "wrk"}.get(b) in installed or b == "nginx" else None)
    reference.install_packages({"haproxy": "haproxy", "nginx": "nginx-light", "wrk": "wrk"})
    ((argv, seen_policy),) = calls
    assert argv == ["apt-get", "install", "-y", "-q", "--no-install-recommends", "haproxy", "wrk"]
    assert seen_policy is not None and "exit 101" in seen_policy       # no service may start
    assert not policy.exists()                                         # ours, removed after

    installed.clear()
    calls.clear()
    policy.write_text("#!/bin/sh\nexit 101\n# the machine's own\n")
    reference.install_packages({"haproxy": "haproxy"})
    assert len(calls) == 1 and policy.read_text().endswith("# the machine's own\n")   # left as it was
    calls.clear()
    reference.install_packages({"nginx": "nginx-light"})                # present: nothing to do
    assert calls == []
