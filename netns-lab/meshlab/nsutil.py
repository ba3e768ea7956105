"""Small helpers to act inside a named network namespace from this process.

`setns(2)` with CLONE_NEWNET changes the namespace of the calling *thread* only,
so `in_netns` runs a function in a short-lived thread that first joins the
namespace.  A socket keeps the namespace it was created in, so a socket made
there can be used from any thread afterwards (close it: an open socket keeps
the namespace alive after `ip netns del`).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from typing import Any, Callable

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(ns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run fn(*args, **kwargs) in a fresh thread that has joined namespace `ns`."""
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(os.path.join(NETNS_RUN_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def ns_socket(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `ns` (usable from any thread)."""
    return in_netns(ns, socket.socket, family, type, proto)


def tcp_connect(ns: str, host: str, port: int, timeout: float = 2.0,
                payload: bytes = b"ping\n") -> bytes:
    """Connect from `ns` to host:port, send payload, return what comes back.

    Raises OSError (ConnectionRefused, timeout...) when the connection fails.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = ns_socket(ns, family, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


class EchoServer:
    """A TCP echo server listening inside a namespace, served by threads of this process."""

    def __init__(self, ns: str, host: str, port: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = ns_socket(ns, family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"echo-{ns}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> "EchoServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
