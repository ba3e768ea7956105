"""A tiny HTTP backend for the load-balancing lab: answers every request with
its own name, so a client can count where its connections went.

    ip netns exec NS python3 -m meshlab.backends NAME ADDRESS [--port 80]

`GET /health` answers 200 "ok NAME"; anything else 200 "NAME".  One process
per backend, so a scenario can kill one (SIGKILL) and the kernel then answers
its port with resets, as a crashed web server's would.  Prints one JSON line
{"event": "ready", ...} once listening.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading


def serve(name: str, address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(128)
    print(json.dumps({"event": "ready", "name": name, "address": address, "port": port}), flush=True)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_answer, args=(conn, name), daemon=True).start()


def _answer(conn: socket.socket, name: str) -> None:
    with conn:
        conn.settimeout(5)
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b"/"
            body = (f"ok {name}\n" if path == b"/health" else f"{name}\n").encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        except OSError:
            return


def http_get(ns_socket_factory, address: str, port: int = 80, path: str = "/", timeout: float = 2.0) -> str:
    """GET path from address:port with a socket made by ns_socket_factory(family); the body."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = ns_socket_factory(family)
    try:
        s.settimeout(timeout)
        s.connect((address, port))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise OSError(f"unexpected answer {head[:40]!r}")
    return body.decode().strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshlab.backends", description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("address")
    ap.add_argument("--port", type=int, default=80)
    args = ap.parse_args(argv)
    serve(args.name, args.address, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
