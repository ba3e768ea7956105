"""A Channel read by its reader task and by read_nowait (the wire engine's
read-first, meshd/wire/remote.py) delivers every message once and in order.

Seen in the lab with 200k entries replicated: a chunk read by the reader task
was delivered after one that read_nowait read later (trio checkpoints between
a successful recv and the return to the task), the stream's framing went
wrong ("not msgpack", then a length of 615 MB) and the daemon crashed.  Here
a writer (a thread, as the engine is another process) sends numbered messages while the reader task runs and a timer task
calls read_nowait as often as it can; no root needed.
"""

from __future__ import annotations

import socket
import threading

import trio

from meshd.privsep.imsg import Field, Schema
from meshd.privsep.supervisor import Channel

SCHEMA = Schema({"n": {"i": Field("int", lo=0, hi=10**9), "pad": Field("bytes", max_len=4096)}})
MESSAGES = 20_000


def test_messages_arrive_once_and_in_order_whichever_reader_reads_them():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    logs: list = []
    got: list[int] = []

    async def main():
        channel = Channel(ours, SCHEMA, SCHEMA, log=lambda e, level="info", **f: logs.append((e, f)),
                          peer="test")
        def write():
            # Another process in the daemon (the engine); here a thread, so that
            # bytes arrive between any two steps of the loop, in bursts.
            for start in range(0, MESSAGES, 100):
                theirs.sendall(b"".join(SCHEMA.encode("n", i=i, pad=bytes(i % 700))
                                        for i in range(start, start + 100)))
            theirs.close()

        async def read_first():
            while not channel.closed:
                channel.read_nowait(lambda m: got.append(m.fields["i"]), 4096)
                await trio.sleep(0)

        writer = threading.Thread(target=write)
        writer.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_first)
            why = await channel.messages(lambda m: got.append(m.fields["i"]))
            nursery.cancel_scope.cancel()
        writer.join()
        return why

    why = trio.run(main)
    assert not [e for e in logs if e[0] in ("imsg_rejected", "imsg_channel_broken")], logs[:3]
    assert why == "end of file"
    assert got == list(range(MESSAGES))


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
            assert channel.closed
            with trio.fail_after(2):
                while not channel.closed:
                    await trio.sleep(0.01)
        theirs.close()

    trio.run(main)
    assert got == [1]
    assert [e for e, _ in logs] == ["imsg_channel_broken"]
