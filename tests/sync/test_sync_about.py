"""ABOUT frames (proto/sync.md, 4.7): the codec's bounds, the cut to one
datagram, and the shared settings compared in words."""

from __future__ import annotations

import pytest
from cluster import SYNC_KEYS, parse
from cluster.scenarios import failover_texts

from meshd.config.shared import differences, settings_digest, shared_settings
from meshd.sync import SyncCore
from meshd.sync.about import body
from meshd.sync.frames import FrameError, FrameType, decode_frame, encode_frame

GOOD = ("fw1", "0.1.0", ((1, "MASTER", 0), (2, "BACKUP", 100)), bytes(16), (("cluster.port", "7112"),), 1)


def _roundtrip(b):
    return decode_frame(encode_frame(SYNC_KEYS, 1, 5, 1, FrameType.ABOUT, b), SYNC_KEYS).body


def test_a_good_about_round_trips():
    assert _roundtrip(GOOD) == GOOD


@pytest.mark.parametrize("bad, what", [
    (("x" * 65,) + GOOD[1:], "name"),
    (GOOD[:2] + (((1, "LEADER", 0),),) + GOOD[3:], "groups"),
    (GOOD[:2] + (((0, "MASTER", 0),),) + GOOD[3:], "groups"),
    (GOOD[:3] + (bytes(8),) + GOOD[4:], "digest"),
    (GOOD[:4] + ((("k", "v" * 300),),) + GOOD[5:], "settings"),
    (GOOD[:4] + (tuple(("k", "v") for _ in range(513)),) + GOOD[5:], "settings"),
    (GOOD[:5] + (2,), "complete"),
    (GOOD[:5], "array of 6"),
])
def test_a_malformed_about_is_a_bad_body(bad, what):
    with pytest.raises(FrameError) as e:
        _roundtrip(bad)
    assert e.value.reason == "bad body" and what in e.value.detail


def test_settings_are_cut_to_one_datagram_most_important_first():
    core = SyncCore(1, [2], SYNC_KEYS, 5, max_datagram=600)
    settings = [("cluster keys", "1")] + [(f"group g{i}: advbase_ms", "100") for i in range(100)]
    core.set_about("fw1", "0.1.0", settings, settings_digest(settings), 0.0)
    b = body(core)
    assert b[5] == 0 and b[4][0] == ("cluster keys", "1") and 1 < len(b[4]) < 100
    frames = [a for a in core.handle_timer(0.0) if getattr(a, "data", None)]
    assert frames and all(len(f.data) <= 600 for f in frames)


def test_shared_settings_carry_no_secret_and_say_what_differs():
    texts = failover_texts([1, 2])
    a = parse(texts[1], {1: b"s" * 32})
    b = parse(texts[2].replace("advbase_ms = 100", "advbase_ms = 200", 1), {1: b"t" * 32})
    sa, sb = shared_settings(a), shared_settings(b)
    assert all(b"s" * 32 not in v.encode() and "ssss" not in v for _, v in sa)
    diffs = differences(sa, sb, "fw2")
    assert "group g1: advbase_ms: 100 here, 200 on fw2" in diffs
    assert any(d.startswith("cluster key 1: the secrets differ (fingerprint ") for d in diffs)
    assert settings_digest(sa) != settings_digest(sb)
    assert differences(sa, sa, "fw2") == [] and settings_digest(sa) == settings_digest(shared_settings(a))


def test_the_expectations_filter_is_shared_only_when_not_the_default():
    """A default file digests as before the key existed: mixed versions agree."""
    texts = failover_texts([1, 2])
    a = parse(texts[1], {1: b"s" * 32})
    assert not [k for k, _v in shared_settings(a) if "expectations" in k]
    import dataclasses
    off = dataclasses.replace(a, sync=dataclasses.replace(
        a.sync, filter=dataclasses.replace(a.sync.filter, expectations=False)))
    assert ("sync.filter.expectations", "false") in shared_settings(off)
    assert settings_digest(shared_settings(off)) != settings_digest(shared_settings(a))
