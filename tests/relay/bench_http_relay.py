#!/usr/bin/env python3
"""Microbenchmark of the HTTP relay: requests/s with keep-alive on localhost.

Not part of the suite (its name is not test_*).  Three processes: a small
asyncio backend (a fixed 200 answer), the relay (serve_http in one trio
process, or HAProxy with one thread for comparison, or nothing: the client
talks to the backend straight), and an asyncio load generator with N
keep-alive connections, each sending a request and waiting for its answer.

    python3 tests/relay/bench_http_relay.py [--target relay|haproxy|direct]
        [--clients 50] [--seconds 5] [--body 100] [--profile] [--pyspy FILE.svg|FILE.txt]
        [--actions]

--profile runs the relay under cProfile and prints where the time goes;
--pyspy records the relay with py-spy (a flame graph, or collapsed
stacks for a .txt); --actions gives the
relay a typical list of request and response actions and X-Forwarded-For.
The load generator is Python too: for HAProxy it is the bottleneck well
before HAProxy is, so the HAProxy figure is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
LOCAL = "127.0.0.1"


def free_port() -> int:
    s = socket.socket()
    s.bind((LOCAL, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- backend -----------------------------------------------------------------

def run_backend(port: int, body_size: int) -> None:
    body = b"b" * body_size
    answer = (b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body)) + body

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffer = b""

        def data_received(self, data):
            # Requests without a body: one answer per blank line that ends a head.
            self.buffer += data
            count = self.buffer.count(b"\r\n\r\n")
            if count:
                self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4:]
                self.transport.write(answer * count)

    async def main():
        server = await asyncio.get_running_loop().create_server(Answer, LOCAL, port, backlog=1024)
        await server.serve_forever()
    asyncio.run(main())


# --- relay -------------------------------------------------------------------

def run_relay(port: int, backend_port: int, with_actions: bool, profile_to: str | None) -> None:
    import trio

    from meshd.relay.http import HttpStats, serve_http
    from meshd.relay.httpspec import HttpAction, HttpSpec
    from meshd.relay.interface import Backend, SessionVars, Timeouts

    spec = HttpSpec()
    if with_actions:
        spec = HttpSpec(request=(HttpAction("header", "expect", "Host", "*"),
                                 HttpAction("header", "change", "X-Relay", "$SERVER_ADDR"),
                                 HttpAction("cookie", "hash", "SID"),
                                 HttpAction("path", "filter", "/admin*")),
                        response=(HttpAction("header", "remove", "Server"),),
                        forwarded_for=True)
    timeouts = Timeouts()
    stats = HttpStats()

    class Direct:
        async def connect(self, hash_key=None):
            stream = await trio.open_tcp_stream(LOCAL, backend_port)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return stream, Backend("b", LOCAL, backend_port)

        def pick_datagram(self, hash_key=None):
            return Backend("b", LOCAL, backend_port)

        def log(self, event, level="info", **fields):
            pass

    upstream = Direct()

    async def session(stream):
        peer = stream.socket.getpeername()
        here = stream.socket.getsockname()
        await serve_http(stream, spec, upstream, SessionVars(peer[0], peer[1], here[0], here[1], 600),
                         timeouts, stats)

    async def main():
        await trio.serve_tcp(session, port, host=LOCAL, backlog=1024)

    if profile_to is None:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        trio.run(main)
        return
    import cProfile
    profiler = cProfile.Profile()

    def stop(*_):
        profiler.disable()
        profiler.dump_stats(profile_to)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    profiler.enable()
    trio.run(main)


HAPROXY_CFG = """
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend relay
    bind {local}:{port}
    default_backend web
backend web
    server b {local}:{backend_port}
"""


# --- load --------------------------------------------------------------------

def run_load(port: int, clients: int, seconds: float, out) -> None:
    request = b"GET /index.html HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\n\r\n"

    async def one(deadline: float, latencies: list):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        count = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            count += 1
        writer.close()
        return count

    async def main():
        # warm up: open the connections, one request each
        deadline = time.monotonic() + seconds
        latencies: list[float] = []
        counts = await asyncio.gather(*(one(deadline, latencies) for _ in range(clients)))
        return sum(counts), latencies

    started = time.monotonic()
    total, latencies = asyncio.run(main())
    elapsed = time.monotonic() - started
    latencies.sort()
    out.send({"requests": total, "seconds": elapsed, "rps": total / elapsed,
              "p50_ms": 1000 * latencies[len(latencies) // 2],
              "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
              "mean_ms": 1000 * statistics.fmean(latencies)})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOCAL, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("relay", "haproxy", "direct"), default="relay")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--body", type=int, default=100)
    ap.add_argument("--actions", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--pyspy", metavar="FILE")
    args = ap.parse_args()

    ctx = multiprocessing.get_context("spawn")
    backend_port, relay_port = free_port(), free_port()
    procs = [ctx.Process(target=run_backend, args=(backend_port, args.body), daemon=True)]
    procs[0].start()
    wait_listening(backend_port)
    haproxy = spy = None
    measured_pid = None
    profile_to = tempfile.mktemp(suffix=".prof") if args.profile else None
    port = backend_port
    if args.target == "relay":
        relay = ctx.Process(target=run_relay, args=(relay_port, backend_port, args.actions, profile_to),
                            daemon=True)
        relay.start()
        procs.append(relay)
        measured_pid = relay.pid
        port = relay_port
        wait_listening(port)
        if args.pyspy:
            fmt = ["-f", "raw"] if args.pyspy.endswith(".txt") else []
            spy = subprocess.Popen(["py-spy", "record", *fmt, "-o", args.pyspy, "-p", str(relay.pid),
                                    "-d", str(int(args.seconds) + 1)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elif args.target == "haproxy":
        binary = shutil.which("haproxy")
        if binary is None:
            raise SystemExit("no haproxy binary (apt-get install haproxy)")
        cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
        cfg.write(HAPROXY_CFG.format(local=LOCAL, port=relay_port, backend_port=backend_port))
        cfg.close()
        haproxy = subprocess.Popen([binary, "-db", "-f", cfg.name])
        measured_pid = haproxy.pid
        port = relay_port
        wait_listening(port)
    try:
        receive, send = ctx.Pipe(duplex=False)
        load = ctx.Process(target=run_load, args=(port, args.clients, args.seconds, send))
        cpu_before = cpu_seconds(measured_pid) if measured_pid else 0.0
        load.start()
        result = receive.recv()
        cpu = cpu_seconds(measured_pid) - cpu_before if measured_pid else 0.0
        load.join()
    finally:
        if spy is not None:
            spy.wait(timeout=30)
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait()
        for p in procs:
            p.terminate()
            p.join(timeout=10)
    print(f"{args.target}{' +actions' if args.actions else ''}: {args.clients} clients, "
          f"{result['requests']} requests in {result['seconds']:.1f} s: {result['rps']:.0f} req/s, "
          f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    if cpu:
        # On a shared machine the wall-clock rate depends on the neighbours;
        # requests per CPU second of the relay's process does much less.
        print(f"  relay process CPU {cpu:.2f} s: {result['requests'] / cpu:.0f} requests per CPU second, "
              f"{1e6 * cpu / result['requests']:.0f} us per request")
    if profile_to:
        import pstats
        stats = pstats.Stats(profile_to)
        stats.sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_TOP", "25")))
        os.unlink(profile_to)


if __name__ == "__main__":
    main()
