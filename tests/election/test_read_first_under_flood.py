"""ReadFirst reads the whole queue, not a few adverts, before a master-down.

Found by the lab flood (tests/lab/test_flood_lab.py): with 50k forged
adverts per second the socket buffer holds a couple of thousand of them, and
ReadFirst read only the first 64 before letting a master-down deadline act:
the master's advert, queued behind the forgeries, was read some 20 ms
after the backup had taken over ("no advert for 304 ms", then "node 1 has
better priority").  The buffer (SO_RCVBUF 1 MiB, doubled by the kernel)
holds fewer than READ_FIRST_LIMIT small datagrams.
"""

from __future__ import annotations

from test_timer_reads_first import FakeNode, FakeShell, FakeSockets

from meshd.election.shell import READ_FIRST_LIMIT, ElectionShell, ReadFirst
from meshd.election.transport import Datagram

QUEUED = 2 * (1 << 20) // 768         # 72-byte datagrams a doubled 1 MiB buffer holds (truesize ~768 B)


class FloodedNode(FakeNode):
    """Forged adverts are rejected (the deadline stays); the master's re-arms it."""

    def advert(self, data, source, now, ttl=None, interface=None):
        self.received.append(data)
        if data == b"master":
            self.election.deadline = now + 0.3
            return ["advert handled"]
        return ["rejected"]


def test_the_masters_advert_behind_a_full_buffer_of_forgeries_stops_the_takeover():
    assert READ_FIRST_LIMIT > QUEUED
    node = FloodedNode(deadline=10.0)
    forged = [Datagram(b"forged", f"192.0.2.{i % 250}", 255, "eth0") for i in range(QUEUED - 1)]
    shell = FakeShell(node, FakeSockets([*forged, Datagram(b"master", "192.0.2.11", 255, "eth0")]))
    dispatched: list = []
    assert ReadFirst(node, shell, dispatched.extend).handle_timer(10.5) == []
    assert node.received[-1] == b"master"


def test_a_queue_that_never_empties_is_read_boundedly():
    class Endless:
        def __init__(self):
            self.socks = {4: object()}

        def receive_nowait(self, family):
            return Datagram(b"forged", "192.0.2.9", 255, "eth0")

    node = FloodedNode(deadline=10.0)
    ElectionShell.read_queued(FakeShell(node, Endless()), 10.5)
    assert len(node.received) == READ_FIRST_LIMIT
