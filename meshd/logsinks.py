"""Where the event log's lines go: stderr (plain or the journal), syslog, a file.

A sink gets finished lines with their syslog priority and raises OSError
when a line could not be written (LogTargetError when a syslog that went
away cannot be reached again); EventLog counts those and never lets the
error reach the daemon.  Sinks are not thread-safe on their own: EventLog
calls them under its lock.

Must not: format events (EventLog does), hide a failed write (it raises, for
EventLog to count), or wait for a stuck syslog longer than SYSLOG_SEND_WAIT_S:
the event loop writes most lines.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
from typing import TextIO

DEV_LOG = "/dev/log"
SYSLOG_IDENT = "meshd"
FACILITY_DAEMON = 3
# How long a line may wait for a busy syslog daemon before it is dropped.  The
# event loop writes most lines: a stuck syslog must not stall the election.
SYSLOG_SEND_WAIT_S = 0.1
# Errors that mean the syslog daemon went away and came back (new socket).
_SYSLOG_RECONNECT = {errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT, errno.ECONNRESET}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class LogTargetError(Exception):
    """A log target cannot be opened; str() names the target and the reason."""


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether `stream` is the journal's stream socket (systemd.exec(5), JOURNAL_STREAM).

    systemd sets JOURNAL_STREAM="DEV:INODE" for the stdout/stderr it connects
    to journald.  The variable is inherited by children whose stderr may point
    elsewhere, hence the comparison with the stream's own fstat().
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class StreamSink:
    """A text stream (stderr by default).  On the journal each line starts with
    `<N>`, which journald strips and stores as the line's priority."""

    def __init__(self, stream: TextIO | None = None, journal: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.journal = stream_is_journal(self.stream) if journal is None else journal

    def write(self, priority: int, line: str) -> None:
        self.stream.write((f"<{priority}>" if self.journal else "") + line + "\n")
        self.stream.flush()

    def reopen(self) -> None:
        """Nothing to reopen: the stream belongs to whoever started meshd."""

    def close(self) -> None:
        """Left open: stderr outlives the log."""

    def describe(self) -> str:
        return "the journal (stderr)" if self.journal else "stderr"


class FileSink:
    """Appends to a file; reopen() starts a new one after logrotate renamed it.

    Each line is one os.write() on an O_APPEND descriptor, so lines stay whole
    even when another process appends to the same file.
    """

    MODE = 0o640

    def __init__(self, path: str):
        self.path = os.path.abspath(path)   # reopen() must not depend on a later chdir
        self.fd = self._open()

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           self.MODE)
        except OSError as e:
            raise LogTargetError(f"log file {self.path}: cannot open: {e.strerror}") from None

    def write(self, priority: int, line: str) -> None:
        data = (line + "\n").encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(self.fd, data):]

    def reopen(self) -> None:
        """Open the path afresh; on failure keep writing to the old file (LogTargetError)."""
        fd = self._open()
        old, self.fd = self.fd, fd
        os.close(old)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def describe(self) -> str:
        return f"file {self.path}"


class SyslogSink:
    """Datagrams to the local syslog socket, as glibc's syslog(3) writes them:
    `<PRI>Mmm dd hh:mm:ss meshd[PID]: line`, facility daemon."""

    def __init__(self, address: str | None = None, ident: str = SYSLOG_IDENT,
                 facility: int = FACILITY_DAEMON):
        self.address = address if address is not None else DEV_LOG
        self.ident = ident
        self.facility = facility
        self.stalled = False     # the last line found the receiver's queue full
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.address)
        except OSError as e:
            sock.close()
            hint = " (is a syslog daemon or journald running?)" if e.errno in (
                errno.ENOENT, errno.ECONNREFUSED) else ""
            raise LogTargetError(f"syslog: cannot connect to {self.address}: "
                                 f"{e.strerror or e}{hint}") from None
        sock.setblocking(False)
        return sock

    def format(self, priority: int, line: str, now: float | None = None) -> bytes:
        t = time.localtime(now)
        stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        head = f"<{self.facility * 8 + priority}>{stamp} {self.ident}[{os.getpid()}]: "
        return (head + line).encode("utf-8", "backslashreplace")

    def write(self, priority: int, line: str) -> None:
        data = self.format(priority, line)
        try:
            self._send(data)
        except OSError as e:
            if e.errno not in _SYSLOG_RECONNECT:
                raise
            self.reopen()   # raises LogTargetError while it is still away: the line is dropped
            self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except BlockingIOError:
            # Wait a little once; while the receiver stays stuck, drop at once.
            if self.stalled or not select.select([], [self.sock], [], SYSLOG_SEND_WAIT_S)[1]:
                self.stalled = True
                raise
            self.sock.send(data)
        self.stalled = False

    def reopen(self) -> None:
        sock = self._connect()
        old, self.sock = self.sock, sock
        old.close()

    def close(self) -> None:
        self.sock.close()

    def describe(self) -> str:
        return f"syslog {self.address}"
