"""LinkMonitor reports lost notifications and read errors as structured events.

The monitor's netlink socket is swapped for one end of an AF_UNIX datagram
pair, so a test can hand it garbage, an oversize datagram or (through a thin
wrapper) ENOBUFS, the way the kernel would.
"""

from __future__ import annotations

import errno
import io
import json
import socket
import struct

import pytest
import trio

from meshd.kernel import links
from meshd.kernel.links import RECV_SIZE, LinkEvent, LinkMonitor
from meshd.log import EventLog


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event, level="info", **fields):
        self.events.append((event, level, fields))


def newlink(index=3, name="va", flags=0x1 | 0x10000):
    ifname = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(ifname), 3) + ifname
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), 16, 0, 0, 0) + body


class FlakySocket:
    """A socket whose first recvmsg fails with ENOBUFS, as after a kernel overflow."""

    def __init__(self, sock):
        self.sock = sock
        self.overflowed = False

    def recvmsg(self, size):
        if not self.overflowed:
            self.overflowed = True
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self.sock.recvmsg(size)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()


@pytest.fixture
def monitor():
    log = Recorder()
    mon = LinkMonitor(["va"], log=log)
    mon.sock.close()
    theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    mon.sock = ours
    mon.RETRY_S = 0.01
    yield mon, theirs, log
    mon.close()
    theirs.close()


def run_until_resynced(mon, received):
    """Run the monitor until the resync delivered `va` again; return what it reported."""
    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(mon.run, received.append)
            with trio.fail_after(5):
                while not mon.resyncs or not any(e.index == 0 for e in received):
                    await trio.sleep(0.005)
            n.cancel_scope.cancel()
    trio.run(main)


def fake_read_links(failures):
    calls = []

    def read(names):
        calls.append(names)
        if len(calls) <= failures:
            raise RuntimeError("netlink: (16, 'Device or resource busy')")
        return {"va": LinkEvent(0, "va", False, True)}
    return read, calls


@pytest.mark.parametrize("reason", ["undecodable", "truncated", "overflow"])
def test_lost_notifications_are_a_warning_event_then_a_resync(monitor, monkeypatch, reason):
    mon, theirs, log = monitor
    read, calls = fake_read_links(failures=0)
    monkeypatch.setattr(links, "_read_links", read)
    if reason == "undecodable":
        theirs.send(b"\x01\x02\x03")
    elif reason == "truncated":
        theirs.send(b"\0" * (RECV_SIZE + 1))
    else:
        mon.sock = FlakySocket(mon.sock)
        theirs.send(newlink())                   # queued behind the overflow: delivered first
    received = []
    run_until_resynced(mon, received)
    (event, level, fields), = log.events
    assert (event, level, fields["reason"]) == ("link_monitor_resync", "warning", reason)
    assert fields["action"] == "re-reading the state of the watched interfaces"
    if reason == "undecodable":
        assert fields["detail"] == "truncated netlink header at offset 0"
    assert calls == [("va",)]
    assert received[-1] == LinkEvent(0, "va", False, True)
    if reason == "overflow":
        assert received[0] == LinkEvent(3, "va", True, False)


def test_unreadable_link_state_is_an_error_event_and_retried(monitor, monkeypatch):
    mon, theirs, log = monitor
    read, calls = fake_read_links(failures=2)
    monkeypatch.setattr(links, "_read_links", read)
    theirs.send(b"junk")
    received = []
    run_until_resynced(mon, received)
    assert [(e, lvl) for e, lvl, _ in log.events] == [
        ("link_monitor_resync", "warning"), ("link_monitor_error", "error"),
        ("link_monitor_error", "error")]
    fields = log.events[1][2]
    assert fields == {"error": "cannot read the link state: netlink: (16, 'Device or resource busy')",
                      "retry_s": 0.01}
    assert len(calls) == 3


def test_events_follow_the_log_format(monkeypatch):
    """Through a real EventLog: the warnings obey --log-format json (they used to bypass it)."""
    buf = io.StringIO()
    mon = LinkMonitor(["va"], log=EventLog(buf, fmt="json"))
    try:
        mon._lost("overflow", "the kernel dropped link notifications (ENOBUFS)")
    finally:
        mon.close()
    record = json.loads(buf.getvalue())
    assert (record["event"], record["level"], record["reason"]) == \
        ("link_monitor_resync", "warning", "overflow")


def test_default_log_is_an_event_log_on_stderr(capsys):
    mon = LinkMonitor(["va"])
    try:
        mon._lost("truncated", "x")
    finally:
        mon.close()
    err = capsys.readouterr().err
    assert " level=warning event=link_monitor_resync reason=truncated detail=x " in err
