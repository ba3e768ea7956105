"""Routes what Python and third-party libraries print into the one event log.

pyroute2 logs through stdlib `logging`; with no handler installed, Python's
last-resort handler would print those records as raw lines on stderr, which
bypass --log-format json, --log-target and the journal priorities.  The same
goes for warnings (`warnings.warn`), exceptions in threads and exceptions
Python can only ignore (`Exception ignored in ...`).  LibraryLogBridge sends
each of them to the EventLog as one event:

    event=library logger=pyroute2.ndb level=warning message="..."
    event=python_warning category=ResourceWarning message="..." where=file.py:12
    event=thread_crashed thread=renew-addresses error="..." traceback="..."
    event=unraisable_exception error="..." object="..."

Must not: write a line itself (the EventLog does), let a library's bad record
raise, or stay installed after uninstall(): tests and a daemon that returns
get back the hooks that were there.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
import warnings
from typing import Any, Self

from .log import EventLog

_STDLIB_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
                  "warning": logging.WARNING, "error": logging.ERROR}


def level_of(levelno: int) -> str:
    """The EventLog level of a stdlib level number (CRITICAL files as error)."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _traceback(exc_type, exc, tb) -> str:
    return "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()


class EventLogHandler(logging.Handler):
    """A logging.Handler whose records become event=library lines."""

    def __init__(self, log: EventLog):
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a library's bad format string must not be lost or raise
            message = f"{record.msg!r} (cannot format with {record.args!r})"
        fields: dict[str, Any] = {"logger": record.name, "message": message}
        if record.exc_info and record.exc_info[0] is not None:
            fields["traceback"] = _traceback(*record.exc_info)
        self.log("library", level=level_of(record.levelno), **fields)


class LibraryLogBridge:
    """install() routes the root logger, warnings and crash hooks to `log`;
    uninstall() puts back what was there (tests, and a daemon that returns)."""

    def __init__(self, log: EventLog, level: str = "info"):
        self.log = log
        self.handler = EventLogHandler(log)
        self.level = _STDLIB_LEVELS.get(level, logging.INFO)
        self._saved: dict[str, Any] = {}

    def install(self) -> Self:
        root = logging.getLogger()
        self._saved = {"handlers": list(root.handlers), "level": root.level,
                       "showwarning": warnings.showwarning,
                       "threading": threading.excepthook, "unraisable": sys.unraisablehook}
        for h in self._saved["handlers"]:
            root.removeHandler(h)
        root.addHandler(self.handler)
        root.setLevel(self.level)
        warnings.showwarning = self._showwarning
        threading.excepthook = self._thread_crashed
        sys.unraisablehook = self._unraisable
        return self

    def uninstall(self) -> None:
        if not self._saved:
            return
        root = logging.getLogger()
        root.removeHandler(self.handler)
        for h in self._saved["handlers"]:
            root.addHandler(h)
        root.setLevel(self._saved["level"])
        warnings.showwarning = self._saved["showwarning"]
        threading.excepthook = self._saved["threading"]
        sys.unraisablehook = self._saved["unraisable"]
        self._saved = {}

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    # Signatures are those of the hooks they replace.

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.log("python_warning", level="warning", category=category.__name__,
                 message=str(message), where=f"{filename}:{lineno}")

    def _thread_crashed(self, args) -> None:
        if args.exc_type is SystemExit:
            return   # what the default hook does too
        name = args.thread.name if args.thread is not None else None
        self.log("thread_crashed", level="error", thread=name,
                 error=f"{args.exc_type.__name__}: {args.exc_value}",
                 traceback=_traceback(args.exc_type, args.exc_value, args.exc_traceback))

    def _unraisable(self, unraisable) -> None:
        exc_type = unraisable.exc_type
        self.log("unraisable_exception", level="warning",
                 error=f"{exc_type.__name__}: {unraisable.exc_value}",
                 context=unraisable.err_msg or None,
                 object=None if unraisable.object is None else repr(unraisable.object),
                 traceback=_traceback(exc_type, unraisable.exc_value, unraisable.exc_traceback)
                 if unraisable.exc_traceback is not None else None)
