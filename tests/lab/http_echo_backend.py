"""An HTTP/1.1 backend for the HTTP relay's lab test: answers every request
with what it received, so the test sees each relay action on the wire.

    python3 http_echo_backend.py NAME ADDRESS PORT

The answer's body is JSON: {"backend", "peer", "connection", "request",
"method", "target", "version", "headers": [[name, value], ...],
"body_bytes"}; `connection` numbers the TCP connections this backend
accepted, `request` the requests on that one (keep-alive seen from the
backend's side). The answer also carries `Server: echo` and
`X-Internal-Token: secret`, for the relay's response actions to remove.

Stdout: one JSON line {"event": "ready"} once listening, then
{"event": "request", "target": ...} per request other than /health, so the
test can tell that a request never reached any backend.

Parses with its own few lines, not h11: a test whose backend shared the
relay's parser would agree with any bug in it.
"""

from __future__ import annotations

import json
import socket
import sys
import threading

MAX_HEAD = 65536
_print_lock = threading.Lock()
_connections = 0


def say(event: dict) -> None:
    with _print_lock:
        print(json.dumps(event), flush=True)


def read_head(conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) of the next request, None at the end of the connection."""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            return None
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def serve_connection(conn: socket.socket, peer, name: str, serial: int) -> None:
    buffer, number = b"", 0
    with conn:
        conn.settimeout(10)
        try:
            while (got := read_head(conn, buffer)) is not None:
                head, buffer = got
                number += 1
                line, *lines = head.decode("latin-1").split("\r\n")
                method, target, version = line.split(" ", 2)
                headers = [[k, v.strip()] for k, _, v in (h.partition(":") for h in lines)]
                fields = {k.lower(): v for k, v in headers}
                length = int(fields.get("content-length", "0"))
                while len(buffer) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer[length:]
                if target != "/health":
                    say({"event": "request", "backend": name, "target": target})
                body = json.dumps({"backend": name, "peer": f"{peer[0]}:{peer[1]}",
                                   "connection": serial, "request": number, "method": method,
                                   "target": target, "version": version, "headers": headers,
                                   "body_bytes": length}).encode()
                close = version == "HTTP/1.0" or fields.get("connection", "").lower() == "close"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Server: echo\r\nX-Internal-Token: secret\r\n"
                             + f"X-Backend: {name}\r\nContent-Length: {len(body)}\r\n".encode()
                             + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body)
                if close:
                    return
        except (OSError, ValueError):
            return


def main(argv: list[str]) -> int:
    global _connections
    name, address, port = argv[0], argv[1], int(argv[2])
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(128)
    say({"event": "ready", "name": name, "address": address, "port": port})
    while True:
        conn, peer = sock.accept()
        _connections += 1
        threading.Thread(target=serve_connection, args=(conn, peer, name, _connections),
                         daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
