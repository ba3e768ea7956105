"""`python3 -m tests.fuzz --mutations 1000000`: the long version of the fuzzer.

Splits the mutations over the targets (runner.WEIGHTS), prints one line per
target (mutations, seconds, rate, findings) and the first findings, and
exits 1 if there is any.  `--targets a,b` runs some; `--seed` another run.
"""

from __future__ import annotations

import argparse
import json
import sys

from .runner import TARGETS, WEIGHTS, run_target, split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--mutations", type=int, default=100_000, help="in total, over the targets")
    p.add_argument("--targets", default=",".join(WEIGHTS), help=f"some of {', '.join(TARGETS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object at the end")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)}")
    results = {}
    total_s = 0.0
    findings = []
    for name, n in split(args.mutations, names).items():
        tally, seconds = run_target(name, n, args.seed)
        total_s += seconds
        findings += tally.findings
        results[name] = {"mutations": tally.mutations, "seconds": round(seconds, 1),
                         "findings": len(tally.findings), "classes": tally.by_class}
        print(f"{name:15} {tally.mutations:>9} mutations {seconds:8.1f} s "
              f"{tally.mutations / max(seconds, 1e-9):>9.0f}/s  findings {len(tally.findings)}", flush=True)
    print(f"{'total':15} {sum(r['mutations'] for r in results.values()):>9} mutations {total_s:8.1f} s"
          f"  findings {len(findings)}")
    for f in findings[:20]:
        print("  " + str(f))
    if args.json:
        print(json.dumps({"seed": args.seed, "targets": results, "findings": [str(f) for f in findings[:100]]}))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
