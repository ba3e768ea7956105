"""Long-lived TCP flows that keep talking: an echo server and a client of N flows.

Run each side inside its namespace, one process each (selectors, no threads):

    ip netns exec SRV python3 -m meshlab.flows server [--port 7010]
    ip netns exec CLI python3 -m meshlab.flows client HOST [--port 7010] [--flows 100]
                                                   [--interval-ms 10] [--duration S]

The server echoes whatever it receives.  The client opens --flows connections
to HOST, then on every tick (--interval-ms) sends a 16-byte message on each
flow that has its previous answer back, and records when each answer
completes a round trip.  A flow whose answer is late (its packets are being
dropped, TCP is retransmitting) simply waits: the gap of a flow is the longest
interval between two successful round trips.

Both print JSON lines on stdout:
  {"event": "ready", "time": T, ...}            listening / every flow did one round trip
  {"event": "result", "time": T, "flows": [...]} client, on SIGTERM/SIGINT or after --duration

Each flow in the result: {"id", "sport", "round_trips", "first_ok", "last_ok",
"max_gap_ms", "gap_from", "gap_to", "error"} (times are time.monotonic() of
this machine, the same clock in every namespace).  A flow is alive at the
end if its error is null and its last round trip is recent.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import signal
import socket
import struct
import sys
import time

MSG = struct.Struct("!QQ")          # flow id, message number: 16 bytes
DEFAULT_PORT = 7010


class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop()


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ server


def serve(host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    _emit({"event": "ready", "time": time.monotonic(), "port": port})
    accepted = 0
    try:
        while True:
            for key, _ in sel.select():
                if key.data is None:
                    try:
                        conn, _addr = lsock.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                    accepted += 1
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                    if data:
                        conn.sendall(data)          # tiny messages: never blocks in practice
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
                sel.unregister(conn)
                conn.close()
    except _Stop:
        pass
    finally:
        _emit({"event": "stopped", "time": time.monotonic(), "accepted": accepted})
    return 0


# ------------------------------------------------------------------ client


class Flow:
    __slots__ = ("id", "sock", "sport", "waiting", "sent_at", "next_send", "buf", "n", "round_trips",
                 "first_ok", "last_ok", "max_gap", "gap_from", "gap_to", "error")

    def __init__(self, fid: int, sock: socket.socket):
        self.id = fid
        self.sock = sock
        self.sport = sock.getsockname()[1]
        self.waiting = False
        self.sent_at = 0.0
        self.next_send = 0.0
        self.buf = b""
        self.n = 0
        self.round_trips = 0
        self.first_ok: float | None = None
        self.last_ok: float | None = None
        self.max_gap = 0.0
        self.gap_from: float | None = None
        self.gap_to: float | None = None
        self.error: str | None = None

    def done(self, now: float) -> None:
        if self.last_ok is not None and now - self.last_ok > self.max_gap:
            self.max_gap = now - self.last_ok
            self.gap_from, self.gap_to = self.last_ok, now
        if self.first_ok is None:
            self.first_ok = now
        self.last_ok = now
        self.round_trips += 1

    def as_dict(self) -> dict:
        return {"id": self.id, "sport": self.sport, "round_trips": self.round_trips,
                "first_ok": self.first_ok, "last_ok": self.last_ok,
                "max_gap_ms": round(self.max_gap * 1000, 1), "gap_from": self.gap_from,
                "gap_to": self.gap_to, "error": self.error}


def _connect(host: str, port: int, nflows: int, timeout: float) -> list[Flow]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    flows = []
    for i in range(nflows):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        flows.append(Flow(i, s))
    return flows


def client(host: str, port: int, nflows: int, interval: float, duration: float | None,
           connect_timeout: float) -> int:
    try:
        flows = _connect(host, port, nflows, connect_timeout)
    except OSError as e:
        _emit({"event": "error", "time": time.monotonic(), "error": f"connect: {e}"})
        return 1
    sel = selectors.DefaultSelector()
    for f in flows:
        sel.register(f.sock, selectors.EVENT_READ, f)
    live = len(flows)
    ready = False
    t0 = time.monotonic()
    tick = t0
    end = None
    try:
        while True:
            now = time.monotonic()
            if now >= tick:
                for f in flows:
                    if f.waiting or f.error:
                        continue
                    f.n += 1
                    try:
                        f.sock.send(MSG.pack(f.id, f.n))
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        f.error = errno.errorcode.get(e.errno, str(e))
                        sel.unregister(f.sock)
                        live -= 1
                        continue
                    f.waiting, f.sent_at = True, now
                tick += interval
                if tick < now:                 # fell behind: do not burst to catch up
                    tick = now + interval
            for key, _ in sel.select(max(0.0, tick - time.monotonic())):
                f = key.data
                try:
                    data = f.sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    data, f.error = None, errno.errorcode.get(e.errno, str(e))
                if not data:
                    f.error = f.error or "closed"
                    sel.unregister(f.sock)
                    live -= 1
                    continue
                f.buf += data
                while len(f.buf) >= MSG.size:
                    f.buf = f.buf[MSG.size:]
                    f.waiting = False
                    f.done(time.monotonic())
            if not ready and all(f.round_trips for f in flows):
                ready = True
                _emit({"event": "ready", "time": time.monotonic(), "flows": len(flows),
                       "connect_s": round(time.monotonic() - t0, 3)})
                if duration is not None:
                    end = time.monotonic() + duration
            if end is not None and time.monotonic() >= end:
                break
            if live == 0:
                break
    except _Stop:
        pass
    now = time.monotonic()
    _emit({"event": "result", "time": now, "flows": [f.as_dict() for f in flows]})
    for f in flows:
        f.sock.close()
    return 0


def summarize(result: dict, t_fail: float | None = None, alive_within: float = 1.0) -> dict:
    """Survivors and gaps from a client result.

    A flow survived if it has no error and did a round trip in the last
    `alive_within` seconds before the result (and, given t_fail, after it).
    Gaps are over the survivors.
    """
    t_end = result["time"]
    flows = result["flows"]
    alive = [f for f in flows if f["error"] is None and f["last_ok"] is not None
             and f["last_ok"] >= t_end - alive_within and (t_fail is None or f["last_ok"] > t_fail)]
    gaps = sorted(f["max_gap_ms"] for f in alive)
    out = {"flows": len(flows), "survived": len(alive),
           "reset": sum(1 for f in flows if f["error"] not in (None,)),
           "median_gap_ms": None, "max_gap_ms": None, "min_gap_ms": None}
    if gaps:
        mid = len(gaps) // 2
        out["median_gap_ms"] = round(gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2, 1)
        out["max_gap_ms"] = gaps[-1]
        out["min_gap_ms"] = gaps[0]
    if t_fail is not None:
        starts = [(f["gap_from"] - t_fail) * 1000 for f in alive if f["gap_from"] is not None]
        ends = [(f["gap_to"] - t_fail) * 1000 for f in alive if f["gap_to"] is not None]
        if ends:
            out["first_resumed_ms"] = round(min(ends), 1)
            out["last_resumed_ms"] = round(max(ends), 1)
        if starts:
            out["gap_start_ms"] = [round(min(starts), 1), round(max(starts), 1)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshlab.flows", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("--port", type=int, default=DEFAULT_PORT)
    c.add_argument("--flows", type=int, default=100)
    c.add_argument("--interval-ms", type=float, default=10.0)
    c.add_argument("--duration", type=float, default=None, help="seconds after ready (default: until SIGTERM)")
    c.add_argument("--connect-timeout", type=float, default=5.0)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if args.mode == "server":
        return serve(args.host, args.port)
    return client(args.host, args.port, args.flows, args.interval_ms / 1000, args.duration,
                  args.connect_timeout)


if __name__ == "__main__":
    sys.exit(main())
