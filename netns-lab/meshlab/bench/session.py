"""One benchmark: the runs of the plan on one lab, always cleaned up.

Owns: `run_benchmark` (what `netns-lab/bench` calls: installs the reference, and for
row 9 HAProxy, nginx and wrk, when they are missing, runs the plan phase by phase within the time budget, records a failed run and
goes on, turns Ctrl-C into the report of what ran), `BenchSession` (one lab reused
between runs, rebuilt only to change its node count or after a run that broke it; one
Procs; the reset between runs: daemons stopped, firewalls reset, conntrack flushed), and
the root namespace's nf_conntrack_max, raised for the benchmark and restored.

Must not: measure anything itself (that is `runs`), choose or order the runs (`plan`),
or build rows or their text (`rows`, `report`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, TextIO

from .. import meshd_node as md
from .. import scenarios as sc
from ..procs import Procs
from ..systems import make_system, reference_module
from ..topology import Lab, LabError
from .load import MEMORY_BIG, REPLICATION_ENTRIES
from .measure import read_sysctl
from ..relaysystems import ensure_tools as ensure_relay_tools
from .plan import fits_budget, plan_phases
from .report import build_report
from .rows import kinds_for_rows
from .runs import RUNS, describe_run

CONNTRACK_MAX = 1_200_000            # root namespace, while the benchmark runs
DEFAULT_REPS = 3
DEFAULT_BUDGET_S = 540.0             # the whole default run must end within 10 minutes
DEFAULT_PREFIX = "bench-"


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
    if "relay" in kinds_for_rows(rows):
        try:
            ensure_relay_tools()                   # haproxy, nginx-light, wrk from Debian when missing
        except LabError as e:
            session.say(f"the relay row cannot run ({e}); each of its runs will record that")
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
    return build_report(results, rows=rows, systems=systems, reps=reps, advbase_ms=advbase_ms,
                        budget_s=budget_s, skipped=skipped, seconds=seconds, failed_runs=session.failed_runs,
                        run_dir_kept=session.run_dir if session.kept_run_dir else None,
                        interrupted=interrupted)
