"""Issue 14's levers one at a time: decode, read, send, each in Python and with the accelerator.

    python3 -m meshlab.levers [--repeat 5] [--events 20000] [--json]

Run from netns-lab/ (the repository's meshd is imported). No root, no
namespace: decode works on real messages (proto/vectors/ctnetlink.json,
captured from a kernel), read on an AF_UNIX datagram socketpair filled with
them (the netlink socket's own cost is in tests/lab/test_conntrack_lab.py's
test_reader_throughput, which runs with both), send over loopback UDP
(which, like the sync link's veth, delivers to the receiver inside the
sender's system call). Each figure is the range over the repeats, in µs per
event or per datagram: the VM is shared, read the low end.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from meshd import fastct  # noqa: E402
from meshd.kernel.conntrack import CtEventReader  # noqa: E402
from meshd.kernel.ctnetlink import events  # noqa: E402
from meshd.sync.sender import DatagramSender  # noqa: E402

VECTORS = json.loads((REPO / "proto/vectors/ctnetlink.json").read_text())["vectors"]
CHURN = ("ipv4_udp_new", "destroy_expired", "ipv4_tcp_established", "destroy_request")   # a churn's kinds
FRAME = 1280                # bytes: a sync frame of the churn row (4.1 MB/s over 3,241 frames/s)


def messages(n: int) -> list[bytes]:
    """The four kinds cycled: every message a change of shape for events.py's plans."""
    by_name = {v["name"]: bytes.fromhex(v["hex"]) for v in VECTORS}
    kinds = [by_name[name] for name in CHURN]
    return [kinds[i % len(kinds)] for i in range(n)]


def churn_order(n: int, run: int = 250) -> list[bytes]:
    """As the churn generator makes them: 250 NEWs, then 250 DESTROYs (a change of shape per run)."""
    by_name = {v["name"]: bytes.fromhex(v["hex"]) for v in VECTORS}
    new, gone = by_name["ipv4_udp_new"], by_name["destroy_expired"]
    return [(new if (i // run) % 2 == 0 else gone) for i in range(n)]


def timed(fn, repeat: int, per: int) -> list[float]:
    """µs per item of fn() (which handles `per` items), each repeat."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6 / per)
    return out


def decode(fast, msgs: list[bytes], repeat: int) -> dict:
    def py():
        out: list = []
        for m in msgs:
            events.decode_into(m, out)

    def c():
        out: list = []
        for m in msgs:
            fast.decode_into(m, out)
    r = {"python": timed(py, repeat, len(msgs))}
    if fast is not None:
        r["c"] = timed(c, repeat, len(msgs))
    return r


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
    b.setblocking(False)
    return a, b


def read(fast, msgs: list[bytes], repeat: int, burst: int = 256, chunk: int = 2000) -> dict:
    """read_burst over a full socket: recv only (the Python loop without decode), and
    the whole read_burst (read + decode + counters) with each implementation.

    The socket is filled with `chunk` datagrams at a time (what its send
    buffer holds), then read until empty."""
    results: dict = {}
    a, b = _pair()
    try:
        def fill(part):
            for m in part:
                a.send(m)

        def recv_only():
            buf = bytearray(1 << 16)
            view = memoryview(buf)
            while True:
                try:
                    n = b.recv_into(buf, 0, socket.MSG_TRUNC)
                except BlockingIOError:
                    return
                bytes(view[:n])
        runs = [("python recv_into only", recv_only)]
        for name, impl in (("python read_burst", None), ("c read_burst", fast)):
            if name.startswith("c") and fast is None:
                continue
            reader = CtEventReader(sock=b, fast=impl, burst=burst)

            def whole(reader=reader):
                while reader.read_burst()[0]:
                    pass
            runs.append((name, whole))
        for name, fn in runs:
            samples = []
            for _ in range(repeat):
                spent = 0.0
                for start in range(0, len(msgs), chunk):
                    fill(msgs[start:start + chunk])
                    spent += timed(fn, 1, 1)[0]
                samples.append(spent / len(msgs))
            results[name] = samples
    finally:
        a.close()
        b.close()
    return results


def send(fast, repeat: int, per_call: int, total: int = 8192) -> dict:
    """total datagrams of FRAME bytes to a loopback UDP socket, per_call at a time."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    port = rx.getsockname()[1]
    data = bytes(FRAME)
    batch = [(data, "127.0.0.1")] * per_call
    results: dict = {}
    try:
        def drain():
            while True:
                try:
                    rx.recv(4096)
                except BlockingIOError:
                    return

        def sendto_loop():
            for _ in range(total // per_call):
                for d, addr in batch:
                    tx.sendto(d, (addr, port))

        runs = [("python sendto", sendto_loop)]
        for name, impl in (("python DatagramSender", None), ("c DatagramSender (sendmmsg)", fast)):
            if impl is None and name.startswith("c"):
                continue
            sender = DatagramSender(tx, socket.AF_INET, fast=impl)

            def via_sender(sender=sender):
                for _ in range(total // per_call):
                    assert not sender.send(batch, port)
            runs.append((name, via_sender))
        for name, fn in runs:
            samples = []
            for _ in range(repeat):
                drain()
                samples += timed(fn, 1, total // per_call * per_call)
                drain()
            results[name] = samples
    finally:
        rx.close()
        tx.close()
    return results


def show(title: str, results: dict) -> None:
    print(title)
    for name, samples in results.items():
        print(f"  {name:32s} {min(samples):6.2f} .. {max(samples):6.2f} µs  (median {statistics.median(samples):.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 3, 6, 16, 64],
                   help="datagrams per send batch")
    p.add_argument("--only", choices=["decode", "read", "send"], help="one lever")
    args = p.parse_args()
    fast = fastct.accelerator()
    msgs = messages(args.events)
    out = {"implementation": "c" if fast else "python only (meshd._fastct not built)"}
    if args.only in (None, "decode"):
        out["decode"] = decode(fast, msgs, args.repeat)
        out["decode in the churn's order"] = decode(fast, churn_order(args.events), args.repeat)
    if args.only in (None, "read"):
        out["read"] = read(fast, msgs, args.repeat)
    if args.only in (None, "send"):
        out["send"] = {n: send(fast, args.repeat, n) for n in args.batches}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"accelerator: {out['implementation']}; {args.events} messages ({', '.join(CHURN)}), "
          f"{args.repeat} repeats; µs per event / datagram, min .. max")
    if "decode" in out:
        show("decode (decode_into per datagram; four shapes cycled)", out["decode"])
        show("decode (runs of 250 NEW, 250 DESTROY, as the churn)", out["decode in the churn's order"])
    if "read" in out:
        show("read (a full socket; read_burst = read + decode + counters)", out["read"])
    for n, r in out.get("send", {}).items():
        show(f"send ({FRAME}-byte datagrams to 127.0.0.1, {n} per batch)", r)


if __name__ == "__main__":
    main()
