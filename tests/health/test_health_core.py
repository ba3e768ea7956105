"""HealthCore rules on the simulated cluster (tests/sim/cluster/): no sockets, no sleeping.

One node with [health] and one group, "lan", the counter the redirects
demote: the health core runs inside the node core, its checks answered by
the simulated shell from the node's `up` / `errors` after `check_latency`
(an address in `hung` never answers).  A redirect's Demote reaches the
election as the demotion of "lan" (DemotionChanged, reason "health: ...").
Tests of one HealthCore method with nothing to simulate drive a HealthCore
alone, from the same configuration.
"""

from __future__ import annotations

import itertools
import random

import pytest
from cluster import (
    HTTP_SPEC,
    TCP,
    TCP_SPEC,
    WEB,
    Cluster,
    health,
    health_config,
    health_node,
    redirect,
    table,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.election.actions import DemotionChanged
from meshd.health.actions import CancelCheck, DeleteStates, Log, SetBackends, StartCheck
from meshd.health.checkspec import CheckOutcome
from meshd.health.core import OVERDUE_GRACE_S, HealthCore, UnknownName
from meshd.health.model import Pace, Status
from meshd.health.schedule import first_delay, jittered

W1, W2, SORRY = "10.1.0.11", "10.1.0.12", "10.1.0.99"


def health_sim(section: dict, seed: int = 1, latency: float = 0.01, start: bool = True) -> Cluster:
    c = Cluster({1: health_node(1, section)}, seed=seed, check_latency=latency)
    if start:
        c.start(1)
    return c


def web_sim(**kw) -> Cluster:
    redirects = kw.pop("redirects", (redirect(),))
    tables = kw.pop("tables", (table("web", ["web1", "web2"]),))
    start = kw.pop("start", True)
    return health_sim(health(WEB, tables, redirects, **kw), start=start)


def web_text(tables=None, redirects=None, hosts=WEB, **kw) -> str:
    """The node's file: by default table web (web1, web2) behind redirect www."""
    tables = (table("web", ["web1", "web2"]),) if tables is None else tables
    redirects = (redirect(),) if redirects is None else redirects
    return health_node(1, health(hosts, tables, redirects, **kw))


def core(c: Cluster) -> HealthCore:
    return c.nodes[1].health


def reload_same(c: Cluster) -> list:
    """HealthCore.reload with the configuration it runs (the node core never
    reloads an unchanged [health]: this is the core's own rule)."""
    return core(c).reload(core(c).config, c.now)


def member(c: Cluster, tbl: str, host: str):
    return core(c).members[(tbl, host)]


def starts(c: Cluster, address: str, since: float = -1.0) -> list[float]:
    return [t for t, a in c.nodes[1].timed(StartCheck, since) if a.target.address == address]


def backends(c: Cluster, name: str = "www") -> SetBackends | None:
    sets = [a for a in c.nodes[1].of(SetBackends) if a.redirect == name]
    return sets[-1] if sets else None


def backend_addresses(c: Cluster, name: str = "www") -> list[str]:
    return [b[0] for b in backends(c, name).backends]


def messages(c: Cluster, since: float = -1.0) -> list[str]:
    return [a.message for a in c.nodes[1].of(Log, since)]


def health_demotions(c: Cluster) -> list[DemotionChanged]:
    return [a for a in c.nodes[1].of(DemotionChanged) if a.reason.startswith("health: ")]


def demotes(c: Cluster) -> list[tuple[str, bool]]:
    """The redirects' Demote actions, as the counters they changed: (counter, raised)."""
    return [(a.name, a.value > 0) for a in health_demotions(c)]


def released(counter: str) -> DemotionChanged:
    return DemotionChanged(counter, 0, f"health: no redirect demoting {counter} is down any more")


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def down_time(c: Cluster, address: str) -> float:
    return next(t for t, a in c.nodes[1].log if isinstance(a, Log) and a.event == "health_host"
                and a.fields["address"] == address and a.fields["status"] == "down")


# ------------------------------------------------------------------ rise / fall


def test_first_result_decides_then_fall_consecutive_failures_mark_down():
    c = web_sim()
    n1 = c.nodes[1]
    c.run_until(1.0)
    assert member(c, "web", "web1").health.status is Status.UP
    assert "host 10.1.0.11:80 up: first check ok" in messages(c)
    n1.up[W1] = False
    n1.errors[W1] = "http code 503, expected 200"
    c.run_until(3.0)                    # two failures (2.02, 2.53): not yet
    h = member(c, "web", "web1").health
    assert h.status is Status.UP and h.streak == 2
    assert backend_addresses(c) == [W1, W2]
    c.run_until(3.5)                    # the third (3.04)
    assert h.status is Status.DOWN
    assert down_time(c, W1) == pytest.approx(3.04)
    assert "host 10.1.0.11:80 down: http code 503, expected 200" in messages(c)
    assert backend_addresses(c) == [W2]


def test_a_success_between_failures_restarts_the_fall_count():
    c = web_sim()
    n1 = c.nodes[1]
    c.run_until(1.0)
    n1.up[W1] = False
    c.run_until(2.6)                    # failures at 2.02 and 2.53
    n1.up[W1] = True
    c.run_until(3.1)                    # success at 3.04: count back to 0
    h = member(c, "web", "web1").health
    assert (h.status, h.streak) == (Status.UP, 0)
    n1.up[W1] = False
    c.run_until(6.0)                    # 5.05, 5.56: two failures only
    assert h.status is Status.UP and h.streak == 2


def test_rise_consecutive_successes_bring_a_host_back():
    c = web_sim()
    n1 = c.nodes[1]
    n1.up[W1] = False
    c.run_until(1.0)
    h = member(c, "web", "web1").health
    assert h.status is Status.DOWN        # first result decides
    n1.up[W1] = True
    c.run_until(5.02)                   # the check at 5.01 (down interval) answers ok: 1 of 2
    assert h.status is Status.DOWN and h.progress() == "1/2 successes"
    c.run_until(5.6)                    # the next one, a fast interval later
    assert h.status is Status.UP
    assert "host 10.1.0.11:80 up: 2 checks ok in a row" in messages(c)
    assert backend_addresses(c) == [W1, W2]


# ------------------------------------------------------------------ intervals


def test_intervals_follow_inter_fastinter_downinter():
    c = web_sim()
    n1 = c.nodes[1]
    c.run_until(4.5)                    # steady up: inter (2 s) after each result
    n1.up[W1] = False
    c.run_until(20.0)                   # going down: fast; down: down interval
    n1.up[W1] = True
    c.run_until(30.0)                   # going up: fast; up: inter again
    # interval + 10 ms latency, since the interval runs from the end of a check
    assert gaps(starts(c, W1)) == [2.01, 2.01, 2.01, 0.51, 0.51, 5.01, 5.01, 5.01, 0.51, 2.01, 2.01, 2.01]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), interval_ms=st.integers(100, 10000),
       jitter=st.integers(0, 50))
def test_jittered_gaps_stay_within_plus_minus_jitter_percent(seed, interval_ms, jitter):
    tables = (table("web", ["web1"], interval_ms=interval_ms, fast_interval_ms=interval_ms,
                    jitter_percent=jitter),)
    c = health_sim(health(WEB, tables), seed=seed, latency=0.0)
    c.run_until(interval_ms / 1000 * 12)
    begun = starts(c, W1)
    iv = interval_ms / 1000
    assert 0 <= begun[0] <= iv * jitter / 100 + 1e-9
    assert len(begun) >= 8
    for gap in gaps(begun):
        assert iv * (1 - jitter / 100) - 1e-6 <= gap <= iv * (1 + jitter / 100) + 1e-6
    if jitter >= 10:
        assert len(set(gaps(begun))) > 1, "jitter must move the checks"


@given(seed=st.integers(0, 2**32 - 1), interval=st.floats(0.01, 3600), jitter=st.integers(0, 50))
def test_jitter_functions_stay_in_their_band(seed, interval, jitter):
    rng = random.Random(seed)
    for _ in range(20):
        value = jittered(interval, jitter, rng)
        assert interval * (1 - jitter / 100) * (1 - 1e-12) <= value <= interval * (1 + jitter / 100) * (1 + 1e-12)
        assert 0 <= first_delay(interval, jitter, rng) <= interval * jitter / 100


def test_checks_of_one_table_drift_apart_with_jitter():
    hosts = {f"h{i}": f"10.2.0.{i}" for i in range(1, 11)}
    c = health_sim(health(hosts, (table("t", list(hosts), jitter_percent=20),)), seed=7)
    c.run_until(60.0)
    firsts = {a: starts(c, a, since=50.0)[0] for a in hosts.values()}
    assert max(firsts.values()) - min(firsts.values()) > 0.2


# ------------------------------------------------------------------ max_in_flight


def test_due_checks_wait_for_a_free_slot_in_due_order():
    hosts = {f"h{i}": f"10.2.0.{i}" for i in range(1, 6)}
    core = HealthCore(health_config(hosts, (table("t", list(hosts), jitter_percent=50),),
                             max_in_flight=2), random.Random(3))
    core.started = True                   # schedule by hand to read the due times first
    for check in core.checks.values():
        core._schedule_first(check, 0.0)
    due = {t.address: core.queue.due(t) for t in core.checks}
    by_due = sorted(due, key=due.get)
    started = core.poll(10.0)
    assert [a.target.address for a in started] == by_due[:2]
    assert len(core.inflight) == 2
    # Full: the next deadline is when the runs are overdue, not the waiting checks' time.
    assert core.next_deadline() == pytest.approx(10.0 + 0.5 + OVERDUE_GRACE_S)
    assert core.poll(11.0) == []
    nxt = core.check_done(started[0].check_id, CheckOutcome(True, 0.01), 11.0)
    assert [a.target.address for a in nxt if isinstance(a, StartCheck)] == [by_due[2]]
    nxt = core.check_done(started[1].check_id, CheckOutcome(True, 0.01), 11.5)
    assert [a.target.address for a in nxt if isinstance(a, StartCheck)] == [by_due[3]]


def test_never_more_runs_than_max_in_flight_in_a_long_run():
    hosts = {f"h{i}": f"10.2.0.{i}" for i in range(1, 21)}
    c = health_sim(health(hosts, (table("t", list(hosts), interval_ms=500, jitter_percent=30),),
                     max_in_flight=3), latency=0.2)
    peak = 0
    for step in range(1, 200):
        c.run_until(step * 0.1)
        peak = max(peak, len(core(c).inflight))
    assert peak == 3
    # Everyone still gets checked, just later.
    assert all(len(starts(c, a)) >= 5 for a in hosts.values())


def test_a_run_never_reported_counts_as_a_failure_and_a_late_result_is_ignored():
    c = web_sim(start=False)
    n1 = c.nodes[1]
    n1.hung.add(W1)
    c.start(1)
    first = next(a for a in n1.of(StartCheck) if a.target.address == W1)
    c.run_until(3.0)
    h = member(c, "web", "web1").health
    assert h.status is Status.DOWN
    assert h.last_error == "no result within 2.5 s (check runner overdue)"
    assert c.call(1, "check_done", first.check_id, CheckOutcome(True, 0.01)) == []
    assert core(c).stale_results == 1 and core(c).overdue_runs == 1


def test_a_check_still_running_is_not_started_again_when_its_tables_change():
    tables = (table("web", ["web1"]), table("web-fast", ["web1"], interval_ms=1000))
    c = health_sim(health(WEB, tables))
    n1 = c.nodes[1]
    c.run_until(0.5)                                     # up after the first check
    n1.hung.add(W1)
    c.run_until(1.1)                                     # the run of 1.01 hangs
    c.call(1, "health_enable", "table", "web-fast", False)   # the check's pace changes while it runs
    c.run_until(3.4)                                     # before that run is overdue (3.51)
    assert starts(c, W1) == [0.0, pytest.approx(1.01)]
    assert len(core(c).inflight) == 1


def test_a_script_may_wait_for_the_pool_before_the_core_gives_up_on_it():
    script = {"method": "script", "timeout_ms": 2000, "script": "/usr/local/bin/check"}
    core = HealthCore(health_config(WEB, (table("s", ["web1"], check=script),), max_in_flight=8),
                      random.Random(1))
    assert [type(a) for a in core.start(0.0)] == [StartCheck]
    assert core.next_deadline() == pytest.approx(2.0 * 8 + OVERDUE_GRACE_S)


def test_a_run_the_runner_refused_is_retried_without_touching_health():
    core = HealthCore(health_config(WEB, (table("web", ["web1"]),), max_in_flight=1), random.Random(1))
    (run,) = [a for a in core.start(0.0) if isinstance(a, StartCheck)]
    assert core.check_refused(run.check_id, 0.0) == []
    h = core.members[("web", "web1")].health
    assert (h.checks, h.status) == (0, Status.UNKNOWN)
    assert len(core.inflight) == 0
    assert core.next_deadline() == pytest.approx(0.5)     # a (fast) interval later
    (again,) = core.poll(0.5)
    assert again.check_id != run.check_id
    assert core.check_refused(run.check_id, 0.6) == [] and core.stale_results == 1


# ------------------------------------------------------------------ shared checks


def test_tables_with_equal_check_and_port_share_one_check_at_the_faster_interval():
    tables = (table("web", ["web1", "web2"]),
              table("web-fast", ["web1"], interval_ms=1000),
              table("web-tcp", ["web1"], check=TCP))
    c = health_sim(health(WEB, tables, (redirect(), redirect("fast", "web-fast", port=81))))
    n1 = c.nodes[1]
    c.run_until(10.0)
    http = [t for t, a in n1.log if isinstance(a, StartCheck)
            and a.target.address == W1 and a.target.spec == HTTP_SPEC]
    tcp = [t for t, a in n1.log if isinstance(a, StartCheck)
           and a.target.address == W1 and a.target.spec == TCP_SPEC]
    assert set(gaps(http)) == {1.01}      # one check, at web-fast's interval
    assert set(gaps(tcp)) == {2.01}       # another method: its own check
    slow, fast = member(c, "web", "web1").health, member(c, "web-fast", "web1").health
    assert slow.checks == fast.checks == len(http)
    assert member(c, "web-tcp", "web1").health.checks == len(tcp)


def test_icmp_checks_are_shared_whatever_the_table_port():
    icmp = {"method": "icmp"}
    tables = (table("http", ["web1"], port=80, check=icmp), table("https", ["web1"], port=443, check=icmp))
    core = HealthCore(health_config(WEB, tables), random.Random(1))
    starts = [a for a in core.start(0.0) if isinstance(a, StartCheck)]
    assert [(a.target.address, a.target.port) for a in starts] == [(W1, 0)]


# ------------------------------------------------------------------ backup table and demotion


def backup_sim(**kw) -> Cluster:
    tables = (table("web", ["web1", "web2"]), table("sorry", ["sorry"], port=8080, check=TCP))
    return web_sim(tables=tables, redirects=(redirect(backup_table="sorry", **kw),))


def test_backup_table_takes_over_when_no_main_host_is_up_and_hands_back():
    c = backup_sim(demote="lan")
    n1 = c.nodes[1]
    c.run_until(1.0)
    assert backends(c) == SetBackends("www", ((W1, 80, 1), (W2, 80, 1)), False)
    n1.up[W1] = n1.up[W2] = False
    c.run_until(4.0)
    assert backends(c) == SetBackends("www", ((SORRY, 8080, 1),), True)
    assert core(c).redirects["www"].status == "active (using backup table)"
    assert ("redirect www active (using backup table): no host up in table web; "
            "1 up in backup table sorry") in messages(c)
    n1.up[W2] = True
    c.run_until(20.0)
    assert backends(c) == SetBackends("www", ((W2, 80, 1),), False)
    # The backup served all along: never demoted after the start.
    assert demotes(c) == [("lan", True), ("lan", False)]


def test_demotion_raised_while_nothing_is_up_and_released_when_a_host_returns():
    c = web_sim(redirects=(redirect(demote="lan"),))
    n1 = c.nodes[1]
    # At start nothing is known yet: demoted until the first results.
    assert demotes(c) == [("lan", True)]
    c.run_until(1.0)
    assert demotes(c) == [("lan", True), ("lan", False)]
    n1.up[W1] = n1.up[W2] = False
    c.run_until(4.0)
    assert demotes(c)[-1] == ("lan", True)
    assert backends(c).backends == ()
    assert health_demotions(c)[-1].reason == "health: redirect www down: no host up in table web"
    n1.up[W1] = True
    c.run_until(20.0)
    assert demotes(c)[-1] == ("lan", False)
    assert len(demotes(c)) == 4


def test_a_shared_counter_stays_raised_while_any_of_its_redirects_is_down():
    tables = (table("web", ["web1"]), table("api", ["web2"], port=8000))
    c = web_sim(tables=tables, redirects=(redirect(demote="lan"),
                                          redirect("api", "api", port=8000, demote="lan")))
    n1 = c.nodes[1]
    c.run_until(1.0)
    n1.up[W1] = False
    c.run_until(4.0)
    assert demotes(c)[-1] == ("lan", True)
    n1.up[W2] = False
    n1.up[W1] = True
    c.run_until(15.0)                   # www back, api down: still raised
    assert core(c).redirects["www"].status == "active"
    assert demotes(c)[-1] == ("lan", True)
    n1.up[W2] = True
    c.run_until(30.0)
    assert demotes(c)[-1] == ("lan", False)


def test_set_backends_only_when_the_set_changes():
    c = web_sim()
    n1 = c.nodes[1]
    c.run_until(60.0)
    # the initial empty set, then web1, then web1 + web2: nothing more in a minute of checks
    assert [a.backends for a in n1.of(SetBackends)] == [(), ((W1, 80, 1),), ((W1, 80, 1), (W2, 80, 1))]


def test_a_dead_host_has_its_states_deleted_after_it_leaves_the_backends():
    c = web_sim(redirects=(redirect(delete_dead_states=True),))
    n1 = c.nodes[1]
    c.run_until(1.0)
    n1.up[W1] = False
    c.run_until(4.0)
    changes = [a for _, a in n1.log if isinstance(a, (SetBackends, DeleteStates))][-2:]
    assert changes == [SetBackends("www", ((W2, 80, 1),), False), DeleteStates("www", W1, 80)]


def test_without_delete_dead_states_no_states_are_deleted():
    c = web_sim()
    n1 = c.nodes[1]
    c.run_until(1.0)
    n1.up[W1] = False
    c.run_until(4.0)
    assert n1.of(DeleteStates) == []


# ------------------------------------------------------------------ resets (passive evidence)


def test_an_rst_burst_checks_at_once_and_moves_to_the_fast_interval_without_marking_down():
    c = web_sim(rst_burst=3, rst_window_ms=1000)
    c.run_until(3.0)                    # checked at 0 and 2.01; next would be 4.02
    h = member(c, "web", "web1").health
    assert c.call(1, "reset_seen", W1, 80) == []
    c.run_until(3.1)
    assert c.call(1, "reset_seen", W1, 80) == []
    c.run_until(3.2)
    actions = c.call(1, "reset_seen", W1, 80)
    assert [type(a) for a in actions] == [Log, StartCheck]
    assert actions[0].message == "host 10.1.0.11:80: 3 resets within 1000 ms, checking it now"
    assert h.status is Status.UP and h.pace() is Pace.FAST
    # More resets while that check runs change nothing (a flood cannot speed checks up).
    assert c.call(1, "reset_seen", W1, 80) == [] and c.call(1, "reset_seen", W1, 80) == []
    assert c.call(1, "reset_seen", W1, 80) == []
    c.run_until(3.3)                    # the check says the host is fine: normal pace again
    assert h.status is Status.UP and h.pace() is Pace.INTER
    assert starts(c, W1, since=3.21)[:1] == [] and core(c).queue.due(
        member(c, "web", "web1").target) == pytest.approx(3.21 + 2.0)


def test_resets_spread_over_more_than_the_window_are_no_burst():
    c = web_sim(rst_burst=3, rst_window_ms=1000)
    c.run_until(3.0)
    for t in (3.0, 3.6, 4.2, 4.8):
        c.run_until(t)
        assert c.call(1, "reset_seen", W1, 80) == []


def test_a_burst_right_after_a_check_waits_a_fast_interval_from_it():
    c = web_sim(rst_burst=2)
    c.run_until(2.2)                    # last check started at 2.01
    c.call(1, "reset_seen", W1, 80)
    actions = c.call(1, "reset_seen", W1, 80)
    assert actions[0].message == "host 10.1.0.11:80: 2 resets within 1000 ms, checking it in 0.3 s"
    c.run_until(3.0)
    assert starts(c, W1, since=2.2) == [pytest.approx(2.51)]


def test_an_rst_burst_speeds_up_detection_of_a_dead_host():
    def detect(with_burst: bool) -> float:
        c = web_sim(rst_burst=3)
        n1 = c.nodes[1]
        c.run_until(2.5)
        n1.up[W1] = False
        if with_burst:
            for _ in range(3):
                c.call(1, "reset_seen", W1, 80)
        c.run_until(10.0)
        return down_time(c, W1)
    slow, fast = detect(False), detect(True)
    assert slow == pytest.approx(4.02 + 0.51 * 2 + 0.01)
    # burst at 2.5, a fast interval after the check of 2.01: 2.51, 3.02, 3.53 fail
    assert fast == pytest.approx(2.51 + 0.51 * 2 + 0.01)


def test_resets_from_an_address_that_is_no_backend_are_ignored():
    c = web_sim(rst_burst=1)
    c.run_until(1.0)
    assert c.call(1, "reset_seen", "10.9.9.9", 80) == []
    assert c.call(1, "reset_seen", W1, 443) == []
    assert c.call(1, "reset_seen", "not an address", 80) == []
    assert core(c).rst == {}


def test_rst_burst_zero_turns_the_watcher_off():
    c = web_sim(rst_burst=0)
    c.run_until(1.0)
    assert all(c.call(1, "reset_seen", W1, 80) == [] for _ in range(10))


# ------------------------------------------------------------------ enable / disable


def test_disabling_a_host_drains_it_and_stops_its_checks():
    c = web_sim(redirects=(redirect(delete_dead_states=True),))
    c.run_until(1.0)
    actions = c.call(1, "health_enable", "host", "web1", False)
    assert actions[0].message == "host web1 disabled by operator"
    assert SetBackends("www", ((W2, 80, 1),), False) in actions
    assert not any(isinstance(a, DeleteStates) for a in actions)   # drain: flows kept
    assert core(c).host_status(member(c, "web", "web1")) == "disabled"
    c.run_until(20.0)
    assert starts(c, W1, since=1.0) == []
    assert c.call(1, "health_enable", "host", "web1", False) == []    # already disabled


def test_enabling_a_host_checks_it_at_once_and_it_returns_after_its_first_success():
    c = web_sim()
    c.run_until(1.0)
    c.call(1, "health_enable", "host", "web1", False)
    c.run_until(10.0)
    actions = c.call(1, "health_enable", "host", "web1", True)
    assert any(isinstance(a, StartCheck) and a.target.address == W1 for a in actions)
    assert member(c, "web", "web1").health.status is Status.UNKNOWN
    c.run_until(10.1)
    assert backend_addresses(c) == [W1, W2]


def test_disabling_the_main_table_switches_to_the_backup():
    c = backup_sim()
    c.run_until(1.0)
    c.call(1, "health_enable", "table", "web", False)
    assert backends(c) == SetBackends("www", ((SORRY, 8080, 1),), True)
    assert core(c).table_status("web") == "disabled"
    assert ("redirect www active (using backup table): table web is disabled; "
            "1 up in backup table sorry") in messages(c)
    c.run_until(10.0)
    assert starts(c, W1, since=1.0) == [] and starts(c, W2, since=1.0) == []
    c.call(1, "health_enable", "table", "web", True)
    c.run_until(10.1)
    assert backend_addresses(c) == [W1, W2]


def test_disabling_a_redirect_empties_it_and_releases_its_demotion():
    c = web_sim(redirects=(redirect(demote="lan"),))
    n1 = c.nodes[1]
    n1.up[W1] = n1.up[W2] = False
    c.run_until(1.0)
    assert demotes(c) == [("lan", True)]
    actions = c.call(1, "health_enable", "redirect", "www", False)
    assert released("lan") in actions
    assert core(c).redirects["www"].status == "disabled"
    n1.up[W1] = True
    c.run_until(20.0)                  # hosts are still checked, the redirect stays empty
    assert member(c, "web", "web1").health.status is Status.UP
    assert backends(c).backends == ()
    c.call(1, "health_enable", "redirect", "www", True)
    assert backend_addresses(c) == [W1]


def test_unknown_names_and_kinds_are_refused_with_the_known_ones():
    c = web_sim()
    with pytest.raises(UnknownName, match=r'no host named "web9" \(hosts: web1, web2, web3, sorry\)'):
        c.call(1, "health_enable", "host", "web9", False)
    with pytest.raises(UnknownName, match=r'no redirect named "ww" \(redirects: www\)'):
        c.call(1, "health_enable", "redirect", "ww", False)
    with pytest.raises(ValueError, match="kind must be one of host, table, redirect"):
        c.call(1, "health_enable", "relay", "www", False)


# ------------------------------------------------------------------ reload


def test_reload_of_the_same_configuration_changes_nothing():
    c = web_sim()
    c.run_until(5.0)
    h = member(c, "web", "web1").health
    due = core(c).queue.due(member(c, "web", "web1").target)
    assert reload_same(c) == []
    assert member(c, "web", "web1").health is h and h.checks == 3
    assert core(c).queue.due(member(c, "web", "web1").target) == due


def test_reload_keeps_health_of_kept_hosts_and_checks_new_ones_at_once():
    c = web_sim()
    n1 = c.nodes[1]
    n1.up[W2] = False
    c.run_until(5.0)
    kept = member(c, "web", "web1").health
    actions = c.reload(1, web_text((table("web", ["web1", "web2", "web3"]),)))
    assert member(c, "web", "web1").health is kept and kept.status is Status.UP
    assert member(c, "web", "web2").health.status is Status.DOWN
    assert member(c, "web", "web3").health.status is Status.UNKNOWN
    assert [a.target.address for a in actions if isinstance(a, StartCheck)] == ["10.1.0.13"]
    assert not any(isinstance(a, SetBackends) for a in actions)
    c.run_until(5.1)
    assert backend_addresses(c) == [W1, "10.1.0.13"]


def test_reload_with_a_changed_check_keeps_the_status_and_checks_at_once():
    c = web_sim()
    c.run_until(5.0)
    check = {"method": "http", "timeout_ms": 500, "path": "/health"}
    actions = c.reload(1, web_text((table("web", ["web1", "web2"], check=check),)))
    assert {a.target.address for a in actions if isinstance(a, StartCheck)} == {W1, W2}
    assert not any(isinstance(a, SetBackends) for a in actions)   # no gap in service
    assert member(c, "web", "web1").health.status is Status.UP


def test_reload_with_a_new_weight_sends_the_new_list():
    c = web_sim()
    c.run_until(1.0)
    hosts = dict(WEB, web2=("10.1.0.12", 5))
    actions = c.reload(1, web_text(hosts=hosts))
    assert SetBackends("www", ((W1, 80, 1), (W2, 80, 5)), False) in actions


def test_reload_drops_removed_hosts_and_ignores_their_running_check():
    c = web_sim()
    n1 = c.nodes[1]
    c.run_until(1.0)                    # both up
    n1.hung.add(W2)
    c.run_until(2.1)                    # web2's second check (2.01) never answers
    running = [a for a in n1.of(StartCheck) if a.target.address == W2][-1]
    actions = c.reload(1, web_text((table("web", ["web1"]),)))
    assert SetBackends("www", ((W1, 80, 1),), False) in actions
    # The run is cancelled and its slot freed; a result that still arrives is dropped.
    assert CancelCheck(running.check_id) in actions
    assert len(core(c).inflight) == 0
    c.run_until(2.2)
    assert c.call(1, "check_done", running.check_id, CheckOutcome(True, 0.01)) == []
    assert core(c).stale_results == 1


def test_reload_keeps_operator_overrides_unless_the_file_changed_the_item():
    c = web_sim()
    c.run_until(1.0)
    c.call(1, "health_enable", "host", "web1", False)
    reload_same(c)
    assert not core(c).enabled("host", "web1")
    hosts = dict(WEB, web1=("10.1.0.11", 1, True))       # the file now disables web1 itself
    c.reload(1, web_text(hosts=hosts))
    assert not core(c).enabled("host", "web1") and core(c).overrides == {}
    c.call(1, "health_enable", "host", "web1", True)          # operator overrides the file
    reload_same(c)
    assert core(c).enabled("host", "web1")


def test_reload_releases_the_demotion_of_a_removed_redirect():
    c = web_sim(redirects=(redirect(demote="lan"),))
    n1 = c.nodes[1]
    n1.up[W1] = n1.up[W2] = False
    c.run_until(1.0)
    actions = c.reload(1, web_text(redirects=()))
    assert released("lan") in actions


# ------------------------------------------------------------------ availability, logs


def test_availability_is_successes_over_all_checks_and_the_window_keeps_twenty():
    c = web_sim()
    n1 = c.nodes[1]
    c.run_until(4.5)                    # 3 successes
    n1.up[W1] = False
    c.run_until(4.9)                    # the next check starts at 6.03
    h = member(c, "web", "web1").health
    assert (h.checks, h.successes) == (3, 3) and h.availability() == 100.0
    c.run_until(6.1)                    # the failure at 6.04
    assert (h.checks, h.successes) == (4, 3) and h.availability() == 75.0
    c.run_until(200.0)
    assert len(h.window) == 20 and h.checks > 20
    assert h.availability() == pytest.approx(300 / h.checks)
    last = h.window[-1]
    assert (last.ok, last.latency_s, last.error) == (False, 0.01, "connect refused")


def test_ipv6_hosts_are_logged_with_brackets():
    hosts = {"v6": "2001:db8::11"}
    c = health_sim(health(hosts, (table("web", ["v6"]),), (redirect(address="2001:db8::80"),)))
    n1 = c.nodes[1]
    n1.up["2001:db8::11"] = False
    c.run_until(1.0)
    assert "host [2001:db8::11]:80 down: connect refused" in messages(c)


def test_certificate_warnings_are_logged_once_per_change():
    core = HealthCore(health_config(WEB, (table("tls", ["web1"], port=443, check={"method": "tls"}),)),
                      random.Random(1))
    (run,) = [a for a in core.start(0.0) if isinstance(a, StartCheck)]
    warning = CheckOutcome(True, 0.01, warning="certificate expires in 5 days")
    first = core.check_done(run.check_id, warning, 0.1)
    assert "check tls of 10.1.0.11:443: certificate expires in 5 days" in [
        a.message for a in first if isinstance(a, Log)]
    (run,) = core.poll(5.0)
    again = core.check_done(run.check_id, warning, 5.1)
    assert not any(isinstance(a, Log) and a.event == "health_warning" for a in again)
    assert core.members[("tls", "web1")].health.last_warning == "certificate expires in 5 days"


def test_start_is_implied_by_the_first_poll():
    core = HealthCore(health_config(WEB, (table("web", ["web1"]),), (redirect(),)), random.Random(1))
    assert core.next_deadline() is None
    actions = core.poll(0.0)
    assert SetBackends("www", (), False) in actions
    assert any(isinstance(a, StartCheck) for a in actions)


# ------------------------------------------------------------------ invariants under random operation

OPERATIONS = st.lists(st.tuples(
    st.sampled_from(["advance", "kill", "revive", "hang", "rst", "disable", "enable", "reload"]),
    st.sampled_from(["web1", "web2", "web3", "sorry"]),
    st.floats(0.05, 6.0)), min_size=1, max_size=40)


@settings(max_examples=80, deadline=None)
@given(ops=OPERATIONS, seed=st.integers(0, 2**16), max_in_flight=st.integers(1, 3))
def test_invariants_hold_under_any_sequence_of_events(ops, seed, max_in_flight):
    tables = (table("web", ["web1", "web2", "web3"], jitter_percent=20, fall=2),
              table("web-fast", ["web1"], interval_ms=700, jitter_percent=20),
              table("sorry", ["sorry"], port=8080, check=TCP))
    base = web_text(tables, (redirect(backup_table="sorry", demote="lan", delete_dead_states=True),
                             redirect("fast", "web-fast", port=81, demote="lan")),
                    max_in_flight=max_in_flight, rst_burst=2)
    smaller = web_text(tables[:1] + tables[2:], (redirect(backup_table="sorry", demote="lan"),),
                       max_in_flight=max_in_flight, rst_burst=2)
    c = Cluster({1: base}, seed=seed, check_latency=0.05)
    c.start(1)
    n1 = c.nodes[1]
    address = dict(WEB)
    for op, host, amount in ops:
        if op == "advance":
            c.run_until(c.now + amount)
        elif op == "kill":
            n1.up[address[host]] = False
        elif op == "revive":
            n1.up[address[host]] = True
            n1.hung.discard(address[host])
        elif op == "hang":
            n1.hung.add(address[host])
        elif op == "rst":
            c.call(1, "reset_seen", address[host], 8080 if host == "sorry" else 80)
        elif op in ("disable", "enable"):
            c.call(1, "health_enable", "host", host, op == "enable")
        elif op == "reload":
            c.reload(1, smaller if n1.text == base else base)
        hc = core(c)
        assert len(hc.inflight) <= max_in_flight
        # never two runs of one check at once (hung runs included)
        running = [r.target for r in hc.inflight.runs()]
        assert len(running) == len(set(running))
        # the last list sent is what the core would choose now, and lists only live hosts
        for name, rs in hc.redirects.items():
            expected = hc._choose(rs.config)
            assert (rs.backends, rs.using_backup) == expected[:2]
            last = backends(c, name)
            assert last is not None and (last.backends, last.using_backup) == expected[:2]
            tbl = rs.config.backup_table if rs.using_backup else rs.config.table
            live = {(m.address, m.port) for m in hc.members_of(tbl)
                    if m.health.status is Status.UP and hc._active(m)}
            assert {b[:2] for b in rs.backends} <= live
        # the demotion sent last per counter matches the redirects' state
        down = any(rs.status == "down" and rs.config.demote == "lan" for rs in hc.redirects.values())
        sent = [raised for counter, raised in demotes(c) if counter == "lan"]
        assert (sent[-1] if sent else False) == down
    # consecutive SetBackends of a redirect always differ ("fast" is left out: a reload
    # that removes and re-adds it rightly sends its list again)
    lists = [(a.backends, a.using_backup) for a in n1.of(SetBackends) if a.redirect == "www"]
    assert all(a != b for a, b in itertools.pairwise(lists))


def test_the_latency_of_successful_checks_is_counted_per_host():
    from meshd.health.model import HostHealth
    h = HostHealth(rise=2, fall=2)
    h.record(CheckOutcome(True, 0.004), 0.0, 0.0)
    h.record(CheckOutcome(True, 0.2), 1.0, 1.0)
    h.record(CheckOutcome(False, None, "timed out"), 2.0, 2.0)     # a failure: its timeout is no latency
    h.record(CheckOutcome(False, 3.0, "code 503"), 3.0, 3.0)
    c = h.latency.copy()
    assert c.count == 2 and abs(c.total - 0.204) < 1e-9
    assert h.checks == 4 and h.successes == 2


# ------------------------------------------------------------------ relays' query

def test_live_hosts_is_what_a_redirect_on_the_table_forwards_to():
    """The relay engine follows HealthCore.live_hosts: it must agree with SetBackends."""
    c = web_sim()
    assert core(c).live_hosts("web") == ()                 # unknown is not up
    c.run_until(1.0)
    assert core(c).live_hosts("web") == (("web1", W1, 80, 1), ("web2", W2, 80, 1))
    assert [h[1] for h in core(c).live_hosts("web")] == backend_addresses(c)
    c.nodes[1].up[W1] = False
    c.run_until(4.0)
    assert [h[1] for h in core(c).live_hosts("web")] == backend_addresses(c) == [W2]
    core(c).set_enabled("host", "web2", False, c.now)
    assert core(c).live_hosts("web") == ()
    core(c).set_enabled("host", "web2", True, c.now)
    core(c).set_enabled("table", "web", False, c.now)
    assert core(c).live_hosts("web") == () and core(c).live_hosts("nope") == ()
