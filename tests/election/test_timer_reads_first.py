"""The node's timer reads queued adverts before acting on a master-down deadline."""

from __future__ import annotations

from meshd.election.shell import ElectionShell, ReadFirst
from meshd.election.transport import Datagram


class FakeElection:
    """One group: a backup (its deadline a master-down) or a master (an advert due)."""

    def __init__(self, deadline: float, master: bool = False):
        self.deadline = deadline
        self.master = master

    def next_deadline(self):
        return self.deadline

    def next_master_down(self):
        return None if self.master else self.deadline


class FakeNode:
    """What ReadFirst and ElectionShell.read_queued use of a NodeCore."""

    def __init__(self, deadline: float):
        self.election = FakeElection(deadline)
        self.received: list[bytes] = []
        self.timer_calls = 0

    def next_deadline(self):
        return self.election.deadline

    def advert(self, data, source, now, ttl=None, interface=None):
        self.received.append(data)
        self.election.deadline = now + 0.3        # an advert from the master re-arms master-down
        return ["advert handled"]

    def handle_timer(self, now):
        self.timer_calls += 1
        # As NodeCore.handle_timer: the election acts only on a deadline still due.
        return ["took over"] if self.election.deadline <= now else []


class FakeSockets:
    def __init__(self, queued):
        self.socks = {4: object()}
        self.queued = list(queued)

    def receive_nowait(self, family):
        return self.queued.pop(0) if self.queued else None


class FakeShell:
    def __init__(self, node, sockets):
        self.node = node
        self.sockets = sockets

    read_queued = ElectionShell.read_queued       # the real one, on the fakes

    def _watch_rejects(self, actions, now):       # the flood guard: tests/election/test_flood_guard.py
        pass


def test_a_masters_due_advert_does_not_wait_for_the_queue():
    """Found by the lab flood: the master read a queue full of forged adverts
    before each advert it sent, and sent it a few hundred ms late."""
    node = FakeNode(deadline=10.0)
    node.election.master = True
    shell = FakeShell(node, FakeSockets([Datagram(b"forged", "192.0.2.9", 255, "eth0")] * 100))
    ReadFirst(node, shell, [].extend).handle_timer(10.5)
    assert node.received == [] and node.timer_calls == 1


def test_a_queued_advert_stops_a_stale_takeover():
    node = FakeNode(deadline=10.0)
    dispatched: list = []
    shell = FakeShell(node, FakeSockets([Datagram(b"advert", "192.0.2.2", 255, "eth0")]))
    assert ReadFirst(node, shell, dispatched.extend).handle_timer(10.5) == []
    assert node.received == [b"advert"]
    assert dispatched == ["advert handled"]


def test_silence_still_expires():
    node = FakeNode(deadline=10.0)
    dispatched: list = []
    assert ReadFirst(node, FakeShell(node, FakeSockets([])), dispatched.extend).handle_timer(10.5) == ["took over"]
    assert node.timer_calls == 1 and dispatched == []
