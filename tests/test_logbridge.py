"""Library logging, warnings and crash hooks routed into the event log."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from meshd.log import EventLog
from meshd.logbridge import EventLogHandler, LibraryLogBridge, level_of


def records(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


@pytest.fixture
def bridged():
    buf = io.StringIO()
    log = EventLog(buf, fmt="json", level="debug")
    with LibraryLogBridge(log, "info") as bridge:
        yield buf, bridge


def test_library_records_become_events_at_their_level(bridged):
    buf, _ = bridged
    logging.getLogger("pyroute2.ndb").warning("socket %s closed", 7)
    logging.getLogger("pyroute2").error("cannot bind")
    logging.getLogger("zeroconf").critical("gone")
    logging.getLogger("pyroute2").info("hello")
    logging.getLogger("pyroute2").debug("below the bridge's info level: dropped")
    assert [(r["event"], r["level"], r["logger"], r["message"]) for r in records(buf)] == [
        ("library", "warning", "pyroute2.ndb", "socket 7 closed"),
        ("library", "error", "pyroute2", "cannot bind"),
        ("library", "error", "zeroconf", "gone"),
        ("library", "info", "pyroute2", "hello"),
    ]


SCRIPT = """
import logging, sys, threading, warnings
from meshd.log import EventLog
from meshd.logbridge import LibraryLogBridge
if sys.argv[1] == "bridged":
    LibraryLogBridge(EventLog(sys.stdout, fmt="json"), "info").install()
logging.getLogger("pyroute2").warning("netlink socket closed")
warnings.warn("old API", UserWarning)
t = threading.Thread(target=lambda: 1 / 0, name="worker")
t.start()
t.join()
"""


@pytest.mark.parametrize("mode", ["bridged", "plain"])
def test_nothing_is_printed_raw_on_stderr(mode):
    """In a process of its own: pytest's log capture would stand in for the
    last-resort handler that prints library records raw on stderr."""
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                       check=True, cwd=str(Path(__file__).resolve().parent.parent))
    if mode == "plain":      # what the bridge is for
        assert "netlink socket closed" in r.stderr and "ZeroDivisionError" in r.stderr
        return
    assert r.stderr == ""
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [
        ("library", "warning"), ("python_warning", "warning"), ("thread_crashed", "error")]


def test_exception_records_carry_the_traceback(bridged):
    buf, _ = bridged
    try:
        raise KeyError("x")
    except KeyError:
        logging.getLogger("pyroute2").exception("failed")
    (r,) = records(buf)
    assert r["level"] == "error" and r["message"] == "failed"
    assert "Traceback" in r["traceback"] and "KeyError: 'x'" in r["traceback"]


def test_a_bad_format_string_is_logged_not_raised():
    buf = io.StringIO()
    logger = logging.getLogger("meshd-test-bad-format")
    logger.propagate = False            # away from pytest's own capture handler
    handler = EventLogHandler(EventLog(buf, fmt="json"))
    logger.addHandler(handler)
    try:
        logger.warning("%d items", "many")
    finally:
        logger.removeHandler(handler)
    (r,) = records(buf)
    assert r["message"] == "'%d items' (cannot format with ('many',))"


def test_warnings_go_through_the_log(bridged, capsys):
    buf, _ = bridged
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    (r,) = records(buf)
    assert (r["event"], r["level"], r["category"], r["message"]) == \
        ("python_warning", "warning", "DeprecationWarning", "old API")
    assert r["where"].startswith(__file__)
    assert capsys.readouterr().err == ""


def test_a_crashing_thread_is_logged_at_error(bridged, capsys):
    buf, _ = bridged

    def boom():
        raise RuntimeError("renewal failed")
    t = threading.Thread(target=boom, name="renew-addresses")
    t.start()
    t.join()
    (r,) = records(buf)
    assert (r["event"], r["level"], r["thread"], r["error"]) == \
        ("thread_crashed", "error", "renew-addresses", "RuntimeError: renewal failed")
    assert "in boom" in r["traceback"]
    assert capsys.readouterr().err == ""


def test_unraisable_exceptions_are_logged(bridged):
    buf, _ = bridged

    class Leaky:
        def __del__(self):
            raise OSError("close failed")
    Leaky()
    (r,) = records(buf)
    assert r["event"] == "unraisable_exception" and r["level"] == "warning"
    assert r["error"] == "OSError: close failed"


def test_uninstall_restores_what_was_there():
    root = logging.getLogger()
    before = (list(root.handlers), root.level, warnings.showwarning, threading.excepthook,
              sys.unraisablehook)
    bridge = LibraryLogBridge(EventLog(io.StringIO()), "warning").install()
    assert root.handlers == [bridge.handler] and root.level == logging.WARNING
    bridge.uninstall()
    assert (list(root.handlers), root.level, warnings.showwarning, threading.excepthook,
            sys.unraisablehook) == before


def test_level_of_maps_every_stdlib_level():
    assert [level_of(n) for n in (5, logging.DEBUG, logging.INFO, logging.WARNING,
                                  logging.ERROR, logging.CRITICAL)] == \
        ["debug", "debug", "info", "warning", "error", "error"]


def test_handler_alone_on_a_named_logger():
    buf = io.StringIO()
    logger = logging.getLogger("meshd-test-bridge")
    logger.propagate = False
    handler = EventLogHandler(EventLog(buf))
    logger.addHandler(handler)
    try:
        logger.warning("x=%s", "y z")
    finally:
        logger.removeHandler(handler)
    assert 'event=library logger=meshd-test-bridge message="x=y z"' in buf.getvalue()
    assert "level=warning" in buf.getvalue()
