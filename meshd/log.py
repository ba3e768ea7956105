"""One line per event: `key=value` text (default) or JSON, with a syslog priority.

Values with spaces, quotes or `=` are quoted so a line stays machine-readable
(`grep event=state`, `jq`).  The logger never raises: a logging failure must
not take the daemon down; lines that could not be written are counted and
reported by the next line that could (event=log_lines_dropped).

It is called from the trio loop and from worker threads (address renewal,
trio.to_thread): a line is formatted and written under a lock, whole.
Where the lines go is a sink (meshd/logsinks.py), chosen by --log-target.

Must not: raise from a log call (a line that cannot be written is counted and
reported later), or import anything from meshd but its sinks: every floor
logs through it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, TextIO

from .logsinks import FileSink, LogTargetError, StreamSink, SyslogSink

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# syslog severities (RFC 5424): what journald and syslog daemons file the line under.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3}
TARGETS = "stderr, syslog or file:PATH"

__all__ = ["LEVELS", "PRIORITIES", "EventLog", "LogTargetError", "RateLimiter",
           "RejectLog", "open_event_log", "parse_log_target"]


def _fmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        return json.dumps(text)
    return text


def parse_log_target(text: str) -> tuple[str, str | None]:
    """("stderr", None), ("syslog", None) or ("file", PATH); ValueError names what is wrong."""
    if text in ("stderr", "syslog"):
        return text, None
    kind, sep, path = text.partition(":")
    if kind == "file" and sep:
        if not path:
            raise ValueError("file: needs a path, as in file:/var/log/meshd.log")
        return "file", path
    raise ValueError(f"expected {TARGETS}, found {text!r}")


def open_event_log(target: str = "stderr", fmt: str = "text", level: str = "info",
                   syslog_address: str | None = None) -> EventLog:
    """The EventLog for a --log-target; LogTargetError if it cannot be opened.

    syslog_address: the syslog socket (default /dev/log, logsinks.DEV_LOG).
    """
    kind, path = parse_log_target(target)
    if kind == "syslog":
        sink: StreamSink | FileSink | SyslogSink = SyslogSink(syslog_address)
    elif kind == "file":
        sink = FileSink(path)
    else:
        sink = StreamSink()
    return EventLog(fmt=fmt, level=level, sink=sink)


class EventLog:
    """`log(event, level="info", **fields)` writes one line; see the module docstring."""

    def __init__(self, stream: TextIO | None = None, fmt: str = "text", level: str = "info", *,
                 sink: StreamSink | FileSink | SyslogSink | None = None):
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {fmt!r}")
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
        self.sink = sink if sink is not None else StreamSink(stream)
        self.fmt = fmt
        self.threshold = LEVELS[level]
        self.dropped = 0             # lines lost since the last one written
        # Reentrant: a signal handler or a logging call made while writing
        # (same thread) must not deadlock the daemon.
        self._lock = threading.RLock()

    def enabled(self, level: str) -> bool:
        return LEVELS.get(level, LEVELS["info"]) >= self.threshold

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        if not self.enabled(level):
            return
        with self._lock:
            try:
                line = self.format(event, level, fields)
                if self.dropped:
                    self.sink.write(PRIORITIES["warning"], self.format(
                        "log_lines_dropped", "warning",
                        {"count": self.dropped, "target": self.sink.describe()}))
                    self.dropped = 0
                self.sink.write(PRIORITIES.get(level, PRIORITIES["info"]), line)
            except Exception:  # noqa: BLE001 -- a logging failure must not take the daemon down
                self.dropped += 1

    def format(self, event: str, level: str, fields: dict[str, Any]) -> str:
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        if self.fmt == "json":
            return json.dumps({"ts": ts, "level": level, "event": event, **fields}, default=str)
        parts = [f"ts={ts}", f"level={level}", f"event={event}"]
        parts += [f"{k}={_fmt_value(v)}" for k, v in fields.items() if v is not None]
        return " ".join(parts)

    def reopen(self) -> bool:
        """Reopen the target (a file after logrotate, on SIGHUP); never raises.

        On failure the old file stays in use and event=log_reopen_failed says why.
        """
        with self._lock:
            try:
                self.sink.reopen()
                return True
            except Exception as e:  # noqa: BLE001 -- LogTargetError, or anything else: never raise
                error = str(e)
        self("log_reopen_failed", level="error", target=self.sink.describe(), error=error)
        return False

    def close(self) -> None:
        with self._lock:
            try:
                self.sink.close()
            except OSError:
                pass


class RateLimiter:
    """Lets the first event of a key through, then at most one per `period` seconds.

    Keys must come from a bounded set (RejectLog keys by reason, never by
    source address): a key is remembered for as long as the limiter lives.
    """

    def __init__(self, period: float = 10.0):
        self.period = period
        self.last: dict[Any, float] = {}
        self.suppressed: dict[Any, int] = {}

    def allow(self, key: Any, now: float) -> tuple[bool, int]:
        """(log it?, how many were suppressed since the last logged one)."""
        last = self.last.get(key)
        if last is not None and now - last < self.period:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False, 0
        self.last[key] = now
        return True, self.suppressed.pop(key, 0)


class RejectLog:
    """The log lines of rejected input (adverts, sync frames), bounded per reason.

    Forged datagrams can arrive at line rate, each from a new source address:
    limiting per (reason, source) would still give one line per packet.  So
    the first reject of a reason is logged, then at most one line per
    `period` seconds for that reason, whatever the source; a line let through
    says how many of its reason were suppressed since the previous one
    (`suppressed=N`).  The reasons are the cores' counter names, a fixed set,
    so the state here is bounded too.

    The counts stay exact: `stats()` gives, per reason, the rejects seen, the
    lines logged and the lines suppressed (seen = logged + suppressed).  The
    cores count the rejects themselves; this counts what the log did with
    them.
    """

    def __init__(self, log: Any, event: str, period: float = 10.0, level: str = "warning"):
        self.log = log
        self.event = event
        self.level = level
        self.limiter = RateLimiter(period)
        self.seen: dict[str, int] = {}
        self.logged: dict[str, int] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, reason: str, now: float, count: int = 1, **fields: Any) -> bool:
        """`count` rejects of `reason` at `now` (more than one: refused together,
        reported by the wire engine); True if a line was written for them."""
        self.seen[reason] = self.seen.get(reason, 0) + count
        ok, before = self.limiter.allow(reason, now)
        if not ok:
            self.suppressed[reason] = self.suppressed.get(reason, 0) + count
            self.limiter.suppressed[reason] += count - 1
            return False
        self.logged[reason] = self.logged.get(reason, 0) + 1
        if count > 1:
            self.suppressed[reason] = self.suppressed.get(reason, 0) + count - 1
        self.log(self.event, level=self.level, reason=reason, **fields,
                 count=count if count > 1 else None, suppressed=before or None)
        return True

    def stats(self) -> dict[str, dict[str, int]]:
        """{"seen": {reason: n}, "logged": {...}, "suppressed": {...}}."""
        return {"seen": dict(self.seen), "logged": dict(self.logged),
                "suppressed": dict(self.suppressed)}
