"""A sustained churn of short flows in the conntrack table of the namespace it runs in.

    ip netns exec NS python3 -m meshlab.churn --rate 5000 --seconds 15 [--lifetime-ms 2000]
                                              [--net 3] [--batch 250] [--keep-every 0]

Every 1/(rate/batch) s a batch of new entries is created (the flows of
meshlab.preload, client net 10.NET/16, each index used once), and each batch
is deleted `lifetime-ms` after it was created, as a firewall sees a stream
of short connections all day.  Both go through meshd's own CtCommitter
(ctnetlink create and delete requests, batched), so the daemons under test
read real NEW and DESTROY events.  After `seconds` no more flows are
created; the last batches are still deleted on time, then it ends.  With
`--keep-every K`, every K-th flow is never deleted: what a peer's copy must
hold at the end, exactly (a lost or a stale flow shows).

The generator must not be the bottleneck: it reports the rate it really
reached and how late it fell behind its schedule, so a run that did not
keep up says so.  The output is one JSON line:

    {"event": "done", "rate_asked", "created", "deleted", "kept", "failed", "errors",
     "seconds", "rate", "late_max_s", "t_start", "t_end"}     (time.monotonic())
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque

from meshd.kernel.conntrack import CtCommitter

from .preload import entry


def churn(rate: float, seconds: float, lifetime_s: float = 2.0, net: int = 3, batch: int = 250,
          timeout: int = 120, keep_every: int = 0) -> dict:
    """Create `rate` entries/s for `seconds`, each deleted `lifetime_s` after its creation
    (but every `keep_every`-th, when not 0)."""
    interval = batch / rate
    created = deleted = kept = failed = 0
    errors: dict[str, int] = {}
    alive: deque[tuple[float, list[bytes]]] = deque()      # (created at, attrs), oldest first
    late = 0.0
    next_index = 0

    def count(r) -> int:
        nonlocal failed
        failed += r.failed
        for k, v in r.errors_by_reason.items():
            errors[k] = errors.get(k, 0) + v
        return r.ok

    with CtCommitter() as committer:
        t_start = time.monotonic()
        t_stop = t_start + seconds
        due = t_start
        while True:
            now = time.monotonic()
            while alive and alive[0][0] + lifetime_s <= now:
                _, entries = alive.popleft()
                deleted += count(committer.delete(entries))
            creating = due < t_stop
            if not creating and not alive:
                break
            if creating and due <= now:
                late = max(late, now - due)
                entries = [entry(i, net, timeout) for i in range(next_index, next_index + batch)]
                next_index += batch
                created += count(committer.commit(entries))
                if keep_every:
                    kept += len(entries[::keep_every])
                    entries = [e for j, e in enumerate(entries) if j % keep_every]
                alive.append((now, entries))
                due += interval
                continue
            wake = min(due if creating else float("inf"),
                       alive[0][0] + lifetime_s if alive else float("inf"))
            time.sleep(max(0.0, min(wake - time.monotonic(), 0.05)))
        t_end = time.monotonic()
    span = min(t_end, t_stop) - t_start
    return {"event": "done", "rate_asked": rate, "created": created, "deleted": deleted, "kept": kept,
            "failed": failed, "errors": errors, "seconds": round(t_end - t_start, 3),
            "rate": round(created / span) if span > 0 else None, "late_max_s": round(late, 3),
            "t_start": t_start, "t_end": t_end}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshlab.churn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, required=True, help="new flows per second")
    ap.add_argument("--seconds", type=float, required=True, help="how long new flows are created")
    ap.add_argument("--lifetime-ms", type=float, default=2000, help="each flow's life (default 2000)")
    ap.add_argument("--net", type=int, default=3, help="clients in 10.NET.0.0/16 (default 3)")
    ap.add_argument("--batch", type=int, default=250, help="entries per create batch (default 250)")
    ap.add_argument("--keep-every", type=int, default=0, help="never delete every K-th flow (default 0: none)")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.batch < 1 or not 0 <= args.net <= 255 \
            or args.keep_every < 0:
        ap.error("--rate and --seconds must be positive, --batch >= 1, --net 0..255, --keep-every >= 0")
    result = churn(args.rate, args.seconds, args.lifetime_ms / 1000, args.net, args.batch,
                   keep_every=args.keep_every)
    print(json.dumps(result), flush=True)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
