"""The benchmark's report (netns-lab/meshlab/bench/): medians, ratios, target checks, the run
plan and the table.  Pure functions on synthetic run results: no root, no lab."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

NETNS_LAB = Path(__file__).resolve().parents[1] / "netns-lab"
if str(NETNS_LAB) not in sys.path:
    sys.path.insert(0, str(NETNS_LAB))

from meshlab.bench.measure import cpu_delta, stalled_sockets
from meshlab.bench.plan import fits_budget, plan_phases, plan_runs
from meshlab.bench.report import HEADERS, format_markdown, format_table, gap_series
from meshlab.bench.rows import (
    Target,
    build_rows,
    kinds_for_rows,
    median,
    ratio,
    round_sig,
)

BOTH = ["meshd", "reference"]


def _run(kind, system, rep, **metrics):
    return {"kind": kind, "system": system, "rep": rep, **metrics}


def _row(rows, key):
    (row,) = [r for r in rows if r["key"] == key]
    return row


# --------------------------------------------------------------------------- numbers


def test_median_of_odd_even_empty_and_infinite():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([]) is None
    assert median([None, 5.0]) == 5.0
    assert median([1.0, math.inf, math.inf]) == math.inf        # most runs never got there


def test_ratio_is_meshd_over_reference_and_none_when_it_cannot_be_computed():
    assert ratio(300.0, 400.0) == pytest.approx(0.75)
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(1.0, math.inf) is None
    assert ratio(math.inf, 2.0) is None


def test_round_sig_keeps_four_significant_digits():
    assert round_sig(0.123456) == 0.1235
    assert round_sig(123456.7) == 123457
    assert round_sig(423.46) == 423.5
    assert round_sig(0) == 0
    assert round_sig(None) is None


# --------------------------------------------------------------------------- targets


def test_ratio_targets_at_and_beyond_the_bound():
    t = Target("ratio", "<=", 0.6)
    assert t.met(meshd=100.0, ratio=0.6) is True
    assert t.met(meshd=100.0, ratio=0.61) is False
    assert t.met(meshd=100.0, ratio=None) is None                # no reference: unknown, not met
    assert Target("ratio", ">=", 1.5).met(None, 1.49) is False
    assert Target("ratio", ">=", 1.5).met(None, 1.5) is True


def test_meshd_targets_and_never_converged():
    t = Target("meshd", "<=", 5.0)
    assert t.met(4.9, None) is True
    assert t.met(5.1, 0.1) is False
    assert t.met(math.inf, None) is False                       # stuck fails a time bound
    assert t.met(None, None) is None


def test_target_descriptions():
    assert Target("ratio", "<=", 1.0).describe("ms") == "ratio <= 1"
    assert Target("ratio", ">=", 1.5).describe("entries/s") == "ratio >= 1.5"
    assert Target("meshd", "<=", 30.0).describe("s") == "meshd <= 30 s"
    assert Target("meshd", "<=", 1.2).describe("x") == "meshd <= 1.2"
    assert Target("meshd", ">=", 1.0).describe("fraction") == "meshd >= 1"
    with pytest.raises(ValueError):
        Target("reference", "<=", 1.0)


# --------------------------------------------------------------------------- rows


def _gap_results():
    res = []
    for rep, (m_take, r_take) in enumerate([(250.0, 330.0), (270.0, 350.0), (990.0, 340.0)], 1):
        res.append(_run("gap0", "meshd", rep, takeover_ms=m_take, median_gap_ms=420.0 + rep,
                        max_gap_ms=430.0, survived=100, flows=100))
        res.append(_run("gap0", "reference", rep, takeover_ms=r_take, median_gap_ms=423.0,
                        max_gap_ms=440.0, survived=100, flows=100))
    for rep in (1, 2, 3):
        res.append(_run("gap200k", "meshd", rep, median_gap_ms=500.0, max_gap_ms=600.0, survived=100, flows=100))
        res.append(_run("gap200k", "reference", rep, median_gap_ms=1000.0, max_gap_ms=3000.0,
                        survived=99 if rep == 2 else 100, flows=100))
    return res


def test_rows_hold_medians_ratio_target_and_met():
    rows = build_rows(_gap_results(), BOTH, rows=[1, 2])
    take = _row(rows, "takeover_ms")
    assert {k for k in ("name", "unit", "meshd", "reference", "ratio", "target", "met")} <= set(take)
    assert take["meshd"] == 270.0              # the outlier 990 does not move the median
    assert take["reference"] == 340.0
    assert take["ratio"] == pytest.approx(270 / 340, abs=1e-3)
    assert take["target"] == "ratio <= 1" and take["met"] is True
    assert take["samples"] == {"meshd": [250.0, 270.0, 990.0], "reference": [330.0, 350.0, 340.0]}
    big = _row(rows, "gap_median_200k")
    assert big["ratio"] == 0.5 and big["met"] is True
    assert "99" not in big.get("note", "") and "1 of 100 flows died in run 2" in big["note"]


def test_gap_growth_row_is_meshd_only_from_its_own_medians():
    rows = build_rows(_gap_results(), BOTH, rows=[2])
    growth = _row(rows, "gap_growth")
    assert growth["meshd"] == pytest.approx(500.0 / 422.0, abs=1e-3)
    assert growth["reference"] is None and growth["ratio"] is None
    assert growth["met"] is True               # 1.18 <= 1.2
    slow = [dict(r, median_gap_ms=600.0) if r["kind"] == "gap200k" else r for r in _gap_results()]
    assert _row(build_rows(slow, BOTH, rows=[2]), "gap_growth")["met"] is False


def test_a_failed_run_is_an_error_in_its_rows_and_leaves_the_others():
    res = _gap_results()
    res.append(_run("gap0", "reference", 4, error="fw2 did not take every virtual address"))
    rows = build_rows(res, BOTH, rows=[1, 2])
    take = _row(rows, "takeover_ms")
    assert "reference run 4: fw2 did not take every virtual address" in take["error"]
    assert take["reference"] == 340.0           # the three good runs
    assert "error" not in _row(rows, "gap_median_200k")


def test_missing_system_gives_null_and_unknown_met():
    res = [r for r in _gap_results() if r["system"] == "meshd"]
    take = _row(build_rows(res, ["meshd"], rows=[1]), "takeover_ms")
    assert take["meshd"] == 270.0 and take["reference"] is None
    assert take["ratio"] is None and take["met"] is None


def test_loss_rows_count_a_stuck_reference_as_a_result():
    res = [_run("loss20", "meshd", 1, fraction=1.0, converge_s=0.4, give_up_s=120.0),
           _run("loss20", "reference", 1, fraction=0.99964, converge_s=None, give_up_s=120.0)]
    rows = build_rows(res, BOTH, rows=[6])
    conv = _row(rows, "loss20_converge_s")
    assert conv["meshd"] == 0.4 and conv["met"] is True
    assert conv["reference"] is None and conv["samples"]["reference"] == [None]
    assert "reference did not converge within 120 s (fraction replicated 0.99964)" in conv["note"]
    assert "run once per system" in conv["note"]
    frac = _row(rows, "loss20_fraction")
    assert frac["reference"] == 0.99964 and frac["met"] is True
    assert "stuck" in format_table(rows)
    res[0]["converge_s"] = None
    assert _row(build_rows(res, BOTH, rows=[6]), "loss20_converge_s")["met"] is False


def test_three_nodes_row_says_why_the_reference_has_none():
    res = [_run("three", "meshd", 1, lag_s=0.7, cpu_s=5.0)]
    row = _row(build_rows(res, BOTH, rows=[7]), "three_nodes_lag_s")
    assert row["meshd"] == 0.7 and row["reference"] is None and row["met"] is None
    assert "one sequence stream and no node id" in row["note"]


def test_commit_rate_target_is_a_minimum_ratio():
    res = [_run("repl", "meshd", 1, commit_s=0.5, commit_rate=200000, lag_s=0.1, cpu_s=2.0, rss_per_entry=300.0),
           _run("repl", "reference", 1, commit_s=1.0, commit_rate=100000, lag_s=0.2, cpu_s=1.0, rss_per_entry=400.0)]
    rows = build_rows(res, BOTH, rows=[3, 4, 5])
    assert _row(rows, "commit_rate")["met"] is True and _row(rows, "commit_rate")["ratio"] == 2.0
    assert _row(rows, "commit_s")["target"] is None and _row(rows, "commit_s")["met"] is None
    assert _row(rows, "replication_cpu_s")["met"] is False
    assert _row(rows, "rss_100k")["ratio"] == 0.75
    assert _row(rows, "rss_500k")["meshd"] is None       # no 500k run
    assert [r["issue_row"] for r in rows] == [3, 3, 4, 4, 5, 5]


# --------------------------------------------------------------------------- plan


def test_plan_alternates_systems_and_runs_slow_rows_once():
    plan = plan_runs(list(range(1, 8)), BOTH, reps=3)
    assert plan[:8] == [("gap0", "meshd", 1), ("gap0", "reference", 1), ("gap100k", "meshd", 1),
                        ("gap100k", "reference", 1), ("gap200k", "meshd", 1), ("gap200k", "reference", 1),
                        ("repl", "meshd", 1), ("repl", "reference", 1)]
    count = {}
    for kind, system, _ in plan:
        count[(kind, system)] = count.get((kind, system), 0) + 1
    for kind in ("gap0", "gap100k", "gap200k", "repl"):
        assert count[(kind, "meshd")] == count[(kind, "reference")] == 3
    for kind in ("mem500k", "loss20", "loss50"):
        assert count[(kind, "meshd")] == count[(kind, "reference")] == 1
    assert count[("three", "meshd")] == 3 and ("three", "reference") not in count
    assert plan[8] == ("three", "meshd", 1)       # its lab has a third firewall: last of a repetition
    assert [k for k, _, _ in plan[9:15]] == ["mem500k", "mem500k", "loss20", "loss20", "loss50", "loss50"]


def test_only_repetitions_after_the_first_can_be_cut_by_the_budget():
    phases = plan_phases(list(range(1, 8)), BOTH, reps=3)
    assert [(p.name, p.optional) for p in phases] == [
        ("repetition 1", False), ("once per system", False), ("repetition 2", True), ("repetition 3", True)]
    assert fits_budget(elapsed=400, phase_estimate=140, budget_s=540) is True
    assert fits_budget(elapsed=401, phase_estimate=140, budget_s=540) is False
    assert fits_budget(elapsed=9999, phase_estimate=140, budget_s=None) is True
    assert [p.name for p in plan_phases([6], BOTH, reps=3)] == ["once per system"]


def test_plan_runs_only_what_the_rows_need():
    assert kinds_for_rows([1]) == ["gap0", "gap100k", "gap200k"]    # every kill times a takeover
    assert kinds_for_rows([4]) == ["repl"]
    assert kinds_for_rows([5]) == ["repl", "mem500k"]
    assert kinds_for_rows([6, 7]) == ["loss20", "loss50", "three"]
    assert plan_runs([7], ["reference"], 2) == []
    assert plan_runs([1], ["meshd"], 1) == [("gap0", "meshd", 1), ("gap100k", "meshd", 1), ("gap200k", "meshd", 1)]


# --------------------------------------------------------------------------- output


def test_table_formats_units_and_marks_unmet_targets():
    res = _gap_results()
    res += [_run("repl", "meshd", 1, commit_s=2.0, commit_rate=50000, lag_s=0.1, cpu_s=2.0, rss_per_entry=300.0),
            _run("repl", "reference", 1, commit_s=1.0, commit_rate=100000, lag_s=0.2, cpu_s=1.0,
                 rss_per_entry=400.0)]
    text = format_table(build_rows(res, BOTH, rows=[1, 4]))
    lines = text.splitlines()
    assert lines[0].split() == HEADERS
    rate = [ln for ln in lines if "commit rate" in ln][0]
    assert "50,000" in rate and "100,000" in rate and "0.50" in rate and rate.rstrip().endswith("NO")
    take = [ln for ln in lines if "takeover" in ln][0]
    assert "270" in take and "340" in take and take.rstrip().endswith("yes")


def test_markdown_has_a_table_and_the_machine():
    rows = build_rows(_gap_results(), BOTH, rows=[1])
    machine = {"cpu": "Test CPU", "cores": 2, "kernel": "6.1", "python": "3.11.7",
               "keepalived": "Keepalived v2.2.7", "conntrackd": "conntrackd v1.4.7", "date": "2025-01-01"}
    text = format_markdown(rows, machine, {"reps": 3, "systems": BOTH, "seconds": 500, "argv": "--json"})
    lines = text.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 3 and table[1].startswith("|---")
    assert "| 1 | takeover" in table[2] and "| 270 | 340 |" in table[2]
    for text_part in ("CPU: Test CPU", "cores: 2", "Keepalived v2.2.7", "conntrackd v1.4.7", "repetitions: 3"):
        assert text_part in text


def test_gap_series_for_the_plot():
    series = gap_series(_gap_results(), "reference")
    assert series == [(0, 423.0, 440.0), (100_000, None, None), (200_000, 1000.0, 3000.0)]


# --------------------------------------------------------------------------- measurement helpers


SS_OUTPUT = """\
0      0      192.0.2.100:40001 198.51.100.100:7010
0      16     192.0.2.100:40002 198.51.100.100:7010 timer:(on,180ms,0)
0      16     192.0.2.100:40003 198.51.100.100:7010 timer:(on,1.2sec,3)
0      16     192.0.2.100:40004 198.51.100.100:7010 timer:(on,396ms,1)
0      0      192.0.2.100:40005 198.51.100.100:7010 timer:(keepalive,9min,0)
"""


def test_stalled_sockets_are_the_retransmitting_ones():
    assert stalled_sockets(SS_OUTPUT) == 2          # in flight (retransmits 0) is running
    assert stalled_sockets("") == 0


def test_cpu_delta_counts_new_processes_from_zero():
    assert cpu_delta({10: 1.0, 11: 2.0}, {10: 1.5, 11: 2.25, 12: 0.5}) == pytest.approx(1.25)


def test_takeover_row_takes_every_kill():
    results = [{"kind": k, "system": s, "rep": 1, "takeover_ms": v, "median_gap_ms": 400.0, "max_gap_ms": 400.0}
               for k, s, v in (("gap0", "meshd", 300.0), ("gap100k", "meshd", 200.0), ("gap200k", "meshd", 210.0),
                               ("gap0", "reference", 250.0), ("gap100k", "reference", 260.0),
                               ("gap200k", "reference", 270.0))]
    row = next(r for r in build_rows(results, ["meshd", "reference"], [1]) if r["key"] == "takeover_ms")
    assert row["meshd"] == 210 and row["reference"] == 260 and row["met"] is True


def test_churn_rows_take_each_rate_and_the_highest_rate_sustained():
    def churn(kind, system, rate, cpu, sustained):
        return _run(kind, system, 1, rate=rate, cpu_pct=cpu, cpu_pct_fw1=cpu / 2, cpu_pct_fw2=cpu / 2,
                    sync_packets_per_s=800, sync_bytes_per_s=10**6, overruns=0 if sustained else 12,
                    copy_errors=0, sustained_rate=rate if sustained else 0)
    results = [churn("churn5k", "meshd", 5000, 20.0, True), churn("churn5k", "reference", 5000, 10.0, True),
               churn("churn10k", "meshd", 9990, 40.0, True), churn("churn10k", "reference", 10000, 20.0, True),
               churn("churn20k", "meshd", 15000, 90.0, False), churn("churn20k", "reference", 20000, 40.0, True)]
    rows = build_rows(results, BOTH, rows=[8])
    cpu = _row(rows, "churn10k_cpu_pct")
    assert (cpu["meshd"], cpu["reference"], cpu["ratio"], cpu["met"]) == (40.0, 20.0, 2.0, False)
    best = _row(rows, "churn_sustained")
    assert (best["meshd"], best["reference"]) == (9990, 20000)       # the maximum, not the median
    assert best["target"] == "ratio >= 1" and best["met"] is False
    assert _row(rows, "churn20k_overruns")["meshd"] == 12
