"""Channel: a read without waiting (read_nowait, the election's ReadFirst) beside
the reader task must not reorder the stream.  trio's `await sock.recv()`
yields after a read that succeeded at once; read_nowait, run then, would
hand the decoder later bytes first, break the framing and end the daemon
(seen in the lab under 100k entries of sync traffic)."""

from __future__ import annotations

import socket

import trio

from meshd.privsep.supervisor import Channel
from meshd.wire.proto import FROM_WIRE, TO_WIRE


def _one_round() -> tuple[list, list]:
    """A message and a half queued, the reader task started, then the rest
    written and read at once by read_nowait, as ReadFirst does."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list[float] = []
    logs: list = []
    msgs = [FROM_WIRE.encode("tick", at=float(i)) for i in range(3)]

    async def main():
        ch = Channel(ours, FROM_WIRE, TO_WIRE, log=lambda e, **f: logs.append((e, f)), peer="test")
        theirs.send(msgs[0] + msgs[1][:5])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ch.messages, lambda m: got.append(m.fields["at"]))
            await trio.sleep(0)
            theirs.send(msgs[1][5:] + msgs[2])
            for _ in range(3):
                ch.read_nowait(lambda m: got.append(m.fields["at"]))
                await trio.sleep(0)
            with trio.fail_after(5):
                while len(got) < 3 and not ch.closed:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        theirs.close()
    return got, logs


def test_read_nowait_beside_the_reader_task_keeps_the_stream_in_order():
    # trio shuffles the order of the tasks it runs in a batch: many rounds.
    for _ in range(40):
        got, logs = _one_round()
        assert got == [0.0, 1.0, 2.0] and not logs, (got, logs)
