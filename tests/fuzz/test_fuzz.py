"""The short version of the fuzzer, in the test suite: a few seconds per target.

Each target's property is in its module (targets_wire.py, targets_input.py);
here every target must run its mutations with no finding.  The long
version: `python3 -m tests.fuzz --mutations 1000000` (docs/security.md).
"""

from __future__ import annotations

import pytest

from .runner import TARGETS, run_target

SHORT = {"advert_decoder": 20_000, "frame_decoder": 20_000, "election_core": 5_000, "sync_core": 500,
         "node_core": 200, "reorder": 3_000, "control": 20_000, "config": 3_000, "dns_idmap": 5_000}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_no_finding(name):
    tally, _ = run_target(name, SHORT[name], seed=0)
    assert tally.mutations >= SHORT[name]
    assert len(tally.by_class) >= 3 or name == "reorder"     # the mutation classes were all drawn
    assert not tally.findings, "\n".join(str(f) for f in tally.findings[:5])


def test_resealed_inputs_get_past_the_mac_and_the_tag():
    """The "malformed" class must reach the checks after authentication, or it
    would test nothing but the MAC: reasons past it must be seen."""
    tally, _ = run_target("election_core", 3_000, seed=1)
    reasons = {r for (cls, r) in tally.reasons if cls == "malformed"}
    assert {"bad type", "bad flags", "bad id", "bad counter", "peer config differs"} <= reasons
    tally, _ = run_target("sync_core", 400, seed=1)
    assert {r for (cls, r) in tally.reasons if cls == "malformed"} >= {"bad body", "bad type"}
