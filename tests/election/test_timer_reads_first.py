"""The node's timer reads what the wire engine forwarded before it acts on a
master-down deadline (ReadFirst, meshd/election/shell.py; the channel read
without waiting, meshd/wire/remote.py).

Found by the lab flood (tests/lab/test_flood_lab.py), when the daemon read the
sockets itself: after a busy moment the timer and the reader became runnable
together, and a backup whose timer ran first took over from a master whose
advert was waiting unread.  The wire engine's channel is that queue now:
frames and reject reports ahead of the master's advert must not hide it.
"""

from __future__ import annotations

import socket
import time

import trio

from meshd.election.shell import ElectionShell, ReadFirst
from meshd.privsep.supervisor import Channel
from meshd.wire.proto import FROM_WIRE, TO_WIRE
from meshd.wire.remote import WireEngine


class FakeElection:
    """One group: a backup (its deadline a master-down) or a master (an advert due)."""

    def __init__(self, deadline: float, master: bool = False):
        self.deadline = deadline
        self.master = master
        self.keys = None

    def next_master_down(self):
        return None if self.master else self.deadline


class FakeNode:
    """What ReadFirst and the wire engine's reader use of a NodeCore."""

    def __init__(self, deadline: float):
        self.election = FakeElection(deadline)
        self.sync = None
        self.received: list[bytes] = []
        self.timer_calls = 0
        self.hearing: list[bool] = []

    def next_deadline(self):
        return self.election.deadline

    def advert(self, data, source, now, ttl=None, interface=None):
        self.received.append(data)
        if data == b"master":                     # an advert from the master re-arms master-down
            self.election.deadline = now + 0.3
        return [f"advert {data.decode()} handled"]

    def advert_refused(self, reason, detail, source, count, now):
        return [f"{count} refused: {reason}"]

    def wire_engine(self, up, reason, now):
        self.hearing.append(up)
        if not up:                                # as ElectionCore.set_deaf: master-down held
            self.election.deadline = float("inf")
        return []

    def handle_timer(self, now):
        self.timer_calls += 1
        # As NodeCore.handle_timer: the election acts only on a deadline still due.
        return ["took over"] if self.election.deadline <= now else []


class FakeSync:
    sock = None

    def __init__(self):
        self.frames = 0

    def frame_in(self, data, source, now):
        self.frames += 1
        return []


class FakeShell:
    def __init__(self, node):
        self.node = node
        self.sockets = type("Sockets", (), {"socks": {}})()
        self.wire = None

    read_queued = ElectionShell.read_queued       # the real one, on the fakes

    def watch_rejects(self, actions, now):       # the flood guard: tests/election/test_flood_guard.py
        pass


def run_with_channel(node, messages: list[tuple[str, dict]], check) -> None:
    """`messages` written by a fake engine into a real socketpair, then
    `check(shell)` with the daemon's side reading its end."""
    async def main():
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        shell = FakeShell(node)
        sync = FakeSync()
        wire = WireEngine(node, shell, sync, lambda actions: None, uid=65534, gid=65534,
                          log=lambda *a, **k: None)
        wire.channel = Channel(ours, FROM_WIRE, TO_WIRE, lambda *a, **k: None, "engine")
        shell.wire = wire
        theirs.setblocking(False)             # a test that overfills the pair fails, not hangs
        for mtype, fields in messages:
            theirs.sendall(FROM_WIRE.encode(mtype, **fields))
        check(shell, sync)
        theirs.close()
        wire.channel.close()
    trio.run(main)


def advert(data: bytes) -> tuple[str, dict]:
    return "advert", {"family": 4, "data": data, "source": "192.0.2.2", "ttl": 255, "interface": "eth0"}


def test_a_queued_advert_stops_a_stale_takeover():
    node = FakeNode(deadline=10.0)

    def check(shell, _sync):
        dispatched: list = []
        assert ReadFirst(node, shell, dispatched.extend).handle_timer(10.5) == []
        assert node.received == [b"master"]
        assert dispatched == ["advert master handled"]
    run_with_channel(node, [advert(b"master")], check)


def test_the_masters_advert_behind_frames_and_reject_reports_is_read():
    node = FakeNode(deadline=10.0)
    frames = [("frames", {"items": [{"data": bytes(1000), "source": "198.51.100.2"}] * 8})] * 5
    reports = [("rejects", {"at": 1.0, "entries": [{"channel": "election", "reason": "bad mac", "detail": "forged",
                                         "source": None, "count": 5000}]})] * 20

    def check(shell, sync):
        dispatched: list = []
        assert ReadFirst(node, shell, dispatched.extend).handle_timer(10.5) == []
        assert node.received == [b"master"] and sync.frames == 40
        assert dispatched.count("5000 refused: bad mac") == 20
    run_with_channel(node, frames + reports + [advert(b"master")], check)


def test_a_masters_due_advert_does_not_wait_for_the_queue():
    """Found by the lab flood: the master read a queue full of forged adverts
    before each advert it sent, and sent it a few hundred ms late."""
    node = FakeNode(deadline=10.0)
    node.election.master = True

    def check(shell, _sync):
        ReadFirst(node, shell, [].extend).handle_timer(10.5)
        assert node.received == [] and node.timer_calls == 1
    run_with_channel(node, [advert(b"other")] * 100, check)


def test_silence_still_expires():
    node = FakeNode(deadline=10.0)

    def check(shell, _sync):
        dispatched: list = []
        assert ReadFirst(node, shell, dispatched.extend).handle_timer(10.5) == ["took over"]
        assert node.timer_calls == 1 and dispatched == []
    run_with_channel(node, [], check)


def test_no_engine_yet_reads_nothing_and_silence_expires():
    node = FakeNode(deadline=10.0)
    shell = FakeShell(node)
    assert ReadFirst(node, shell, [].extend).handle_timer(10.5) == ["took over"]


def test_a_hung_engine_makes_the_node_deaf_before_a_master_down_acts():
    """A wire engine that is there but no longer reads (stopped, or looping in
    a parser) sends no tick: the backup must not take the silence it reads
    through it for the master's."""
    node = FakeNode(deadline=10.0)

    def check(shell, _sync):
        assert ReadFirst(node, shell, [].extend).handle_timer(10.5) == []
        assert node.hearing == [False] and shell.wire.silent
    run_with_channel(node, [("tick", {"at": time.monotonic() - 0.5})], check)


def test_a_ticking_engine_is_heard_and_a_silent_one_heard_again():
    node = FakeNode(deadline=10.0)

    def check(shell, _sync):
        wire = shell.wire
        wire.read_queued(10.5)
        assert wire.check_silence(time.monotonic()) == [] and node.hearing == []
        wire.silent = True                       # as after a silence
        wire._message(type("M", (), {"type": "tick", "fields": {"at": time.monotonic()}})())
        assert node.hearing == [True] and not wire.silent
    run_with_channel(node, [("tick", {"at": time.monotonic()})], check)
