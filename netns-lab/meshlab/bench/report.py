"""The report: the benchmark's JSON object and its text forms.

Owns: `build_report` (the JSON object: rows, settings, machine, runs, failed_runs,
run_dir_kept, interrupted; docs/benchmarks.md lists its keys), `machine_description`,
the text table (`format_table`), the markdown section (`format_markdown`, with row 9 also
as one line per point of load: `format_relay_table`), and the plot
of the flow gap against the table size (`gap_series`, `write_plot`, `ensure_matplotlib`).

Must not: run or measure anything in the lab, or decide what a row holds or whether it
met its target (that is `rows`).  Its only dealings with the host: reading the machine's
description and the daemons' versions, pip-installing matplotlib for --plot, and writing
the plot.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import Any, TextIO

from .. import meshd_node as md
from ..topology import LabError
from .load import (
    CACHE_ONLY_COMMIT,
    FLOWS,
    GAP_SIZES,
    GIVE_UP_S,
    LOSS_ENTRIES,
    LOSS_RATE,
    MEMORY_BIG,
    REPLICATION_ENTRIES,
    RELAY_CLIENTS,
    RELAY_POINT_S,
    REPLICATION_RATE,
)
from .rows import THREE_NODES_NOTE, build_rows, kinds_for_rows, median

# ---------------------------------------------------------------------- the JSON object


def build_report(results: list[dict[str, Any]], *, rows: list[int], systems: list[str], reps: int,
                 advbase_ms: int, budget_s: float | None, skipped: list[str], seconds: float,
                 failed_runs: int, run_dir_kept: str | None, interrupted: bool) -> dict[str, Any]:
    """The report of a benchmark from its runs' results: {"rows", "settings", "machine", "runs",
    "failed_runs", "run_dir_kept", "interrupted"} (the command line adds settings.argv and
    settings.quick)."""
    report = {
        "rows": build_rows(results, systems, rows),
        "settings": {"rows": rows, "systems": systems, "reps": reps, "advbase_ms": advbase_ms, "flows": FLOWS,
                     "gap_sizes": list(GAP_SIZES), "replication_entries": REPLICATION_ENTRIES,
                     "replication_rate": REPLICATION_RATE, "memory_entries": [REPLICATION_ENTRIES, MEMORY_BIG],
                     "loss_entries": LOSS_ENTRIES, "loss_rate": LOSS_RATE, "give_up_s": GIVE_UP_S,
                     "meshd_commit_rows_3_to_7": CACHE_ONLY_COMMIT, "relay_clients": list(RELAY_CLIENTS),
                     "relay_point_s": RELAY_POINT_S, "seconds": seconds,
                     "budget_s": budget_s, "repetitions_done": max((r["rep"] for r in results), default=0),
                     "skipped": skipped},
        "machine": machine_description(),
        "runs": results,
        "failed_runs": failed_runs,
        "run_dir_kept": run_dir_kept,
        "interrupted": interrupted,
    }
    if "meshd" in systems and "three" in kinds_for_rows(rows) and "reference" in systems:
        report["settings"]["three_nodes_reference"] = THREE_NODES_NOTE
    return report


def _version(argv: list[str]) -> str | None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (p.stdout + p.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None


def machine_description() -> dict[str, Any]:
    """The machine the benchmark ran on: CPU, cores, memory, kernel, Python, the daemons'
    versions (and the relay row's HAProxy, nginx, wrk), meshd's commit and the date (each None when it cannot be read)."""
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
                           text=True, timeout=10, check=False)
        commit = p.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "keepalived": _version(["keepalived", "--version"]),
            "conntrackd": _version(["conntrackd", "-v"]), "haproxy": _version(["haproxy", "-v"]),
            "nginx": _version(["nginx", "-v"]), "wrk": _version(["wrk", "--version"]), "meshd_commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


# ---------------------------------------------------------------------- the table and the markdown


def format_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms" or unit == "bytes":
        return f"{v:,.0f}"
    if unit in ("entries/s", "flows/s", "packets/s", "bytes/s", "flows", "drops", "requests/s", "µs"):
        return f"{v:,.0f}"
    if unit == "% of a core":
        return f"{v:.1f}"
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


RELAY_HEADERS = ["load", "clients", "meshd req/s", "HAProxy req/s", "ratio", "meshd p50 ms", "HAProxy p50 ms",
                 "meshd p99 ms", "HAProxy p99 ms", "p99 ratio", "meshd CPU µs/req", "HAProxy CPU µs/req",
                 "target met"]


def format_relay_table(rows: list[dict[str, Any]]) -> str:
    """Row 9 as one markdown line per point of load (requests/s, p50, p99 and the relay's CPU per
    request of both systems side by side, the ratios, whether the issue's targets are met); "" when the rows hold no row 9."""
    by_key = {r["key"]: r for r in rows if r["issue_row"] == 9}
    ms = lambda v: "-" if v is None else f"{v / 1000:.2f}" if v < 10_000 else f"{v / 1000:.0f}"   # noqa: E731
    num = lambda v: "-" if v is None else f"{v:,.0f}"                                            # noqa: E731
    rat = lambda v: "-" if v is None else f"{v:.2f}"                                             # noqa: E731
    lines = []
    for sec in ("plain", "tls"):
        for conn, what in (("ka", "keep-alive"), ("new", "new connection")):
            for n in RELAY_CLIENTS:
                key = f"relay_{conn}_{sec}_c{n}"
                if f"{key}_rps" not in by_key:
                    continue
                rps, p50, p99 = by_key[f"{key}_rps"], by_key[f"{key}_p50"], by_key[f"{key}_p99"]
                cpu = by_key.get(f"{key}_cpu") or {"meshd": None, "reference": None}
                met = [m for m in (rps["met"], p99["met"]) if m is not None]
                lines.append(f"| {what}, {sec.upper() if sec == 'tls' else sec} | {n} | {num(rps['meshd'])} | "
                             f"{num(rps['reference'])} | {rat(rps['ratio'])} | {ms(p50['meshd'])} | "
                             f"{ms(p50['reference'])} | {ms(p99['meshd'])} | {ms(p99['reference'])} | "
                             f"{rat(p99['ratio'])} | {num(cpu['meshd'])} | {num(cpu['reference'])} | "
                             f"{'-' if not met else ('yes' if all(met) else 'NO')} |")
    if not lines:
        return ""
    head = ["| " + " | ".join(RELAY_HEADERS) + " |", "|" + "|".join("---" for _ in RELAY_HEADERS) + "|"]
    direct = [by_key.get(f"relay_direct_{c}_c{n}_rps") for c in ("ka", "new") for n in RELAY_CLIENTS]
    tail = []
    if any(d and d["meshd"] is not None for d in direct):
        tail = ["", "wrk straight to one backend (no relay), requests/s: keep-alive "
                + " / ".join(num(d["meshd"] if d else None) for d in direct[:len(RELAY_CLIENTS)])
                + ", new connection " + " / ".join(num(d["meshd"] if d else None) for d in direct[len(RELAY_CLIENTS):])
                + f" (at {' / '.join(map(str, RELAY_CLIENTS))} clients)"]
    return "\n".join(head + lines + tail) + "\n"


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
    relay = format_relay_table(rows)
    if relay:
        out += ["", "Row 9, one line per point of load (ratio = meshd / HAProxy):", "", relay.rstrip("\n")]
    out += ["", "Machine:", ""]
    for key, label in (("cpu", "CPU"), ("cores", "cores"), ("memory", "memory"), ("kernel", "kernel"),
                       ("python", "Python"), ("keepalived", "keepalived"), ("conntrackd", "conntrackd"),
                       ("haproxy", "HAProxy"), ("nginx", "nginx"), ("wrk", "wrk"),
                       ("meshd_commit", "meshd commit"), ("date", "date")):
        if machine.get(key) is not None:
            out.append(f"- {label}: {machine[key]}")
    reps = settings.get("repetitions_done", settings.get("reps"))
    out.append(f"- repetitions: {reps} (medians), systems: {', '.join(settings.get('systems', []))}, "
               f"total time {settings.get('seconds', '?')} s")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- the plot


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
        import matplotlib
        return
    except ImportError:
        pass
    out.write("bench: matplotlib is missing; installing it with pip (for --plot)\n")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise LabError(f"cannot install matplotlib for --plot: pip exit {p.returncode}: "
                       f"{(p.stderr or p.stdout).strip()[-800:]}")
    import importlib
    importlib.invalidate_caches()
    import matplotlib  # noqa: F401
