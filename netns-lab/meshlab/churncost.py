"""Row 8 at one rate, meshd only, with the accelerator and without: what it changes.

    python3 -m meshlab.churncost [--rate 10000] [--seconds 15] [--reps 1] [--impl c python]

Brings up a two-node lab of its own (prefix fc<pid>-, always removed) and, for
each implementation in turn (`python`: MESHD_PURE_PYTHON=1 in the daemons'
environment), starts meshd on fw1 and fw2 and runs the bench's churn row
(meshlab.bench.runs.run_churn: the same generators, CPU and copy checks),
then stops the daemons and empties both conntrack tables. Prints one line per run and the JSON of all. Needs
root. The two implementations alternate over --reps so the VM's load falls
on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))      # the checkout's meshd, as bench does

from . import scenarios as sc  # noqa: E402
from .bench.runs import run_churn  # noqa: E402
from .systems import MeshdSystem  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshlab.churncost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--impl", nargs="+", choices=["c", "python"], default=["c", "python"])
    args = ap.parse_args(argv)
    results = []
    with sc._Session(f"fc{os.getpid() % 1000}-", None, 2, None, fresh=True) as s:
        s.up()
        try:
            for rep in range(args.reps):
                for impl in args.impl:
                    s.procs.env["MESHD_PURE_PYTHON"] = "1" if impl == "python" else "0"
                    system = MeshdSystem(s.procs, s.lab)
                    try:
                        r = run_churn(system, s.lab, s.procs, args.rate, args.seconds)
                    finally:
                        system.stop()
                        # The kept flows (120 s timeouts) would expire during the next run
                        # and count as lost there: every run starts from empty tables.
                        for n in (1, 2):
                            sc.flush_conntrack(s.lab, n)
                    per_flow = {k: round(r[f"cpu_pct_{k}"] / 100 * 1e6 / max(1, r["rate"]), 1)
                                for k in ("fw1", "fw2")}
                    r.update(implementation=impl, rep=rep, us_per_flow=per_flow)
                    results.append(r)
                    print(f"{impl:6s} rep {rep}: {r['rate']:,}/s reached, CPU fw1 {r['cpu_pct_fw1']} % "
                          f"({per_flow['fw1']} µs/flow) + fw2 {r['cpu_pct_fw2']} % ({per_flow['fw2']} µs/flow), "
                          f"{r['sync_packets_per_s']:,} packets/s, overruns {r['overruns']}, "
                          f"lost {r['lost']}, stale {r['stale']}", flush=True)
        finally:
            s.close()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
