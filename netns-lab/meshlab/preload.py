"""Inject synthetic conntrack entries into the table of the namespace it runs in.

    ip netns exec NS python3 -m meshlab.preload COUNT [--net 1] [--first 0]
                                                [--rate 0] [--batch 2000] [--timeout 3600]

Entries look like forwarded TCP flows, so meshd's replication filter keeps
them: client 10.NET.H.L (H.L from i // 50000 + 1) port 1024 + i % 50000 to a
server 198.51.100.(200 + i % 50) port 443, ESTABLISHED, SEEN_REPLY|ASSURED,
with window scale 7 both ways.  None of these addresses is a lab firewall's
or a virtual address.  Flow i of `--net N` is the same key in every run, so
a second run with the same arguments updates instead of adding.

They are created through meshd's own CtCommitter (batched ctnetlink
create-or-update requests), `--batch` entries per commit; `--rate` (entries/s,
0 = as fast as possible) paces the batches.  The output is one JSON line:

    {"event": "done", "count", "ok", "failed", "errors", "seconds", "rate",
     "t_start", "t_end"}                     (time.monotonic() of this machine)
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

from meshd.kernel import ctnetlink as ct
from meshd.kernel.conntrack import CtCommitter
from meshd.kernel.ctnetlink.tuples import _encode_tuple, _Tuple

PER_SOURCE = 50000                       # source ports per client address
SERVER_NET = "198.51.100."
SERVER_FIRST, SERVERS = 200, 50          # 198.51.100.200 .. .249
TCP_ESTABLISHED = 3
STATUS = ct.IPS_SEEN_REPLY | ct.IPS_ASSURED | ct.IPS_CONFIRMED


def client_address(net: int, i: int) -> str:
    h = i // PER_SOURCE + 1
    return f"10.{net}.{h >> 8 & 255}.{h & 255}"


def entry(i: int, net: int = 1, timeout: int = 3600) -> bytes:
    """attrs of synthetic flow i of client net 10.NET/16 (the shape a kernel dump has)."""
    src = socket.inet_aton(client_address(net, i))
    dst = socket.inet_aton(f"{SERVER_NET}{SERVER_FIRST + i % SERVERS}")
    sport = struct.pack("!H", 1024 + i % PER_SOURCE)
    dport = struct.pack("!H", 443)
    orig = _Tuple(src, dst, 6, sport, dport, None, None, None)
    reply = _Tuple(dst, src, 6, dport, sport, None, None, None)
    tcp = ct.nest(ct.CTA_PROTOINFO_TCP, ct.nla(ct.CTA_PROTOINFO_TCP_STATE, bytes((TCP_ESTABLISHED,))),
                  ct.nla(ct.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, b"\x07"),
                  ct.nla(ct.CTA_PROTOINFO_TCP_WSCALE_REPLY, b"\x07"),
                  ct.nla(ct.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, b"\x23\x00"),
                  ct.nla(ct.CTA_PROTOINFO_TCP_FLAGS_REPLY, b"\x23\x00"))
    return b"".join((bytes((socket.AF_INET, 0, 0, 0)),
                     _encode_tuple(ct.CTA_TUPLE_ORIG, orig),
                     _encode_tuple(ct.CTA_TUPLE_REPLY, reply),
                     ct.nla(ct.CTA_STATUS, struct.pack("!I", STATUS)),
                     ct.nla(ct.CTA_MARK, struct.pack("!I", 0)),
                     ct.nla(ct.CTA_TIMEOUT, struct.pack("!I", timeout)),
                     ct.nest(ct.CTA_PROTOINFO, tcp)))


def inject(count: int, net: int = 1, first: int = 0, rate: float = 0, batch: int = 2000,
           timeout: int = 3600) -> dict:
    """Create entries first..first+count-1 in this thread's namespace; the result dict."""
    entries = [entry(i, net, timeout) for i in range(first, first + count)]
    ok = failed = 0
    errors: dict[str, int] = {}
    with CtCommitter() as committer:
        t_start = time.monotonic()
        for lo in range(0, count, batch):
            chunk = entries[lo:lo + batch]
            if rate > 0:                      # pace: batch k may start at t_start + lo / rate
                wait = t_start + lo / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            r = committer.commit(chunk)
            ok += r.ok
            failed += r.failed
            for k, v in r.errors_by_reason.items():
                errors[k] = errors.get(k, 0) + v
        t_end = time.monotonic()
    secs = t_end - t_start
    return {"event": "done", "count": count, "ok": ok, "failed": failed, "errors": errors,
            "seconds": round(secs, 4), "rate": round(count / secs) if secs > 0 else None,
            "t_start": t_start, "t_end": t_end}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshlab.preload", description=__doc__.split("\n\n")[0])
    ap.add_argument("count", type=int)
    ap.add_argument("--net", type=int, default=1, help="clients in 10.NET.0.0/16 (default 1)")
    ap.add_argument("--first", type=int, default=0, help="index of the first flow (default 0)")
    ap.add_argument("--rate", type=float, default=0, help="entries per second (default 0: at once)")
    ap.add_argument("--batch", type=int, default=2000, help="entries per commit (default 2000)")
    ap.add_argument("--timeout", type=int, default=3600, help="entry timeout in seconds (default 3600)")
    args = ap.parse_args(argv)
    if not 0 <= args.net <= 255 or args.count < 0 or args.batch < 1:
        ap.error("--net must be 0..255, COUNT >= 0, --batch >= 1")
    result = inject(args.count, args.net, args.first, args.rate, args.batch, args.timeout)
    print(json.dumps(result), flush=True)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
