"""`show summary` and `show hosts` rows and their relayctl-like text, from the
health core of a simulated node (tests/sim/cluster/)."""

from __future__ import annotations

from cluster import TCP, WEB, Cluster, health, health_node, redirect, table

from meshd.health.report import format_hosts, format_summary, hosts, summary

W1, W2 = "10.1.0.11", "10.1.0.12"


def started(section: dict) -> Cluster:
    c = Cluster({1: health_node(1, section)})
    c.start(1)
    return c


def lb_sim() -> Cluster:
    tables = (table("web", ["web1", "web2"]), table("sorry", ["sorry"], port=8080, check=TCP))
    return started(health(WEB, tables, (redirect(backup_table="sorry"),)))


def rows_by_name(rows):
    return {(r["type"], r["name"]): r for r in rows}


def test_summary_rows_follow_relayctl():
    c = lb_sim()
    c.run_until(1.0)
    assert summary(c.nodes[1].health) == [
        {"id": 0, "type": "redirect", "name": "www", "availability": None, "status": "active"},
        {"id": 0, "type": "table", "name": "web", "availability": None, "status": "active (2 hosts up)"},
        {"id": 0, "type": "host", "name": "web1", "availability": 100.0, "status": "up"},
        {"id": 1, "type": "host", "name": "web2", "availability": 100.0, "status": "up"},
        {"id": 1, "type": "table", "name": "sorry", "availability": None, "status": "active (1 hosts up)"},
        {"id": 2, "type": "host", "name": "sorry", "availability": 100.0, "status": "up"},
    ]


def test_summary_statuses_through_backup_down_and_disabled():
    c = lb_sim()
    c.run_until(1.0)
    c.nodes[1].up[W1] = c.nodes[1].up[W2] = False
    c.run_until(4.0)
    rows = rows_by_name(summary(c.nodes[1].health))
    assert rows[("redirect", "www")]["status"] == "active (using backup table)"
    assert rows[("table", "web")]["status"] == "empty"
    assert rows[("host", "web1")]["status"] == "down"
    # 1 success, then 3 failures
    assert rows[("host", "web1")]["availability"] == 25.0
    c.nodes[1].up["10.1.0.99"] = False
    c.run_until(8.0)
    assert rows_by_name(summary(c.nodes[1].health))[("redirect", "www")]["status"] == "down"
    c.call(1, "health_enable", "host", "web2", False)
    c.call(1, "health_enable", "table", "sorry", False)
    c.call(1, "health_enable", "redirect", "www", False)
    rows = rows_by_name(summary(c.nodes[1].health))
    assert rows[("redirect", "www")]["status"] == "disabled"
    assert rows[("table", "sorry")]["status"] == "disabled"
    assert ("host", "sorry") not in rows          # a disabled table hides its hosts, as in relayd
    assert rows[("host", "web2")]["status"] == "disabled"


def test_unchecked_hosts_are_unknown_without_availability():
    c = lb_sim()
    rows = rows_by_name(summary(c.nodes[1].health))
    assert rows[("host", "web1")] == {"id": 0, "type": "host", "name": "web1",
                                       "availability": None, "status": "unknown"}
    assert rows[("redirect", "www")]["status"] == "down"


def test_summary_text_has_relayctl_columns():
    c = lb_sim()
    c.nodes[1].up[W2] = False
    c.run_until(1.0)
    text = format_summary(summary(c.nodes[1].health))
    assert text == (
        "Id   Type      Name                        Avlblty  Status\n"
        "0    redirect  www                                  active\n"
        "0    table     web                                  active (1 hosts up)\n"
        "0    host      web1                        100.00%  up\n"
        "1    host      web2                        0.00%    down\n"
        "1    table     sorry                                active (1 hosts up)\n"
        "2    host      sorry                       100.00%  up\n")


def test_hosts_rows_carry_counts_latency_error_and_recent_results():
    c = lb_sim()
    c.run_until(1.0)
    c.nodes[1].up[W1] = False
    c.nodes[1].errors[W1] = "http code 503, expected 200"
    c.run_until(2.6)                    # one success, then failures at 2.02 and 2.53
    row = next(r for r in hosts(c.nodes[1].health, now=3.0) if r["host"] == "web1")
    assert row["status"] == "up" and row["changing"] == "2/3 failures"
    assert (row["checks"], row["successes"], row["failures"]) == (3, 1, 2)
    assert row["availability"] == 33.33
    assert row["last_error"] == "http code 503, expected 200"
    assert row["latency_ms"] == 10.0
    assert row["interval_ms"] == 500                      # fast while the count moves
    assert row["last_check_ago_s"] == 0.47
    assert [r["ok"] for r in row["recent"]] == [True, False, False]
    assert (row["address"], row["port"], row["method"], row["weight"]) == (W1, 80, "http", 1)


def test_hosts_text():
    c = lb_sim()
    c.run_until(1.0)
    c.nodes[1].up[W1] = False
    c.nodes[1].errors[W1] = "http code 503, expected 200"
    c.run_until(4.0)
    lines = format_hosts(hosts(c.nodes[1].health)).splitlines()
    assert lines[0].split() == ["Id", "Table", "Host", "Address", "Status", "Avlblty", "Checks",
                                "Latency", "Last", "error"]
    assert lines[1] == ("0    web           web1          10.1.0.11:80            down     "
                        "25.00%   1/4     10ms     http code 503, expected 200")
    assert lines[3].startswith("2    sorry         sorry         10.1.0.99:8080          up")


def test_ipv6_addresses_are_bracketed_in_the_hosts_text():
    c = started(health({"v6": "2001:db8::11"}, (table("web", ["v6"]),),
                         (redirect(address="2001:db8::80"),)))
    c.run_until(1.0)
    assert "[2001:db8::11]:80" in format_hosts(hosts(c.nodes[1].health))
