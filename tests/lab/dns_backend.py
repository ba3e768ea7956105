"""A DNS backend for the DNS relay's lab test, over UDP and TCP on one port:
every A query is answered with one A record, the backend's own address, so
the client can tell which backend answered.

    python3 dns_backend.py NAME ADDRESS PORT

Stdout: {"event": "ready"} once both sockets listen, then one line per
query, {"event": "query", "transport": "udp"|"tcp", "id": N, "name": ...}:
the ids the backend saw, for the test to compare with the clients' ids.

Messages are built with tests/relay/dnswire.py (struct, apart from
meshd/relay/dns.py), as the relay's unit tests build theirs.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "relay"))
from dnswire import answer_a, frame, message_id, question_of  # noqa: E402

_print_lock = threading.Lock()


def say(event: dict) -> None:
    with _print_lock:
        print(json.dumps(event), flush=True)


def answer(query: bytes, address: str, transport: str) -> bytes | None:
    try:
        msg_id, (name, qtype, _qclass) = message_id(query), question_of(query)
    except (IndexError, UnicodeDecodeError, struct.error):
        return None                           # not a query this server can read: silence
    say({"event": "query", "transport": transport, "id": msg_id, "name": name})
    return answer_a(msg_id, name, address, qtype=qtype)


def serve_udp(sock: socket.socket, address: str) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        out = answer(data, address, "udp")
        if out is not None:
            sock.sendto(out, peer)


def recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_tcp_client(conn: socket.socket, address: str) -> None:
    with conn:
        conn.settimeout(10)
        try:
            while (size := recv_exact(conn, 2)) is not None:
                query = recv_exact(conn, struct.unpack("!H", size)[0])
                out = None if query is None else answer(query, address, "tcp")
                if out is None:
                    return
                conn.sendall(frame(out))
        except OSError:
            return


def main(argv: list[str]) -> int:
    name, address, port = argv[0], argv[1], int(argv[2])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, port))
    tcp.listen(64)
    threading.Thread(target=serve_udp, args=(udp, address), daemon=True).start()
    say({"event": "ready", "name": name, "address": address, "port": port})
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=serve_tcp_client, args=(conn, address), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
