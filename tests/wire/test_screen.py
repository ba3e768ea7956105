"""The wire engine's screen: authentic datagrams pass untouched, the rest is
counted per reason in a bounded tally (meshd/wire/screen.py)."""

import pytest

from meshd.config import GroupConfig
from meshd.crypto import ELECTION_INFO, SYNC_INFO, KeyRing
from meshd.election.actions import SendAdvert
from meshd.election.core import ElectionCore
from meshd.privsep.imsg import Decoder
from meshd.sync.frames import FrameSealer
from meshd.wire.proto import FROM_WIRE, TO_WIRE, keys_fields, rings_from
from meshd.wire.screen import MAX_KEYS, RejectTally, Screen

ELECTION = KeyRing.from_secrets({1: b"e" * 32}, 1, ELECTION_INFO)
SYNC = KeyRing.from_secrets({1: b"e" * 32}, 1, SYNC_INFO)
OTHER = KeyRing.from_secrets({1: b"x" * 32}, 1, ELECTION_INFO)


def advert(keys=ELECTION) -> bytes:
    core = ElectionCore(2, [GroupConfig(id=1, name="lan", interface="eth0",
                                        addresses=("192.0.2.1/24",), advbase_ms=100)], keys, epoch=5)
    core.start(0.0)
    return next(a.data for a in core.handle_timer(10.0) if isinstance(a, SendAdvert))


def frame(keys=SYNC) -> bytes:
    return FrameSealer(keys, 2, 7, bytes(16)).seal(2, b"\x90")


def test_authentic_adverts_and_frames_pass_and_nothing_is_tallied():
    s = Screen(ELECTION, SYNC)
    assert s.advert(advert(), "192.0.2.2") and s.frame(frame(), "198.51.100.2")
    assert s.passed == {"election": 1, "sync": 1} and s.tally.report() == []


@pytest.mark.parametrize("data, reason", [
    (lambda: advert(OTHER), "bad mac"),
    (lambda: advert()[:40], "truncated"),
    (lambda: advert()[:-1] + bytes([advert()[-1] ^ 1]), "bad mac"),
])
def test_forged_adverts_are_refused_with_their_reason(data, reason):
    s = Screen(ELECTION, SYNC)
    assert not s.advert(data(), "192.0.2.66")
    [entry] = s.tally.report()
    assert (entry["channel"], entry["reason"], entry["source"], entry["count"]) == \
        ("election", reason, "192.0.2.66", 1)


def test_frames_with_a_bad_tag_or_unknown_key_are_refused():
    s = Screen(ELECTION, SYNC)
    forged = bytearray(frame())
    forged[-1] ^= 1
    assert not s.frame(bytes(forged), "198.51.100.9")
    assert not s.frame(frame(KeyRing.from_secrets({9: b"z" * 32}, 9, SYNC_INFO)), "198.51.100.9")
    assert not s.frame(b"\x01", "198.51.100.9")
    got = {(e["reason"], e["count"]) for e in s.tally.report()}
    assert got == {("bad tag", 1), ("unknown key", 1), ("truncated", 1)}


def test_nothing_passes_before_the_keys_and_a_rotation_applies():
    s = Screen(None, None)
    assert not s.advert(advert(), "192.0.2.2") and not s.frame(frame(), "198.51.100.2")
    assert {e["reason"] for e in s.tally.report()} == {"no keys"}
    s.set_keys(OTHER, None)
    assert not s.advert(advert(), "192.0.2.2") and s.advert(advert(OTHER), "192.0.2.2")


def test_a_flood_from_many_sources_is_tallied_in_bounded_keys():
    t = RejectTally()
    for i in range(10_000):
        t.add("election", "bad mac", "forged", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    entries = t.report()
    assert len(entries) == MAX_KEYS + 1
    assert sum(e["count"] for e in entries) == 10_000
    assert [e["count"] for e in entries if e["source"] is None] == [10_000 - MAX_KEYS]
    assert t.report() == []


def test_a_report_passes_the_daemons_schema_and_the_keys_round_trip():
    t = RejectTally()
    for i in range(MAX_KEYS * 3):
        t.add("sync", "bad tag", "x" * 2000, f"198.51.100.{i % 250}")
    data = FROM_WIRE.encode("rejects", at=1.5, entries=t.report())
    [m] = Decoder(FROM_WIRE, 1 << 20).feed(data)
    assert m.type == "rejects" and len(m.fields["entries"][0]["detail"]) == 512
    [k] = Decoder(TO_WIRE).feed(TO_WIRE.encode("keys", **keys_fields(ELECTION, SYNC)))
    assert rings_from(k.fields) == (ELECTION, SYNC)
    [k] = Decoder(TO_WIRE).feed(TO_WIRE.encode("keys", **keys_fields(ELECTION, None)))
    assert rings_from(k.fields) == (ELECTION, None)
