"""The systemd notify protocol (sd_notify(3)), without libsystemd.

systemd passes a Type=notify service the address of a datagram socket in
NOTIFY_SOCKET (a path, or an abstract socket when it starts with "@") and,
with WatchdogSec=, the watchdog period in WATCHDOG_USEC (and WATCHDOG_PID,
the process meant to ping it). The service sends newline-separated
`KEY=VALUE` lines in one datagram: READY=1, STATUS=..., WATCHDOG=1,
RELOADING=1, STOPPING=1.

Rules this module keeps, because the caller is an event loop that must not
stall and must not die for the sake of a status line:

* a send never blocks: the socket is non-blocking, and a full queue at the
  receiver is a failure like any other;
* a send never raises: failures are counted (`failures`) and the last one is
  kept (`last_error`) for the daemon to log or show;
* without NOTIFY_SOCKET every method is a cheap no-op, so the daemon calls
  them unconditionally whether or not it runs under systemd.

Usage in the daemon:

    notifier = Notifier.from_environment()     # once, at start: scrubs the environment
    ...
    notifier.ready("lan MASTER, srv MASTER; state mesh in sync")
    if notifier.watchdog_interval is not None:
        # every notifier.watchdog_interval seconds, from the event loop
        notifier.watchdog()
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import MutableMapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
ENVIRONMENT_KEYS = (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID)

# systemd reads one notification into a buffer of 4096 bytes (NOTIFY_BUFFER_MAX)
# and drops the rest; a status line is cut well below that so the datagram fits
# with the other keys of the message.
STATUS_MAX_BYTES = 2048
_LINE_BREAKS = re.compile(r"[\r\n\x00]+")


def _one_line(text: str) -> str:
    """`text` as one STATUS= value: line breaks become spaces, cut to STATUS_MAX_BYTES."""
    line = _LINE_BREAKS.sub(" ", str(text)).strip()
    raw = line.encode("utf-8", "replace")
    if len(raw) > STATUS_MAX_BYTES:
        line = raw[:STATUS_MAX_BYTES].decode("utf-8", "ignore")
    return line


def socket_address(value: str) -> str | None:
    """The AF_UNIX address named by NOTIFY_SOCKET, or None if it is not one meshd can use.

    "@name" is the abstract socket "\\0name" (as sd_notify does); an absolute
    path is a filesystem socket. Anything else (a relative path, systemd's
    vsock: addresses for virtual machines) is refused.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to the service manager; see the module docstring.

    Args:
      address: NOTIFY_SOCKET as systemd gave it, or None (not run by systemd).
      watchdog_usec: the watchdog period in microseconds meant for this process,
        or None (no watchdog).

    Attributes:
      sent: notifications delivered to the socket.
      failures: notifications that could not be sent.
      last_error: why the last failure happened (or why NOTIFY_SOCKET or
        WATCHDOG_USEC were unusable), naming the socket; None if nothing failed.
    """

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None):
        self.address = address
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self._target: str | None = None
        self._sock: socket.socket | None = None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        if address:
            self._target = socket_address(address)
            if self._target is None:
                self.last_error = (f"{NOTIFY_SOCKET}={address!r}: not an absolute path nor an "
                                   f"abstract socket (@name); notifications are off")

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None,
                         pid: int | None = None) -> Notifier:
        """A Notifier for what systemd passed in `environ` (default os.environ).

        WATCHDOG_USEC counts only if WATCHDOG_PID is absent or is `pid` (default
        our own pid): the variables may have been inherited from a parent meant
        to ping. The three variables are then removed from `environ`, so the
        hooks and scripts meshd starts cannot speak for it.
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        address = env.get(NOTIFY_SOCKET) or None
        watchdog_usec, problem = _watchdog_for(env.get(WATCHDOG_USEC), env.get(WATCHDOG_PID), pid)
        for key in ENVIRONMENT_KEYS:
            env.pop(key, None)
        notifier = cls(address, watchdog_usec)
        if problem and notifier.last_error is None:
            notifier.last_error = problem
        return notifier

    # ------------------------------------------------------------- state

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (a usable NOTIFY_SOCKET was given)."""
        return self._target is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the period, as sd_watchdog_enabled(3)
        advises), or None when systemd expects none from this process."""
        if self._target is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # ------------------------------------------------------------- messages

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete. True if the notification was sent."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self._send(lines)

    def status(self, text: str) -> bool:
        """A one-line summary for `systemctl status` (line breaks become spaces)."""
        return self._send([f"STATUS={_one_line(text)}"])

    def watchdog(self) -> bool:
        """Ping the watchdog; a no-op when systemd expects no pings from this process."""
        if self.watchdog_interval is None:
            return False
        return self._send(["WATCHDOG=1"])

    def reloading(self) -> bool:
        """A reload starts; systemd >= 253 requires MONOTONIC_USEC with it. Send
        ready() when it is over, whatever its outcome."""
        return self._send(["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"])

    def stopping(self) -> bool:
        """Shutdown begins (the bow-out)."""
        return self._send(["STOPPING=1"])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------- sending

    def _send(self, lines: list[str]) -> bool:
        if self._target is None:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(message, self._target)
        except OSError as e:
            self.failures += 1
            self.last_error = (f"{NOTIFY_SOCKET} {self.address}: cannot send "
                               f"{lines[0].split('=')[0]}: {e.strerror or e}")
            return False
        self.sent += 1
        return True


def _watchdog_for(usec: str | None, watchdog_pid: str | None, pid: int) -> tuple[int | None, str | None]:
    """(watchdog period in µs meant for `pid` or None, why the variables were ignored or None)."""
    if not usec:
        return None, None
    if watchdog_pid:
        if not watchdog_pid.isdigit():
            return None, f"{WATCHDOG_PID}={watchdog_pid!r}: not a process id; watchdog off"
        if int(watchdog_pid) != pid:
            return None, None     # meant for another process: quietly not ours
    if not usec.isdigit() or int(usec) == 0:
        return None, f"{WATCHDOG_USEC}={usec!r}: not a positive number of microseconds; watchdog off"
    return int(usec), None
