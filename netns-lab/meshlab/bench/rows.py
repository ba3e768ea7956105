"""The rows of the benchmark's table: which runs make which issue row, and what "met" means.

Owns: `Target`, `Row` and `ROWS` (each row's metric, the run kinds it takes its samples
from, its target), `kinds_for_rows` (the runs that the selected issue rows need), and
`build_rows`: the median over the repetitions, the ratio meshd / reference, the target
check, the samples, and the errors and notes a row carries.

Must not: run, time or print anything.  Pure functions of the runs' result dicts
(tests/test_bench_report.py); the text forms of the rows are in `report`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .load import CHURN_RATES, GIVE_UP_S, KIND_ORDER, ONCE_KINDS, RELAY_CLIENTS

DIRECT_NOTE = "the load generator straight to one backend, no relay (measured in meshd's run)"
THREE_NODES_NOTE = ("no reference: conntrackd FTFW has one sequence stream and no node id in its "
                    "header, so it replicates between two nodes only")


@dataclass(frozen=True)
class Target:
    """A target: `subject` ("ratio" = meshd / reference, or "meshd") `op` `value`."""

    subject: str
    op: str
    value: float

    def __post_init__(self):
        if self.subject not in ("ratio", "meshd") or self.op not in ("<=", ">="):
            raise ValueError(f"bad target {self.subject} {self.op} {self.value}")

    def describe(self, unit: str = "") -> str:
        text = f"{self.subject} {self.op} {self.value:g}"
        return text + (f" {unit}" if self.subject == "meshd" and unit not in ("", "x", "fraction") else "")

    def met(self, meshd: float | None, ratio: float | None) -> bool | None:
        """True/False, or None when the value it needs is missing."""
        v = ratio if self.subject == "ratio" else meshd
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return v <= self.value if self.op == "<=" else v >= self.value


@dataclass(frozen=True)
class Row:
    """One row of the table: `metric` of the runs of `kind`, median over repetitions.

    stuck_is_result: a None sample means "did not get there in time" (a result, counted
    as infinitely long), not a missing measurement.  derive: a row computed from the
    medians of other rows (meshd only).
    """

    issue_row: int
    key: str
    name: str
    unit: str
    kind: str | tuple[str, ...] | None      # the run kind(s) whose results it takes
    metric: str
    target: Target | None = None
    stuck_is_result: bool = False
    derive: Callable[[dict[str, float | None]], float | None] | None = None
    reference_note: str | None = None
    # How the runs' values make the row's: the median, or (a highest rate reached) the maximum.
    aggregate: str = "median"


def _relay_rows() -> tuple[Row, ...]:
    """Row 9 (issue 15): per point of load (keep-alive or a new connection per request, plain
    or TLS, 1/50/200 clients) requests/s, p50 and p99, the relay process's CPU per request;
    wrk straight to a backend.  The issue's targets are on keep-alive: at least half
    HAProxy's requests/s, p99 within twice HAProxy's."""
    out = []
    words = {"ka": "keep-alive", "new": "new connection per request"}
    for sec in ("plain", "tls"):
        for conn in ("ka", "new"):
            for n in RELAY_CLIENTS:
                key, what = f"{conn}_{sec}_c{n}", f"HTTP relay, {words[conn]}, {sec}, {n} client{'s' * (n > 1)}"
                ka = conn == "ka"
                out += [Row(9, f"relay_{key}_rps", f"{what}: requests/s", "requests/s", "relay", f"{key}_rps",
                            Target("ratio", ">=", 0.5) if ka else None),
                        Row(9, f"relay_{key}_p50", f"{what}: p50 latency", "µs", "relay", f"{key}_p50_us"),
                        Row(9, f"relay_{key}_p99", f"{what}: p99 latency", "µs", "relay", f"{key}_p99_us",
                            Target("ratio", "<=", 2.0) if ka else None),
                        # (the figure a shared machine disturbs least: the relay's own CPU time)
                        Row(9, f"relay_{key}_cpu", f"{what}: relay process CPU per request", "µs", "relay",
                            f"{key}_cpu_us_per_req")]
    for conn in ("ka", "new"):
        for n in RELAY_CLIENTS:
            out.append(Row(9, f"relay_direct_{conn}_c{n}_rps", f"wrk direct to a backend, {words[conn]}, {n} "
                           f"client{'s' * (n > 1)}: requests/s", "requests/s", "relay", f"direct_{conn}_c{n}_rps",
                           reference_note=DIRECT_NOTE))
    return tuple(out)


def _gap_growth(medians: dict[str, float | None]) -> float | None:
    big, empty = medians.get("gap_median_200k"), medians.get("gap_median_0")
    if big is None or not empty:
        return None
    return big / empty


ROWS: tuple[Row, ...] = (
    # Every flow-gap run kills the master the same way: all of them time the takeover
    # (the table size changes neither system's path to the addresses).
    Row(1, "takeover_ms", "takeover after the master is killed (100 ms adverts)", "ms",
        ("gap0", "gap100k", "gap200k"), "takeover_ms", Target("ratio", "<=", 1.0)),
    Row(2, "gap_median_0", "flow gap median, empty table", "ms", "gap0", "median_gap_ms",
        Target("ratio", "<=", 1.0)),
    Row(2, "gap_max_0", "flow gap max, empty table", "ms", "gap0", "max_gap_ms", Target("ratio", "<=", 1.0)),
    Row(2, "gap_median_100k", "flow gap median, 100k entries", "ms", "gap100k", "median_gap_ms",
        Target("ratio", "<=", 0.6)),
    Row(2, "gap_max_100k", "flow gap max, 100k entries", "ms", "gap100k", "max_gap_ms",
        Target("ratio", "<=", 0.6)),
    Row(2, "gap_median_200k", "flow gap median, 200k entries", "ms", "gap200k", "median_gap_ms",
        Target("ratio", "<=", 0.6)),
    Row(2, "gap_max_200k", "flow gap max, 200k entries", "ms", "gap200k", "max_gap_ms",
        Target("ratio", "<=", 0.6)),
    Row(2, "gap_growth", "meshd flow gap median, 200k entries / empty table", "x", None, "",
        Target("meshd", "<=", 1.2), derive=_gap_growth,
        reference_note="meshd only: its gap at 200k against its own empty-table gap"),
    Row(3, "replication_lag_s", "replication lag after injecting 100k entries", "s", "repl", "lag_s",
        Target("ratio", "<=", 1.0)),
    Row(3, "replication_cpu_s", "daemon CPU for replicating 100k entries, both nodes", "s", "repl", "cpu_s",
        Target("ratio", "<=", 1.0)),
    Row(4, "commit_s", "commit of 100k external entries into the kernel", "s", "repl", "commit_s"),
    Row(4, "commit_rate", "commit rate, 100k external entries", "entries/s", "repl", "commit_rate",
        Target("ratio", ">=", 1.5)),
    Row(5, "rss_100k", "daemon RSS per cached entry, 100k entries", "bytes", "repl", "rss_per_entry",
        Target("ratio", "<=", 2.0)),
    Row(5, "rss_500k", "daemon RSS per cached entry, 500k entries", "bytes", "mem500k", "rss_per_entry",
        Target("ratio", "<=", 2.0)),
    Row(6, "loss20_fraction", "20% loss on the sync link: fraction of 50k replicated", "fraction", "loss20",
        "fraction", Target("meshd", ">=", 1.0)),
    Row(6, "loss20_converge_s", "20% loss on the sync link: time to converge", "s", "loss20", "converge_s",
        Target("meshd", "<=", 5.0), stuck_is_result=True),
    Row(6, "loss50_fraction", "50% loss on the sync link: fraction of 50k replicated", "fraction", "loss50",
        "fraction", Target("meshd", ">=", 1.0)),
    Row(6, "loss50_converge_s", "50% loss on the sync link: time to converge", "s", "loss50", "converge_s",
        Target("meshd", "<=", 30.0), stuck_is_result=True),
    Row(7, "three_nodes_lag_s", "three nodes: replication lag of 100k entries to two peers", "s", "three",
        "lag_s", reference_note=THREE_NODES_NOTE),
    *(row for kind, rate in CHURN_RATES.items() for row in (
        Row(8, f"{kind}_rate", f"churn {rate // 1000}k flows/s: new flows/s the generators reached", "flows/s",
            kind, "rate"),
        Row(8, f"{kind}_cpu_pct", f"churn {rate // 1000}k flows/s: daemon CPU, both nodes", "% of a core",
            kind, "cpu_pct", Target("ratio", "<=", 1.0)),
        Row(8, f"{kind}_cpu_pct_fw1", f"churn {rate // 1000}k flows/s: daemon CPU, fw1 (master)", "% of a core",
            kind, "cpu_pct_fw1"),
        Row(8, f"{kind}_cpu_pct_fw2", f"churn {rate // 1000}k flows/s: daemon CPU, fw2 (backup)", "% of a core",
            kind, "cpu_pct_fw2"),
        Row(8, f"{kind}_packets", f"churn {rate // 1000}k flows/s: packets/s fw1 sent on the sync link",
            "packets/s", kind, "sync_packets_per_s"),
        Row(8, f"{kind}_bytes", f"churn {rate // 1000}k flows/s: bytes/s fw1 sent on the sync link", "bytes/s",
            kind, "sync_bytes_per_s"),
        Row(8, f"{kind}_overruns", f"churn {rate // 1000}k flows/s: event-socket overruns, both nodes", "drops",
            kind, "overruns"),
        Row(8, f"{kind}_lost", f"churn {rate // 1000}k flows/s: flows lost or stale in the peer's copy",
            "flows", kind, "copy_errors"),
    )),
    Row(8, "churn_sustained", "highest churn rate sustained (no overrun, no flow lost or stale)", "flows/s",
        tuple(CHURN_RATES), "sustained_rate", Target("ratio", ">=", 1.0), aggregate="max"),
    *_relay_rows(),
)


def _kinds(kind: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if kind is None else (kind,) if isinstance(kind, str) else kind


def kinds_for_rows(rows: list[int]) -> list[str]:
    """The run kinds the selected issue rows need, in run order."""
    needed = {k for r in ROWS if r.issue_row in rows for k in _kinds(r.kind)}
    if 2 in rows:
        needed |= {"gap0", "gap100k", "gap200k"}
    return [k for k in KIND_ORDER if k in needed]


# ---------------------------------------------------------------------- medians, ratios, targets


def median(values: list[float]) -> float | None:
    """Median of the values (inf allowed: a run that never got there); None when empty."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.median(sorted(vals))


def ratio(meshd: float | None, reference: float | None) -> float | None:
    """meshd / reference; None when either is missing, infinite, or the reference is 0."""
    if meshd is None or reference is None or math.isinf(meshd) or math.isinf(reference) or reference == 0:
        return None
    return meshd / reference


def _finite(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isinf(v)) else v


def round_sig(v: float | None, digits: int = 4) -> float | None:
    """v with `digits` significant digits (integers stay integral)."""
    if v is None or not math.isfinite(v) or v == 0:
        return v
    return round(v, max(0, digits - 1 - math.floor(math.log10(abs(v)))))


def build_rows(results: list[dict[str, Any]], systems: list[str], rows: list[int] | None = None,
               row_specs: tuple[Row, ...] = ROWS) -> list[dict[str, Any]]:
    """The report rows from the runs' results.

    results: one dict per run: {"kind", "system", "rep", and either the metrics or "error"}.
    Every row: {"name", "unit", "meshd", "reference", "ratio", "target", "met"} plus
    "key", "issue_row", "samples" {system: [values]}, and "error" / "note" when there is
    something to say.  A system that did not run has null; so has a run that failed.
    """
    out: list[dict[str, Any]] = []
    medians: dict[str, float | None] = {}
    for spec in row_specs:
        if rows is not None and spec.issue_row not in rows:
            continue
        row: dict[str, Any] = {"key": spec.key, "issue_row": spec.issue_row, "name": spec.name,
                               "unit": spec.unit}
        samples: dict[str, list] = {}
        errors: list[str] = []
        notes: list[str] = []
        values: dict[str, float | None] = {"meshd": None, "reference": None}
        if spec.derive is not None:
            values["meshd"] = spec.derive(medians) if "meshd" in systems else None
        else:
            for system in ("meshd", "reference"):
                runs = [r for r in results if r["kind"] in _kinds(spec.kind) and r["system"] == system]
                ok = [r for r in runs if "error" not in r]
                errors += [f"{system} run {r.get('rep', '?')}: {r['error']}" for r in runs if "error" in r]
                got = [r.get(spec.metric) for r in ok]
                if spec.stuck_is_result:
                    got = [math.inf if v is None else v for v in got]
                else:
                    got = [v for v in got if v is not None]
                if runs:
                    samples[system] = [None if (isinstance(v, float) and math.isinf(v))
                                       else round_sig(v, 6 if spec.unit == "fraction" else 4) for v in got]
                values[system] = (max(got) if got else None) if spec.aggregate == "max" else median(got)
                lost = [r for r in ok if r.get("survived") is not None and r.get("survived") < r.get("flows", 0)]
                if lost:
                    notes.append(f"{system}: " + ", ".join(f"{r['flows'] - r['survived']} of {r['flows']} flows "
                                                            f"died in run {r.get('rep', '?')}" for r in lost)
                                 + " (gaps are over the survivors)")
                if spec.stuck_is_result and any(math.isinf(v) for v in got):
                    stuck = [r for r in ok if r.get(spec.metric) is None]
                    notes.append(f"{system} did not converge within {stuck[0].get('give_up_s', GIVE_UP_S):g} s "
                                 f"(fraction replicated {stuck[0].get('fraction')})")
            if any(k in ONCE_KINDS for k in _kinds(spec.kind)):
                notes.append("run once per system, also in a full run")
        medians[spec.key] = _finite(values["meshd"])
        meshd_v, ref_v = _finite(values["meshd"]), _finite(values["reference"])
        r = ratio(values["meshd"], values["reference"])
        if spec.reference_note:
            ref_v, r = None, None
            if "reference" in systems:
                notes.append(spec.reference_note)
        digits = 6 if spec.unit == "fraction" else 4      # 18 of 50k missing must still show
        row.update({"meshd": round_sig(meshd_v, digits), "reference": round_sig(ref_v, digits),
                    "ratio": round_sig(r, 3),
                    "target": spec.target.describe(spec.unit) if spec.target else None,
                    # (an infinite meshd value, "never converged", fails a "meshd <=" target)
                    "met": spec.target.met(values["meshd"], r) if spec.target else None})
        if samples:
            row["samples"] = samples
        if errors:
            row["error"] = "; ".join(errors)
        if notes:
            row["note"] = "; ".join(notes)
        out.append(row)
    return out
