"""The event log's priorities and targets: stderr (journal or not), syslog, a file."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time

import pytest

from meshd import logsinks
from meshd.log import (
    PRIORITIES,
    EventLog,
    LogTargetError,
    open_event_log,
    parse_log_target,
)
from meshd.logsinks import FileSink, StreamSink, SyslogSink, stream_is_journal

LINE = re.compile(r"^ts=\S+ level=(\w+) event=(\w+)")


@pytest.fixture
def short_dir():
    # A socket path must fit sun_path (107 bytes); pytest's tmp_path may not.
    d = tempfile.mkdtemp(prefix="mlog-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class SyslogServer:
    """A real AF_UNIX datagram socket standing in for /dev/log."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(2)

    def receive(self) -> str:
        return self.sock.recv(1 << 16).decode()

    def pending(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(1 << 16).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.settimeout(2)

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)


# ------------------------------------------------------------ priorities


def test_priorities_are_the_syslog_severities():
    assert PRIORITIES == {"debug": 7, "info": 6, "warning": 4, "error": 3}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_journal_stream_gets_a_priority_prefix_per_line(fmt):
    buf = io.StringIO()
    log = EventLog(fmt=fmt, level="debug", sink=StreamSink(buf, journal=True))
    for level in ("debug", "info", "warning", "error"):
        log("thing", level=level, n=1)
    lines = buf.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    if fmt == "json":
        assert [json.loads(line[3:])["level"] for line in lines] == ["debug", "info", "warning", "error"]
    else:
        assert [LINE.match(line[3:]).group(1) for line in lines] == ["debug", "info", "warning", "error"]


def test_plain_stderr_has_no_prefix():
    buf = io.StringIO()
    EventLog(buf)("thing", level="warning")
    assert buf.getvalue().startswith("ts=")


def test_unknown_level_or_format_is_refused_at_construction():
    with pytest.raises(ValueError, match="log level must be one of debug, info, warning, error"):
        EventLog(io.StringIO(), level="verbose")
    with pytest.raises(ValueError, match="text or json"):
        EventLog(io.StringIO(), fmt="xml")


# ------------------------------------------------------- journal detection


def _as_stderr(path):
    """A real file opened as a text stream, standing in for fd 2."""
    return open(path, "w")


def test_journal_stream_matches_the_stream_device_and_inode(tmp_path):
    with _as_stderr(tmp_path / "journal") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(f, env)


def test_journal_stream_of_another_file_does_not_match(tmp_path):
    # Inherited from a parent whose stderr was the journal; ours is a file.
    with _as_stderr(tmp_path / "a") as a, _as_stderr(tmp_path / "b") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert not stream_is_journal(b, env)
        mine = os.fstat(b.fileno())
        assert stream_is_journal(b, {"JOURNAL_STREAM": f"{mine.st_dev}:{mine.st_ino}"})
        assert not stream_is_journal(b, {"JOURNAL_STREAM": f"{mine.st_dev + 1}:{mine.st_ino}"})


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "1:2:3", "-1:5"])
def test_malformed_journal_stream_is_no_journal(tmp_path, value):
    with _as_stderr(tmp_path / "f") as f:
        assert not stream_is_journal(f, {"JOURNAL_STREAM": value})


def test_stream_without_descriptor_is_no_journal():
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_default_sink_detects_the_journal_on_stderr(tmp_path, monkeypatch):
    """The whole path: JOURNAL_STREAM names the file that sys.stderr is."""
    with _as_stderr(tmp_path / "journal") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        monkeypatch.setattr(sys, "stderr", f)
        log = open_event_log("stderr")
        log("state", level="warning", group="lan")
        log("state", group="lan")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[0].startswith("<4>ts=") and " event=state group=lan" in lines[0]
    assert lines[1].startswith("<6>ts=")


# ------------------------------------------------------------------ targets


def test_parse_log_target():
    assert parse_log_target("stderr") == ("stderr", None)
    assert parse_log_target("syslog") == ("syslog", None)
    assert parse_log_target("file:/var/log/meshd.log") == ("file", "/var/log/meshd.log")
    with pytest.raises(ValueError, match="needs a path"):
        parse_log_target("file:")
    with pytest.raises(ValueError, match="expected stderr, syslog or file:PATH, found 'journal'"):
        parse_log_target("journal")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_syslog_target_sends_one_datagram_per_line_with_priority(short_dir, fmt):
    server = SyslogServer(os.path.join(short_dir, "log"))
    try:
        log = open_event_log("syslog", fmt, "debug", syslog_address=server.path)
        log("state", group="lan", new="MASTER")
        log("advert_rejected", level="warning", reason="bad mac")
        log("address_error", level="error", error="EEXIST")
        log("tick", level="debug")
        got = [server.receive() for _ in range(4)]
        log.close()
    finally:
        server.close()
    # facility daemon (3): 3 * 8 + severity
    head = re.compile(r"^<(\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d meshd\[(\d+)\]: (.*)$")
    matches = [head.match(g) for g in got]
    assert all(matches), got
    assert [int(m.group(1)) for m in matches] == [30, 28, 27, 31]
    assert {int(m.group(2)) for m in matches} == {os.getpid()}
    bodies = [m.group(3) for m in matches]
    if fmt == "json":
        assert json.loads(bodies[0])["event"] == "state"
        assert json.loads(bodies[1])["reason"] == "bad mac"
    else:
        assert LINE.match(bodies[0]).groups() == ("info", "state")
        assert "group=lan new=MASTER" in bodies[0]
        assert 'reason="bad mac"' in bodies[1]


def test_syslog_socket_absent_is_a_clear_start_error(short_dir):
    path = os.path.join(short_dir, "no-such-log")
    with pytest.raises(LogTargetError) as e:
        open_event_log("syslog", syslog_address=path)
    assert str(e.value) == (f"syslog: cannot connect to {path}: No such file or directory "
                            "(is a syslog daemon or journald running?)")


def test_syslog_default_address_is_dev_log(monkeypatch, short_dir):
    monkeypatch.setattr(logsinks, "DEV_LOG", os.path.join(short_dir, "dev-log"))
    with pytest.raises(LogTargetError, match="dev-log"):
        SyslogSink()


def test_syslog_reconnects_when_the_daemon_comes_back(short_dir):
    path = os.path.join(short_dir, "log")
    server = SyslogServer(path)
    log = open_event_log("syslog", syslog_address=path)
    log("one")
    assert "event=one" in server.receive()
    server.close()                         # syslog daemon restarts: a new socket, same path
    log("lost")                            # nobody listens: dropped, counted
    assert log.dropped == 1
    server = SyslogServer(path)
    try:
        log("two")
        first, second = server.receive(), server.receive()
    finally:
        log.close()
        server.close()
    assert "event=log_lines_dropped count=1 " in first and first.startswith("<28>")
    assert "event=two" in second


def test_syslog_stuck_receiver_drops_lines_instead_of_blocking(short_dir):
    path = os.path.join(short_dir, "log")
    server = SyslogServer(path)
    log = open_event_log("syslog", syslog_address=path)
    try:
        start = time.monotonic()
        for i in range(2000):               # far more than a datagram queue holds; nobody reads
            log("flood", i=i, pad="x" * 200)
        elapsed = time.monotonic() - start
        assert log.dropped > 0
        # One wait of SYSLOG_SEND_WAIT_S when the queue fills, then drops without waiting.
        assert elapsed < 20 * logsinks.SYSLOG_SEND_WAIT_S
        queued = server.pending()
        dropped = log.dropped
        log("after")
        tail = server.pending()
    finally:
        log.close()
        server.close()
    assert len(queued) + dropped == 2000
    assert f"event=log_lines_dropped count={dropped} " in tail[0]
    assert "event=after" in tail[1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_file_target_appends_and_reopens_after_logrotate(tmp_path, fmt):
    path = tmp_path / "meshd.log"
    path.write_text("older line\n")
    log = open_event_log(f"file:{path}", fmt)
    log("before_rotation", n=1)
    os.rename(path, tmp_path / "meshd.log.1")     # logrotate without copytruncate
    log("still_old_file", n=2)                    # until the SIGHUP, the renamed file
    assert log.reopen() is True
    log("after_rotation", n=3)
    log.close()
    old = (tmp_path / "meshd.log.1").read_text().splitlines()
    new = path.read_text().splitlines()
    assert old[0] == "older line"

    def events(lines):
        return [json.loads(x)["event"] if fmt == "json" else LINE.match(x).group(2) for x in lines]
    assert events(old[1:]) == ["before_rotation", "still_old_file"]
    assert events(new) == ["after_rotation"]
    assert not any(line.startswith("<") for line in new)     # no journal prefix in files
    assert os.stat(path).st_mode & 0o777 == FileSink.MODE


def test_file_reopen_failure_keeps_the_old_file_and_says_so(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    log = open_event_log(f"file:{d / 'meshd.log'}")
    log("one")
    os.rename(d, tmp_path / "gone")               # the directory disappears under it
    assert log.reopen() is False
    log("two")
    log.close()
    lines = (tmp_path / "gone" / "meshd.log").read_text().splitlines()
    assert [LINE.match(x).group(2) for x in lines] == ["one", "log_reopen_failed", "two"]
    assert "level=error" in lines[1] and "No such file or directory" in lines[1]
    assert f"target=\"file {d / 'meshd.log'}\"" in lines[1]


def test_file_target_unopenable_is_a_clear_start_error(tmp_path):
    with pytest.raises(LogTargetError, match=r"log file .*/nodir/meshd.log: cannot open: No such file"):
        open_event_log(f"file:{tmp_path / 'nodir' / 'meshd.log'}")


def test_stream_reopen_is_harmless():
    buf = io.StringIO()
    log = EventLog(buf)
    assert log.reopen() is True
    log("x")
    assert "event=x" in buf.getvalue()


# ------------------------------------------------------- robustness, threads


class FailingSink(StreamSink):
    def __init__(self):
        super().__init__(io.StringIO(), journal=False)
        self.fail = True

    def write(self, priority, line):
        if self.fail:
            raise OSError(28, "No space left on device")
        super().write(priority, line)


def test_a_failing_target_never_raises_and_the_loss_is_reported():
    sink = FailingSink()
    log = EventLog(sink=sink)
    log("a")
    log("b", value=object())
    assert log.dropped == 2
    sink.fail = False
    log("c")
    lines = sink.stream.getvalue().splitlines()
    assert [LINE.match(x).group(2) for x in lines] == ["log_lines_dropped", "c"]
    assert "level=warning" in lines[0] and "count=2" in lines[0]
    assert log.dropped == 0


def test_unprintable_value_never_raises():
    class Bad:
        def __str__(self):
            raise RuntimeError("no")
    buf = io.StringIO()
    log = EventLog(buf, fmt="json")
    log("x", value=Bad())
    assert log.dropped == 1
    log("y")
    assert "log_lines_dropped" in buf.getvalue()


def test_threads_writing_while_the_file_is_rotated_lose_no_line(tmp_path):
    """Worker threads log while the loop reopens the file (SIGHUP after logrotate).

    Without the lock a writer can pick the descriptor reopen() is closing:
    its line is lost (EBADF) or lands in whatever file reuses the number.
    """
    path = tmp_path / "meshd.log"
    threads, per_thread, pad = 8, 1000, "x" * 300
    log = open_event_log(f"file:{path}", "json")
    done = threading.Event()
    rotations = 0

    def writer(t):
        for i in range(per_thread):
            log("line", thread=t, i=i, pad=pad)

    def rotate():
        nonlocal rotations
        while not done.is_set():
            rotations += 1
            os.rename(path, f"{path}.{rotations}")
            assert log.reopen()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)     # switch threads as often as possible
    try:
        workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        rotator = threading.Thread(target=rotate)
        for w in workers:
            w.start()
        rotator.start()
        for w in workers:
            w.join()
        done.set()
        rotator.join()
        log.close()
    finally:
        sys.setswitchinterval(old)
    assert rotations > 1
    lines = [line for f in tmp_path.glob("meshd.log*") for line in f.read_text().splitlines()]
    records = [json.loads(line) for line in lines]       # none torn or merged
    assert {r["event"] for r in records} == {"line"}     # no log_lines_dropped either
    assert sorted((r["thread"], r["i"]) for r in records) == \
        [(t, i) for t in range(threads) for i in range(per_thread)]
    assert all(r["pad"] == pad for r in records)
    assert log.dropped == 0
