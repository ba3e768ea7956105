"""A framing lie that read_nowait (the wire engine's read-first, meshd/wire/remote.py)
meets ends the channel, logged once, without raising into the daemon: the reader
task wakes up and ends it.  (The order of the two readers is test_channel_order.py's.)
No root needed."""

from __future__ import annotations

import socket

import trio

from meshd.privsep.imsg import Field, Schema
from meshd.privsep.supervisor import Channel

SCHEMA = Schema({"n": {"i": Field("int", lo=0, hi=10**9), "pad": Field("bytes", max_len=4096)}})


def test_a_lying_length_seen_by_read_nowait_ends_the_channel_without_raising():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    logs: list = []
    got: list[int] = []

    async def main():
        channel = Channel(ours, SCHEMA, SCHEMA, log=lambda e, level="info", **f: logs.append((e, f)),
                          peer="test")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.messages, lambda m: got.append(m.fields["i"]))
            await trio.sleep(0.05)                  # the reader task waits for data
            # Sent and read with no checkpoint between: read_nowait meets the lie.
            theirs.sendall(SCHEMA.encode("n", i=1, pad=b"") + (10**9).to_bytes(4, "big") + b"junk")
            channel.read_nowait(lambda m: got.append(m.fields["i"]))
            assert channel.closed                   # and the reader task ends (the nursery exits)
        theirs.close()

    trio.run(main)
    assert got == [1]
    assert [e for e, _ in logs] == ["imsg_channel_broken"]
