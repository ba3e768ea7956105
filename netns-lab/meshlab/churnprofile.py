"""Where meshd's CPU goes under a churn of short flows: py-spy on both nodes, by stage.

    python3 -m meshlab.churnprofile [--rate 10000] [--seconds 15] [--out DIR]

Brings up a lab of its own (prefix pf<pid>-, always removed), runs meshd on fw1 and fw2
(`commit = "takeover"`, as the bench's churn row), starts `py-spy record -f raw` on each
node's daemon and wire engine, runs `meshlab.churn` on fw1 (each flow deleted 2 s after
its creation), and prints each node's CPU share by stage: the first frame of a stack,
from the leaf, that a rule of STAGES matches decides (idle waits are left out).  The raw
stacks stay in DIR for a flame graph.  Needs root and py-spy (pip install py-spy).

A py-spy sample is a thread's stack, so the shares are what to read, not the sample
counts: scale them by the CPU the bench measures per node (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time

IDLE = re.compile(r"^(EpollIOManager\.get_events|Condition\.wait|wait \(threading|sleep|select"
                  r"|_wait_for_tstate_lock)")
STAGES = (   # leaf to root: the first frame that matches decides
    ("socket syscalls (recv, send)", r"^_SocketType\._nonblocking_helper|^_try_sync"),
    ("seal (AES-GCM)", r"^FrameSealer\.seal "),
    ("open (AES-GCM)", r"^FrameOpener\.open |meshd/wire/screen\.py"),
    ("frame decode (msgpack + checks)",
     r"^(decode_body|_unpack|_records|_directs|_decode_\w+|_array|_uints|_is_uint|_ranges) \(meshd/sync/frames\.py"),
    ("frame encode (msgpack)", r"^packb |^data_frame \(meshd/sync/outbound"),
    ("imsg (socketpair messages)", r"meshd/privsep/|meshd/wire/remote\.py|meshd/wire/engine\.py"),
    ("ctnetlink decode", r"meshd/kernel/ctnetlink/"),
    # with the accelerator, the C decode is inside read_burst's frame (py-spy shows no C frames)
    ("kernel event read (recv)", r"meshd/kernel/conntrack/reader\.py"),
    ("filter / merge", r"meshd/sync/filters\.py|meshd/node/flows\.py"),
    ("caches", r"meshd/sync/cache\.py"),
    ("sync core (streams, acks, records)",
     r"meshd/sync/(core|outbound|inbound|stream|resend|bulk|membership|antientropy|digest|about)\.py"),
    ("sendto (frames)", r"^SyncShell\.send(_frames)? |meshd/sync/sender\.py"),
    ("election (adverts, timers)", r"meshd/election/|meshd/timers\.py"),
    ("control socket, stats", r"meshd/control/|meshd/commands\.py"),
    ("trio scheduling", r"trio/|outcome/"),
)
_RULES = [(name, re.compile(rx)) for name, rx in STAGES]


def stage(frames: list[str]) -> str:
    for f in reversed(frames):
        for name, rx in _RULES:
            if rx.search(f):
                return name
    return "other"


def shares(paths) -> tuple[collections.Counter, int]:
    """(samples by stage, active samples) over py-spy raw files."""
    by_stage: collections.Counter = collections.Counter()
    total = 0
    for path in paths:
        with open(path) as f:
            for line in f:
                stack, _, n = line.rstrip().rpartition(" ")
                frames = stack.split(";")
                if not n.isdigit() or IDLE.search(frames[-1]):
                    continue
                total += int(n)
                by_stage[stage(frames)] += int(n)
    return by_stage, total


def profile(rate: float, seconds: float, out_dir: str) -> dict[str, str]:
    """Run the lab, the churn and py-spy; {node/role: raw file}."""
    from . import meshd_node as md
    from . import scenarios as sc
    from .reference import descendants
    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, str] = {}
    with sc._Session(f"pf{os.getpid() % 1000}-", None, 2, None, fresh=True) as s:
        s.up()
        try:
            names = sc.start_mesh(s.procs, s.lab, (1, 2), sync_options={"commit": "takeover"})
            sc.wait_mesh(s.procs, (1, 2), names)
            spies = []
            for n in (1, 2):
                for pid in descendants([s.procs.get(md.MESHD_LOG.format(n=n)).pid]):
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode()
                    role = "engine" if "meshd.wire.engine" in cmd else "daemon" if "meshd" in cmd \
                        and "health.engine" not in cmd else None
                    if role is None:
                        continue
                    path = files[f"fw{n} {role}"] = f"{out_dir}/fw{n}-{role}.txt"
                    spies.append(subprocess.Popen(
                        ["py-spy", "record", "-r", "200", "-f", "raw", "-d", str(int(seconds + 4)), "-p", str(pid),
                         "-o", path, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1)
            sc.run_churn(s.procs, s.lab, 1, rate, seconds, 2.0, keep_every=100, parts=max(1, -(-int(rate) // 7500)))
            for p in spies:
                p.wait(60)
        finally:
            s.close()
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshlab.churnprofile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--out", default="/tmp/meshd-churn-profile")
    args = ap.parse_args(argv)
    files = profile(args.rate, args.seconds, args.out)
    for node in ("fw1", "fw2"):
        by_stage, total = shares([p for k, p in files.items() if k.startswith(node) and os.path.exists(p)])
        print(f"{node}: {total} active samples (daemon and wire engine)")
        for name, n in by_stage.most_common():
            print(f"  {name:36s} {100 * n / max(1, total):5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
