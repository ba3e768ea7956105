"""The election timer reads queued adverts before acting on a master-down deadline."""

from __future__ import annotations

from meshd.daemon import Daemon, _ReadFirst
from meshd.election.transport import Datagram


class FakeCore:
    def __init__(self, deadline: float):
        self.deadline = deadline
        self.received: list[bytes] = []
        self.timer_calls = 0

    def next_deadline(self):
        return self.deadline

    def receive(self, data, source, now, ttl=None, interface=None):
        self.received.append(data)
        self.deadline = now + 0.3        # an advert from the master re-arms master-down
        return ["advert handled"]

    def handle_timer(self, now):
        self.timer_calls += 1
        return ["took over"]


class FakeSockets:
    def __init__(self, queued):
        self.socks = {4: object()}
        self.queued = list(queued)

    def receive_nowait(self, family):
        return self.queued.pop(0) if self.queued else None


class FakeDaemon:
    def __init__(self, core, sockets):
        self.core = core
        self.sockets = sockets
        self.dispatched: list = []

    def dispatch(self, actions):
        self.dispatched += actions

    advert_received = Daemon.advert_received      # the real one, on the fake core


def test_a_queued_advert_stops_a_stale_takeover():
    core = FakeCore(deadline=10.0)
    d = FakeDaemon(core, FakeSockets([Datagram(b"advert", "192.0.2.2", 255, "eth0")]))
    assert _ReadFirst(d).handle_timer(10.5) == []
    assert core.received == [b"advert"] and core.timer_calls == 0
    assert d.dispatched == ["advert handled"]


def test_silence_still_expires():
    core = FakeCore(deadline=10.0)
    d = FakeDaemon(core, FakeSockets([]))
    assert _ReadFirst(d).handle_timer(10.5) == ["took over"]
    assert core.timer_calls == 1
