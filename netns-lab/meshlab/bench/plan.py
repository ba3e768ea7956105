"""The order of the runs: which run comes when, and what the time budget may cut.

Owns: `Phase`, `plan_phases` and `plan_runs` (repetition 1, then the runs done once per
system, then repetitions 2..N; within each the systems alternate run by run), and
`fits_budget`.

Must not: run anything or read a clock: the session measures the time and asks
`fits_budget`.  Which runs a row needs is `rows.kinds_for_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .load import MESHD_ONLY_KINDS, ONCE_KINDS, REPEATED_KINDS
from .rows import kinds_for_rows


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
