"""meshd against keepalived + conntrackd, side by side on the same lab (issue 4).

The parts, top to bottom:

  * rows and targets (`ROWS`, `Target`): what each row measures, from which run,
    and what "met" means;
  * the report (`build_rows`, `format_table`, `format_markdown`): medians,
    ratios meshd / reference, target checks.  Pure functions, unit-tested;
  * measurements on /proc and in namespaces (CPU, RSS, kernel table size, flow
    sockets);
  * the runs (`run_survival`, `run_replication`, `run_loss`, `run_three_nodes`):
    one measured run of one system, started and stopped by the caller;
  * the plan and the session (`plan_runs`, `BenchSession`, `run_benchmark`):
    which runs, in which order (the systems alternate), one lab reused between
    runs and always taken down.

A run that fails records its error in its rows; the others go on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from .. import meshd_node as md
from .. import scenarios as sc
from ..flows import summarize
from ..procs import Procs
from ..systems import make_system, reference_module
from ..topology import LAN_VIRTUAL, SRV_VIRTUAL, VIRTUAL_ADDRESSES, Lab, LabError, nsexec
from ..watch import start_watch

# ---------------------------------------------------------------------- the load

FLOWS = 100                          # live TCP flows of the gap rows
GAP_SIZES = (0, 100_000, 200_000)    # preloaded entries of the gap rows
REPLICATION_ENTRIES = 100_000
REPLICATION_RATE = 23_000            # entries/s, as the anchor measured conntrackd
MEMORY_BIG = 500_000
LOSS_ENTRIES = 50_000
LOSS_RATE = 25_000
LOSS_PERCENTS = (20, 50)
GIVE_UP_S = 120.0                    # loss rows: the time before a system is called stuck
REPLICATION_TIMEOUT_S = 60.0         # other rows: both systems normally need well under 5 s
FLOWS_REPLICATED_S = 15.0            # the live flows' entries on fw2 before the kill
TAKEOVER_TIMEOUT_S = 20.0            # a takeover normally takes well under 5 s, even at 200k
# Rows 3-5 and 7 run meshd with commit = "takeover": a backup then only caches the peers'
# entries, as conntrackd does, and row 4's commit really creates every entry.  (The gap
# rows use the default, "continuous".)
CACHE_ONLY_COMMIT = "takeover"
CONNTRACK_MAX = 1_200_000            # root namespace, while the benchmark runs
DEFAULT_REPS = 3
DEFAULT_BUDGET_S = 540.0             # the whole default run must end within 10 minutes
DEFAULT_PREFIX = "bench-"
THREE_NODES_NOTE = ("no reference: conntrackd FTFW has one sequence stream and no node id in its "
                    "header, so it replicates between two nodes only")


# ---------------------------------------------------------------------- rows and targets


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
)

# Runs of each kind: run once per system (even in a full run) or once per repetition.
ONCE_KINDS = ("mem500k", "loss20", "loss50")
REPEATED_KINDS = ("gap0", "gap100k", "gap200k", "repl", "three")
KIND_ORDER = ("gap0", "gap100k", "gap200k", "repl", "mem500k", "loss20", "loss50", "three")
MESHD_ONLY_KINDS = ("three",)


def _kinds(kind: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if kind is None else (kind,) if isinstance(kind, str) else kind


def kinds_for_rows(rows: list[int]) -> list[str]:
    """The run kinds the selected issue rows need, in run order."""
    needed = {k for r in ROWS if r.issue_row in rows for k in _kinds(r.kind)}
    if 2 in rows:
        needed |= {"gap0", "gap100k", "gap200k"}
    return [k for k in KIND_ORDER if k in needed]


@dataclass(frozen=True)
class Phase:
    """Runs done together: one repetition of the repeated kinds, or the once-only kinds.

    optional: skipped when the time budget cannot fit it (repetitions after the first).
    """

    name: str
    runs: tuple[tuple[str, str, int], ...]          # (kind, system, repetition)
    optional: bool = False


def plan_phases(rows: list[int], systems: list[str], reps: int) -> list[Phase]:
    """The runs in order: repetition 1, the once-only runs, then repetitions 2..reps.

    Within a repetition every kind runs once per system in turn (meshd, reference, meshd,
    reference...), so slow drifts of the machine hit both alike; the three-node runs come
    last (their lab has a third firewall).  The once-only kinds (500k memory, loss: the
    reference may need its whole 120 s) come second, so that a time budget can only ever
    cut extra repetitions, never a row.
    """
    kinds = kinds_for_rows(rows)

    def runs(selected, rep: int) -> tuple[tuple[str, str, int], ...]:
        return tuple((kind, system, rep) for kind in selected for system in systems
                     if not (kind in MESHD_ONLY_KINDS and system != "meshd"))

    repeated = [k for k in kinds if k in REPEATED_KINDS]
    once = [k for k in kinds if k in ONCE_KINDS]
    phases = []
    for rep in range(1, reps + 1):
        r = runs(repeated, rep)
        if r:
            phases.append(Phase(f"repetition {rep}", r, optional=rep > 1))
        if rep == 1 and runs(once, 1):
            phases.append(Phase("once per system", runs(once, 1)))
    return phases


def plan_runs(rows: list[int], systems: list[str], reps: int) -> list[tuple[str, str, int]]:
    """Every run of plan_phases, in order."""
    return [run for phase in plan_phases(rows, systems, reps) for run in phase.runs]


def fits_budget(elapsed: float, phase_estimate: float, budget_s: float | None) -> bool:
    """Whether a phase expected to take phase_estimate seconds still ends within the budget."""
    return budget_s is None or elapsed + phase_estimate <= budget_s


# ---------------------------------------------------------------------- the report


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
                values[system] = median(got)
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


def format_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms" or unit == "bytes":
        return f"{v:,.0f}"
    if unit == "entries/s":
        return f"{v:,.0f}"
    if unit == "fraction":
        return f"{v:.5f}".rstrip("0").rstrip(".") if v < 1 else "1"
    if unit in ("s", "x"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return f"{v:g}"


def _met_text(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def _table_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    cells = []
    for r in rows:
        ref = format_value(r["reference"], r["unit"])
        if r["reference"] is None and "reference" in (r.get("samples") or {}) and \
                any(v is None for v in r["samples"]["reference"]):
            ref = "stuck"
        cells.append([str(r["issue_row"]), r["name"], r["unit"], format_value(r["meshd"], r["unit"]), ref,
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"] or "-",
                      _met_text(r["met"]) + (" (error)" if r.get("error") else "")])
    return cells


HEADERS = ["#", "what", "unit", "meshd", "reference", "ratio", "target", "met"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table, then the notes and errors."""
    cells = [HEADERS] + _table_cells(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    right = {0, 3, 4, 5}
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i])
                               for i in range(len(c))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += _footnotes(rows)
    return "\n".join(lines)


def _footnotes(rows: list[dict[str, Any]]) -> list[str]:
    """Notes (each text once, with the rows it is about), then errors."""
    by_text: dict[str, list[str]] = {}
    for r in rows:
        for text in filter(None, (r.get("note") or "").split("; ")):
            by_text.setdefault(text, []).append(r["name"])
    out = [f"note: {text} ({'; '.join(names)})" for text, names in by_text.items()]
    for r in rows:
        if r.get("error"):
            out.append(f"error ({r['name']}): {r['error']}")
    return out


def format_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], settings: dict[str, Any]) -> str:
    """The rows and the machine as a markdown section for docs/benchmarks.md."""
    out = [f"Run of {machine.get('date', '?')}: `netns-lab/bench {settings.get('argv', '')}`".rstrip(), "",
           "| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    for c in _table_cells(rows):
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in c) + " |")
    notes = _footnotes(rows)
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
    out += ["", "Machine:", ""]
    for key, label in (("cpu", "CPU"), ("cores", "cores"), ("memory", "memory"), ("kernel", "kernel"),
                       ("python", "Python"), ("keepalived", "keepalived"), ("conntrackd", "conntrackd"),
                       ("meshd_commit", "meshd commit"), ("date", "date")):
        if machine.get(key) is not None:
            out.append(f"- {label}: {machine[key]}")
    reps = settings.get("repetitions_done", settings.get("reps"))
    out.append(f"- repetitions: {reps} (medians), systems: {', '.join(settings.get('systems', []))}, "
               f"total time {settings.get('seconds', '?')} s")
    return "\n".join(out) + "\n"


def gap_series(results: list[dict[str, Any]], system: str) -> list[tuple[int, float | None, float | None]]:
    """(table size, median of the runs' median gaps, median of the runs' max gaps) of one system."""
    series = []
    for kind, size in zip(("gap0", "gap100k", "gap200k"), GAP_SIZES):
        ok = [r for r in results if r["kind"] == kind and r["system"] == system and "error" not in r]
        series.append((size, median([r.get("median_gap_ms") for r in ok]),
                       median([r.get("max_gap_ms") for r in ok])))
    return series


def write_plot(path: str, results: list[dict[str, Any]], systems: list[str]) -> None:
    """Flow gap against table size for each system (median solid, max dashed) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"meshd": "tab:blue", "reference": "tab:red"}
    labels = {"meshd": "meshd", "reference": "keepalived + conntrackd"}
    for system in systems:
        pts = [(s, m, x) for s, m, x in gap_series(results, system) if m is not None]
        if not pts:
            continue
        xs = [s / 1000 for s, _, _ in pts]
        ax.plot(xs, [m for _, m, _ in pts], "o-", color=colors.get(system), label=f"{labels[system]}: median")
        ax.plot(xs, [x for _, _, x in pts], "s--", color=colors.get(system), alpha=0.7,
                label=f"{labels[system]}: max")
    ax.set_xlabel("entries in the conntrack table (thousands)")
    ax.set_ylabel(f"flow gap over {FLOWS} live TCP flows (ms)")
    ax.set_title("Live-flow gap at failover, 100 ms adverts")
    ax.set_xticks([s / 1000 for s in GAP_SIZES])
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ensure_matplotlib(out: TextIO) -> None:
    """Import matplotlib, pip-installing it first when it is missing (only for --plot)."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    out.write("bench: matplotlib is missing; installing it with pip (for --plot)\n")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"cannot install matplotlib for --plot: pip exit {p.returncode}: "
                       f"{(p.stderr or p.stdout).strip()[-800:]}")
    import importlib
    importlib.invalidate_caches()
    import matplotlib  # noqa: F401,F811


# ---------------------------------------------------------------------- measurements


def cpu_snapshot(system, nodes) -> dict[int, float]:
    """{pid: CPU seconds} of every daemon process of the nodes."""
    snap = {}
    for n in nodes:
        for pid in system.daemon_pids(n):
            c = sc.cpu_seconds(pid)
            if c is not None:
                snap[pid] = c
    return snap


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process new in `after` counts from 0)."""
    return sum(c - before.get(pid, 0.0) for pid, c in after.items())


def rss_bytes(pids) -> int:
    """Summed resident set size of the processes (VmRSS of /proc/PID/status)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


def kernel_count(lab: Lab, n: int) -> int:
    """Entries in fw n's conntrack table."""
    p = subprocess.run(nsexec(lab.fw(n), "conntrack", "-C"), capture_output=True, text=True, timeout=30)
    try:
        return int(p.stdout.strip())
    except ValueError:
        raise LabError(f"conntrack -C in {lab.fw(n)} printed {p.stdout.strip()!r} "
                       f"(exit {p.returncode}: {p.stderr.strip()})") from None


def read_sysctl(ns: str | None, name: str) -> str:
    path = "/proc/sys/" + name.replace(".", "/")
    if ns is None:
        with open(path) as f:
            return f.read().strip()
    p = subprocess.run(nsexec(ns, "cat", path), capture_output=True, text=True, timeout=10)
    return p.stdout.strip()


@dataclass
class Waited:
    reached: bool
    at: float
    seen: dict[int, int]
    last_error: str | None = None


def wait_replicated(system, want: dict[int, int], timeout: float, origin: int = 1,
                    poll: float = 0.05) -> Waited:
    """Poll until each node n's external cache of `origin` holds at least want[n] entries.

    A count that cannot be read (a daemon too busy to answer in time) is retried, not fatal.
    """
    t0 = time.monotonic()
    seen: dict[int, int] = {n: -1 for n in want}
    last_error = None
    while True:
        for n in want:
            if seen[n] >= want[n]:
                continue
            try:
                seen[n] = system.external_count(n, origin)
            except (LabError, OSError, subprocess.SubprocessError) as e:
                last_error = str(e).splitlines()[0]
        now = time.monotonic()
        if all(seen[n] >= want[n] for n in want):
            return Waited(True, now, seen, last_error)
        if now - t0 >= timeout:
            return Waited(False, now, seen, last_error)
        time.sleep(poll)


_SS_TIMER = re.compile(r"timer:\((\w+),[^,]*,(\d+)\)")


def stalled_sockets(ss_output: str) -> int:
    """Sockets of `ss -Htno` output whose retransmission timer has fired at least once.

    A flow whose packets are being dropped retransmits (RTO 200 ms, doubling) until one
    gets through; the counter goes back to 0 at the first new acknowledgement.  A running
    flow has data in flight now and then, but no retransmission.
    """
    stalled = 0
    for line in ss_output.splitlines():
        m = _SS_TIMER.search(line)
        if m and m.group(1) == "on" and int(m.group(2)) > 0:
            stalled += 1
    return stalled


def flow_sockets_stalled(lab: Lab, port: int) -> int | None:
    """Established flow sockets, client and server side, in retransmission; None if `ss` fails."""
    stalled = 0
    for ns, side in ((lab.client, "dport"), (lab.server, "sport")):
        p = subprocess.run(nsexec(ns, "ss", "-Htno", "state", "established", f"( {side} = :{port} )"),
                           capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            return None
        stalled += stalled_sockets(p.stdout)
    return stalled


def wait_flows_settled(lab: Lab, port: int, t_kill: float, min_after: float = 1.0,
                       max_after: float = 25.0, poll: float = 0.1) -> float | None:
    """Seconds after the kill when no flow socket was retransmitting in two polls in a row
    (every surviving flow is running again); None if that did not happen within max_after.

    This ends a gap run as soon as the flows are back instead of after a fixed time long
    enough for the slowest system.  min_after: a flow stopped by the kill needs one RTO
    (200 ms) before it shows as retransmitting.
    """
    quiet = 0
    while True:
        now = time.monotonic()
        if now - t_kill >= max_after:
            return None
        stalled = flow_sockets_stalled(lab, port)
        quiet = quiet + 1 if stalled == 0 else 0
        if quiet >= 2 and now - t_kill >= min_after:
            return now - t_kill
        time.sleep(poll)


# ---------------------------------------------------------------------- the runs
#
# Each run starts its system, measures, and returns a dict of metrics; the caller
# (BenchSession.run_one) stops the system and resets the lab whatever happens.


_nets = itertools.count()


def fresh_net() -> int:
    """A client net (10.NET.0.0/16) for meshlab.preload that the last runs did not use.

    A run measures how many entries a cache gained; should anything of an earlier run
    linger somewhere (a daemon's resync from a peer, say), entries with new keys still
    count, where the same keys again would not.
    """
    return 1 + next(_nets) % 200


def virtual_holders(lab: Lab, nodes) -> dict[int, str]:
    """{node: "all" | "none" | "some"}: how many of the virtual addresses each firewall holds."""
    want = {a.split("/")[0] for a in VIRTUAL_ADDRESSES}
    out = {}
    for n in nodes:
        held = want & {a.split("/")[0] for addrs in lab.addresses(lab.fw(n)).values() for a in addrs}
        out[n] = "all" if held == want else "none" if not held else "some"
    return out


def gateway_diagnosis(lab: Lab) -> str:
    """Which firewall the client's and the server's ARP entries for their gateways point at,
    and who holds the virtual addresses: why flows cannot get through, in one line."""
    macs = {}
    for n in range(1, lab.nodes + 1):
        for dev in ("lan0", "srv0"):
            p = lab.ip(lab.fw(n), "-j", "link", "show", dev, check=False)
            try:
                macs[json.loads(p.stdout)[0]["address"]] = f"fw{n}"
            except (ValueError, IndexError, KeyError):
                pass
    parts = []
    for ns, gw in ((lab.client, LAN_VIRTUAL[0]), (lab.server, SRV_VIRTUAL[0])):
        ip = gw.split("/")[0]
        p = lab.ip(ns, "-j", "neigh", "show", ip, check=False)
        try:
            entries = json.loads(p.stdout or "[]")
        except ValueError:
            entries = []
        seen = [f"{macs.get(e.get('lladdr'), e.get('lladdr', '?'))} ({'/'.join(e.get('state', []))})"
                for e in entries]
        parts.append(f"{ns} ARP {ip} -> {', '.join(seen) or 'none'}")
    holders = virtual_holders(lab, range(1, lab.nodes + 1))
    parts.append("virtual addresses: " + ", ".join(f"fw{n} {h}" for n, h in holders.items()))
    return "; ".join(parts)


def _start(system, out: dict[str, Any], nodes=(1, 2), commit: str | None = None) -> None:
    t = time.monotonic()
    system.start(nodes, commit=commit)
    out["start_s"] = round(time.monotonic() - t, 2)


def _want(system, nodes, extra: int, timeout: float = 10.0) -> dict[int, int]:
    """{node: entries its external cache holds now + extra} (retried while a cache cannot be read)."""
    deadline = time.monotonic() + timeout
    want = {}
    for n in nodes:
        while (count := system.external_count(n)) < 0:
            if time.monotonic() > deadline:
                raise LabError(f"{system.name}: fw{n}'s external cache size cannot be read")
            time.sleep(0.1)
        want[n] = count + extra
    return want


def run_survival(system, lab: Lab, procs: Procs, preload: int, flows: int = FLOWS,
                 say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Rows 1 and 2: `flows` live TCP flows through fw1 (with `preload` entries in the table);
    fw1 killed (SIGKILL + links down); takeover time and the flows' gaps through fw2."""
    out: dict[str, Any] = {"preloaded": preload}
    _start(system, out)
    base = _want(system, (2,), 0)[2]
    out["cached_before"] = base           # (a few entries of earlier flows may come back)
    if preload:
        r = sc.run_preload(procs, lab, 1, preload, net=fresh_net())
        out["preload_s"] = round(r["seconds"], 3)
        w = wait_replicated(system, {2: base + preload}, timeout=REPLICATION_TIMEOUT_S)
        if not w.reached:
            raise LabError(f"{preload} preloaded entries not replicated to fw2 within "
                           f"{REPLICATION_TIMEOUT_S:g} s: fw2 holds {w.seen[2] - base}"
                           + (f" (last error: {w.last_error})" if w.last_error else ""))
        out["replicated_s"] = round(w.at - r["t_end"], 3)
    try:
        fr = sc.FlowRun(procs, lab, flows)
    except LabError as e:
        raise LabError(f"{str(e).splitlines()[0]} ({gateway_diagnosis(lab)})") from None
    w = wait_replicated(system, {2: base + preload + flows}, timeout=FLOWS_REPLICATED_S)
    out["flows_replicated"] = w.reached
    if not w.reached:
        say(f"    (fw2 holds {w.seen[2] - base - preload} of the {flows} flows' entries after "
            f"{FLOWS_REPLICATED_S:g} s; going on)")
    time.sleep(0.5)                 # steady state: the flows' last TCP state changes replicated
    # A backup that took over during the load (adverts starved) would carry the flows
    # already, and the kill would measure nothing: that is a failed run, not a short gap.
    roles = virtual_holders(lab, (1, 2))
    if roles != {1: "all", 2: "none"}:
        raise LabError(f"before the kill fw1 must hold every virtual address and fw2 none, but fw1 holds "
                       f"{roles[1]} and fw2 {roles[2]} (a takeover during the load?): {gateway_diagnosis(lab)}")
    watch = start_watch(procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=TAKEOVER_TIMEOUT_S)
    t_kill = system.kill(1)
    lab.fw_links(1, up=False)
    ev = watch.wait_result(timeout=TAKEOVER_TIMEOUT_S + 5)
    if ev.get("event") != "present":
        fr.stop()
        raise LabError(f"fw2 did not take every virtual address within {TAKEOVER_TIMEOUT_S:g} s of the kill "
                       f"(watcher: {ev.get('event')}, present: {ev.get('present')})")
    out["takeover_ms"] = round((ev["time"] - t_kill) * 1000, 1)
    settled = wait_flows_settled(lab, sc.FLOW_PORT, t_kill)
    out["settled_s"] = None if settled is None else round(settled, 2)
    time.sleep(0.5)                 # a few round trips of every survivor after its gap
    res = fr.stop()
    s = summarize(res, t_fail=t_kill)
    out.update({k: s[k] for k in ("flows", "survived", "reset", "median_gap_ms", "max_gap_ms")})
    return out


def run_replication(system, lab: Lab, procs: Procs, entries: int, rate: float, commit: bool,
                    say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Rows 3-5: inject `entries` into fw1 (at `rate`/s; 0: as fast as possible); the time from
    the end of the injection until fw2 holds them all, the daemons' CPU for that, the RSS
    growth of fw2's daemons per entry; with `commit`, then time committing fw2's external
    cache into its (empty) kernel table."""
    out: dict[str, Any] = {"entries": entries}
    _start(system, out, commit=CACHE_ONLY_COMMIT)
    time.sleep(0.3)                 # let start-up allocations settle before the RSS baseline
    want = _want(system, (2,), entries)
    out["cached_before"] = want[2] - entries
    rss0 = rss_bytes(system.daemon_pids(2))
    cpu0 = cpu_snapshot(system, (1, 2))
    r = sc.run_preload(procs, lab, 1, entries, net=fresh_net(), rate=rate, batch=500 if rate else 2000)
    out["injection_s"] = round(r["seconds"], 3)
    out["injection_rate"] = r["rate"]
    w = wait_replicated(system, want, timeout=REPLICATION_TIMEOUT_S)
    cpu1 = cpu_snapshot(system, (1, 2))
    if not w.reached:
        raise LabError(f"fw2 holds {w.seen[2] - (want[2] - entries)} of {entries} entries "
                       f"{REPLICATION_TIMEOUT_S:g} s after the injection ended"
                       + (f" (last error: {w.last_error})" if w.last_error else ""))
    out["lag_s"] = round(max(0.0, w.at - r["t_end"]), 3)
    out["cpu_s"] = round(cpu_delta(cpu0, cpu1), 3)
    cached = system.external_count(2) - (want[2] - entries)
    rss1 = rss_bytes(system.daemon_pids(2))
    out["cached"] = cached
    out["rss_growth"] = rss1 - rss0
    out["rss_per_entry"] = round((rss1 - rss0) / cached, 1) if cached > 0 else None
    if commit:
        k0 = kernel_count(lab, 2)
        t0 = time.monotonic()
        system.commit(2)
        t_returned = time.monotonic()
        # The entries must really be in the kernel: count them (and wait, should a commit
        # return before its work is done).
        deadline = t_returned + 60
        k1 = kernel_count(lab, 2)
        while k1 < k0 + entries and time.monotonic() < deadline:
            time.sleep(0.02)
            k1 = kernel_count(lab, 2)
        t_done = max(t_returned, time.monotonic() if k1 >= k0 + entries else t_returned)
        out["committed"] = k1 - k0
        if k1 < k0 + entries:
            raise LabError(f"after the commit fw2's kernel table grew by {k1 - k0} entries, "
                           f"not {entries} (60 s after the commit returned)")
        out["commit_returned_s"] = round(t_returned - t0, 3)
        out["commit_s"] = round(t_done - t0, 3)
        out["commit_rate"] = round(entries / (t_done - t0))
    return out


def run_loss(system, lab: Lab, procs: Procs, percent: int, entries: int = LOSS_ENTRIES,
             rate: float = LOSS_RATE, give_up_s: float = GIVE_UP_S,
             say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Row 6: `percent` % of the replication datagrams dropped on both firewalls' sync0 input;
    inject `entries` into fw1 at `rate`/s; the fraction fw2 holds, and the time from the end of
    the injection until it holds them all (None after give_up_s)."""
    out: dict[str, Any] = {"loss": percent, "entries": entries, "give_up_s": give_up_s}
    _start(system, out)
    try:
        for n in (1, 2):
            sc.add_loss(lab, n, percent, port=system.sync_port)
        want = _want(system, (2,), entries)
        r = sc.run_preload(procs, lab, 1, entries, net=fresh_net(), rate=rate, batch=500)
        out["injection_s"] = round(r["seconds"], 3)
        w = wait_replicated(system, want, timeout=give_up_s, poll=0.1)
        got = w.seen[2] - (want[2] - entries)
        out["replicated"] = got
        out["fraction"] = round(min(1.0, max(0, got) / entries), 5)
        out["converge_s"] = round(max(0.0, w.at - r["t_end"]), 3) if w.reached else None
        out["dropped"] = {f"fw{n}": sc.loss_dropped(lab, n) for n in (1, 2)}
    finally:
        for n in (1, 2):
            sc.remove_loss(lab, n)
    return out


def run_three_nodes(system, lab: Lab, procs: Procs, entries: int = REPLICATION_ENTRIES,
                    rate: float = REPLICATION_RATE, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Row 7: three nodes; `entries` injected into fw1 at `rate`/s; time until fw2 AND fw3 hold
    them all, and the three daemons' CPU."""
    out: dict[str, Any] = {"entries": entries}
    _start(system, out, (1, 2, 3), commit=CACHE_ONLY_COMMIT)
    want = _want(system, (2, 3), entries)
    cpu0 = cpu_snapshot(system, (1, 2, 3))
    r = sc.run_preload(procs, lab, 1, entries, net=fresh_net(), rate=rate, batch=500)
    w = wait_replicated(system, want, timeout=REPLICATION_TIMEOUT_S)
    cpu1 = cpu_snapshot(system, (1, 2, 3))
    if not w.reached:
        raise LabError(f"after {REPLICATION_TIMEOUT_S:g} s fw2 holds {w.seen[2] - (want[2] - entries)} and fw3 "
                       f"{w.seen[3] - (want[3] - entries)} of {entries} entries")
    out["lag_s"] = round(max(0.0, w.at - r["t_end"]), 3)
    out["cpu_s"] = round(cpu_delta(cpu0, cpu1), 3)
    return out


RUNS: dict[str, tuple[int, Callable[..., dict[str, Any]]]] = {
    # kind: (lab nodes, run(system, lab, procs, say))
    "gap0": (2, lambda s, lab, p, say: run_survival(s, lab, p, 0, say=say)),
    "gap100k": (2, lambda s, lab, p, say: run_survival(s, lab, p, GAP_SIZES[1], say=say)),
    "gap200k": (2, lambda s, lab, p, say: run_survival(s, lab, p, GAP_SIZES[2], say=say)),
    "repl": (2, lambda s, lab, p, say: run_replication(s, lab, p, REPLICATION_ENTRIES, REPLICATION_RATE,
                                                       commit=True, say=say)),
    # (at row 3's rate: this row is about memory; the gap rows already inject at full speed)
    "mem500k": (2, lambda s, lab, p, say: run_replication(s, lab, p, MEMORY_BIG, REPLICATION_RATE,
                                                          commit=False, say=say)),
    "loss20": (2, lambda s, lab, p, say: run_loss(s, lab, p, LOSS_PERCENTS[0], say=say)),
    "loss50": (2, lambda s, lab, p, say: run_loss(s, lab, p, LOSS_PERCENTS[1], say=say)),
    "three": (3, lambda s, lab, p, say: run_three_nodes(s, lab, p, say=say)),
}


def describe_run(kind: str, r: dict[str, Any]) -> str:
    """One line about a run's result, for the progress output."""
    if "error" in r:
        return "ERROR " + r["error"]
    if kind.startswith("gap"):
        return (f"takeover {r['takeover_ms']:.0f} ms, gap median {r['median_gap_ms']} / max {r['max_gap_ms']} ms, "
                f"{r['survived']}/{r['flows']} flows survived")
    if kind in ("repl", "mem500k"):
        text = (f"{r['cached']} cached, lag {r['lag_s']:.2f} s, CPU {r['cpu_s']:.2f} s, "
                f"RSS {r['rss_per_entry']} bytes/entry")
        if "commit_s" in r:
            text += f", commit {r['commit_s']:.2f} s ({r['commit_rate']:,}/s)"
        return text
    if kind.startswith("loss"):
        conv = "stuck" if r["converge_s"] is None else f"{r['converge_s']:.2f} s"
        return f"{r['replicated']}/{r['entries']} replicated, converge {conv}"
    if kind == "three":
        return f"lag {r['lag_s']:.2f} s, CPU {r['cpu_s']:.2f} s"
    return json.dumps(r)


# ---------------------------------------------------------------------- the session


def raise_conntrack_max(value: int) -> int | None:
    """Raise the root namespace's nf_conntrack_max to `value` (new namespaces inherit it);
    return the old value to restore, None if it was already high enough."""
    path = "/proc/sys/net/netfilter/nf_conntrack_max"
    try:
        with open(path) as f:
            old = int(f.read().strip())
    except OSError as e:
        raise LabError(f"cannot read {path} ({e.strerror}): is the nf_conntrack module loaded?") from None
    if old >= value:
        return None
    with open(path, "w") as f:
        f.write(str(value))
    return old


def restore_conntrack_max(old: int | None) -> None:
    if old is not None:
        with open("/proc/sys/net/netfilter/nf_conntrack_max", "w") as f:
            f.write(str(old))


def _version(argv: list[str]) -> str | None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (p.stdout + p.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None


def machine_description() -> dict[str, Any]:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    commit = None
    try:
        p = subprocess.run(["git", "-C", md.REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        commit = p.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "keepalived": _version(["keepalived", "--version"]),
            "conntrackd": _version(["conntrackd", "-v"]), "meshd_commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


@dataclass
class BenchSession:
    """One lab (rebuilt only to change its node count or after a failed run), one Procs, and
    the root namespace's nf_conntrack_max: all restored by close()."""

    prefix: str
    advbase_ms: int
    out: TextIO
    lab: Lab | None = None
    procs: Procs | None = None
    run_dir: str = ""
    conntrack_max_old: int | None = None
    t0: float = field(default_factory=time.monotonic)
    failed_runs: int = 0
    kept_run_dir: bool = False

    def open(self) -> None:
        self.conntrack_max_old = raise_conntrack_max(CONNTRACK_MAX)
        self.run_dir = tempfile.mkdtemp(prefix=f"mlab-{self.prefix}")
        self.procs = Procs(self.run_dir, env=md.child_env())

    def say(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.t0:6.1f} s] {text}\n")
        self.out.flush()

    def lab_with(self, nodes: int) -> Lab:
        if self.lab is None or self.lab.nodes != nodes or not self.lab.is_up():
            self.lab = Lab(self.prefix, nodes)
            secs = self.lab.up()             # removes any lab of this prefix first
            have = int(read_sysctl(self.lab.fw(1), "net.netfilter.nf_conntrack_max") or 0)
            self.say(f"lab {self.prefix}* up with {nodes} firewalls ({secs:.2f} s); "
                     f"nf_conntrack_max in the firewalls {have:,}")
            if have < MEMORY_BIG + REPLICATION_ENTRIES:
                raise LabError(f"nf_conntrack_max in {self.lab.fw(1)} is {have}: the benchmark needs "
                               f"{CONNTRACK_MAX} (raised in the root namespace before the lab is created)")
        return self.lab

    def reset(self) -> None:
        """After a run: every process stopped, firewalls reset, conntrack tables flushed."""
        self.procs.kill_all()
        lab = self.lab
        if lab is None or not lab.is_up():
            return
        for n in range(1, lab.nodes + 1):
            sc.remove_loss(lab, n)
            lab.reset_fw(n)
            sc.flush_conntrack(lab, n)

    def run_one(self, kind: str, system_name: str, rep: int, reps_of_kind: int) -> dict[str, Any]:
        nodes, fn = RUNS[kind]
        result: dict[str, Any] = {"kind": kind, "system": system_name, "rep": rep}
        label = f"{kind} {system_name}" + (f" run {rep}/{reps_of_kind}" if reps_of_kind > 1 else "")
        self.say(f"{label} ...")
        t = time.monotonic()
        system = None
        try:
            lab = self.lab_with(nodes)
            system = make_system(system_name, self.procs, lab, self.advbase_ms)
            result.update(fn(system, lab, self.procs, lambda s: self.say(s)))
        except Exception as e:  # noqa: BLE001 - recorded in the row; the other runs go on
            self.failed_runs += 1
            text = f"{type(e).__name__}: {e}" if not isinstance(e, LabError) else str(e)
            result["error"] = text.strip().splitlines()[0][:400] if text.strip() else type(e).__name__
            self.say(f"{label} failed:\n{text if isinstance(e, LabError) else traceback.format_exc()}")
        finally:
            t_clean = time.monotonic()
            if system is not None:
                try:
                    system.stop()
                except Exception as e:  # noqa: BLE001 - the reset below kills what is left
                    self.say(f"{label}: stopping {system_name} failed: {e}")
            try:
                self.reset()
            except Exception as e:  # noqa: BLE001 - a fresh lab for the next run
                self.say(f"resetting the lab failed ({e}); rebuilding it")
                self.lab = None
            result["cleanup_s"] = round(time.monotonic() - t_clean, 2)
        result["seconds"] = round(time.monotonic() - t, 1)
        self.say(f"{label}: {describe_run(kind, result)} ({result['seconds']:.1f} s)")
        return result

    def close(self, keep_run_dir: bool) -> None:
        try:
            if self.procs is not None:
                self.procs.kill_all()
        finally:
            try:
                from ..topology import down
                down(self.prefix)
            finally:
                restore_conntrack_max(self.conntrack_max_old)
                self.conntrack_max_old = None
                if self.run_dir and not keep_run_dir:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                elif self.run_dir:
                    self.kept_run_dir = True
                    self.out.write(f"bench: configs and logs kept in {self.run_dir}\n")


def run_benchmark(rows: list[int], systems: list[str], reps: int, prefix: str = DEFAULT_PREFIX,
                  advbase_ms: int = 100, out: TextIO = sys.stderr,
                  budget_s: float | None = None) -> dict[str, Any]:
    """Every run of the plan; the report as a dict {"rows", "machine", "settings", "runs", ...}.

    budget_s: repetitions after the first are skipped when the time they are expected to take
    (the first one's) would end the benchmark later than budget_s seconds after its start.
    KeyboardInterrupt (Ctrl-C, or SIGTERM turned into it) stops the runs; everything is cleaned
    up and the report of what ran is returned with "interrupted": true.
    """
    session = BenchSession(prefix, advbase_ms, out)
    if "reference" in systems:
        try:
            ensure = getattr(reference_module(), "ensure_installed", None)
            if ensure is not None:
                ensure()                            # keepalived, conntrackd from Debian when missing
        except LabError as e:
            session.say(f"the reference cannot run ({e}); each of its runs will record that")
    phases = plan_phases(rows, systems, reps)
    results: list[dict[str, Any]] = []
    interrupted = False
    skipped: list[str] = []
    counts: dict[tuple[str, str], int] = {}
    for phase in phases:
        for kind, system, _ in phase.runs:
            counts[(kind, system)] = counts.get((kind, system), 0) + 1
    session.say(f"{sum(len(p.runs) for p in phases)} runs: rows {','.join(map(str, rows))}, systems "
                f"{','.join(systems)}, {reps} repetition(s)"
                + (f" within {budget_s:g} s" if budget_s else ""))
    first_repetition_s = None
    run_s: dict[tuple[str, str], float] = {}        # (kind, system): seconds of its first run
    try:
        session.open()
        for phase in phases:
            elapsed = time.monotonic() - session.t0
            if skipped or (phase.optional and first_repetition_s is not None and
                           not fits_budget(elapsed, first_repetition_s, budget_s)):
                skipped.append(phase.name)
                session.say(f"skipping {phase.name}: the first took {first_repetition_s or 0:.0f} s, "
                            f"{(budget_s or 0) - elapsed:.0f} s are left of the {budget_s:g} s budget")
                continue
            t_phase = time.monotonic()
            for i, (kind, system, rep) in enumerate(phase.runs):
                # (a repetition slower than the first, e.g. after a failure, is cut short too)
                elapsed = time.monotonic() - session.t0
                if phase.optional and not fits_budget(elapsed, run_s.get((kind, system), 0.0), budget_s):
                    skipped.append(f"{phase.name} from {kind} {system} on")
                    session.say(f"stopping {phase.name} before {kind} {system}: the {budget_s:g} s "
                                f"budget is used up")
                    break
                result = session.run_one(kind, system, rep, counts[(kind, system)])
                results.append(result)
                run_s.setdefault((kind, system), result["seconds"])
            if phase.name == "repetition 1":
                first_repetition_s = time.monotonic() - t_phase
    except KeyboardInterrupt:
        interrupted = True
        session.say("interrupted: cleaning up")
    finally:
        session.close(keep_run_dir=session.failed_runs > 0 and not interrupted)
    seconds = round(time.monotonic() - session.t0, 1)
    report = {
        "rows": build_rows(results, systems, rows),
        "settings": {"rows": rows, "systems": systems, "reps": reps, "advbase_ms": advbase_ms, "flows": FLOWS,
                     "gap_sizes": list(GAP_SIZES), "replication_entries": REPLICATION_ENTRIES,
                     "replication_rate": REPLICATION_RATE, "memory_entries": [REPLICATION_ENTRIES, MEMORY_BIG],
                     "loss_entries": LOSS_ENTRIES, "loss_rate": LOSS_RATE, "give_up_s": GIVE_UP_S,
                     "meshd_commit_rows_3_to_7": CACHE_ONLY_COMMIT, "seconds": seconds,
                     "budget_s": budget_s, "repetitions_done": max((r["rep"] for r in results), default=0),
                     "skipped": skipped},
        "machine": machine_description(),
        "runs": results,
        "failed_runs": session.failed_runs,
        "run_dir_kept": session.run_dir if session.kept_run_dir else None,
        "interrupted": interrupted,
    }
    if "meshd" in systems and "three" in kinds_for_rows(rows) and "reference" in systems:
        report["settings"]["three_nodes_reference"] = THREE_NODES_NOTE
    return report
