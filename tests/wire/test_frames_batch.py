"""The engine's `frames` batches fit the daemon's message limit in the worst case."""

from meshd.privsep.imsg import Decoder, Message
from meshd.wire.proto import FROM_WIRE, MAX_DATAGRAM, MAX_FRAMES, MAX_FRAMES_BYTES
from meshd.wire.remote import MAX_MESSAGE

SOURCE = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"


def test_a_full_batch_and_the_largest_datagram_alone_fit_one_message():
    # The engine flushes before a frame that would pass MAX_FRAMES or MAX_FRAMES_BYTES,
    # so a batch is either under both, or one frame alone (up to a whole UDP payload).
    full = FROM_WIRE.encode("frames", items=[{"data": bytes(MAX_FRAMES_BYTES // MAX_FRAMES),
                                              "source": SOURCE}] * MAX_FRAMES)
    alone = FROM_WIRE.encode("frames", items=[{"data": bytes(MAX_DATAGRAM), "source": SOURCE}])
    for blob in (full, alone):
        assert len(blob) <= MAX_MESSAGE
        (m,) = Decoder(FROM_WIRE, MAX_MESSAGE).feed(blob)
        assert isinstance(m, Message) and m.type == "frames"


def test_more_frames_than_a_burst_are_refused():
    too_many = FROM_WIRE.encode("frames", items=[{"data": b"x", "source": SOURCE}] * MAX_FRAMES)
    assert isinstance(Decoder(FROM_WIRE).feed(too_many)[0], Message)
    import msgpack
    body = msgpack.packb(["frames", {"items": [{"data": b"x", "source": SOURCE}] * (MAX_FRAMES + 1)}])
    (rejected,) = Decoder(FROM_WIRE).feed(len(body).to_bytes(4, "big") + body)
    assert not isinstance(rejected, Message) and "more than 64" in rejected.what
