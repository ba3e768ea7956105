"""Expectations through the node core, sans-I/O: kernel events to the internal cache, the
takeover commit (masters first, expectations apart), the continuous applier's split.

Real messages: the PASV expectation and its master (the FTP control connection
through the SNAT) from proto/vectors/ctnetlink.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from meshd.kernel import ctnetlink as ct
from meshd.node.actions import CommitFlows
from meshd.sync.actions import ExternalChanged

from test_node_core import in_sync, master_down, started

REPO = Path(__file__).resolve().parents[2]
DATA = json.loads((REPO / "proto/vectors/ctnetlink.json").read_text())


def _event(section: str, name: str) -> ct.CtEvent:
    v = next(v for v in DATA[section] if v["name"] == name)
    (e,) = ct.decode_events(bytes.fromhex(v["hex"]))
    return e


PASV = _event("expect_vectors", "expect_passive_nat")
USED_UP = _event("expect_vectors", "expect_active_destroy")
ACTIVE = _event("expect_vectors", "expect_active_new")


def master_of(e: ct.CtEvent) -> tuple[bytes, bytes]:
    """A stand-in for the master's conntrack entry: its key, and attrs naming it."""
    key = ct.expect_master_key(e.attrs)
    return key, b"master of " + key


def test_an_expectation_is_replicated_under_its_own_key_and_removed_when_used():
    node = started("takeover")
    node.kernel_events([ACTIVE], 1.0)
    assert node.sync.internal.get(ACTIVE.key) == ACTIVE.attrs
    node.kernel_events([USED_UP], 1.1)               # the same expectation, used up
    assert USED_UP.key == ACTIVE.key and node.sync.internal.get(ACTIVE.key) is None


def test_expectations_off_keeps_them_out_of_the_state_mesh():
    node = started("takeover", extra="")
    node.flows.filter.set_config(type(node.flows.filter.config)(expectations=False))
    node.kernel_events([PASV], 1.0)
    assert node.sync.internal.get(PASV.key) is None
    assert node.flows.filter.stats.expectation == 1


def test_a_helper_list_reads_the_helper_from_the_attrs():
    node = started("takeover")
    node.flows.filter.set_config(type(node.flows.filter.config)(expectation_helpers=("sip",)))
    node.kernel_events([PASV], 1.0)                  # an ftp expectation
    assert node.sync.internal.get(PASV.key) is None
    node.flows.filter.set_config(type(node.flows.filter.config)(expectation_helpers=("ftp",)))
    node.kernel_events([PASV], 1.1)
    assert node.sync.internal.get(PASV.key) == PASV.attrs


def test_a_dump_with_expectations_rebuilds_both():
    node = started("takeover")
    flow = ct.CtEvent(1, b"k" * 16, b"attrs", 0, 6, b"\x0a\0\0\x01", b"\xc6\x33\x64\x05", 0, 3)
    node.kernel_table([flow, PASV], "overrun", 1.0)
    while node.flows.busy:
        node.handle_timer(1.0)
    assert node.sync.internal.get(PASV.key) == PASV.attrs and node.sync.internal.get(b"k" * 16) == b"attrs"


def test_the_takeover_commits_the_expectations_apart_after_the_entries():
    node = started("takeover")
    mkey, mattrs = master_of(PASV)
    node.sync.peers[2].ext.apply(((PASV.key, PASV.attrs), (mkey, mattrs), (b"f" * 16, b"other flow")), 3, False)
    (commit,) = [a for a in master_down(node) if isinstance(a, CommitFlows)]
    assert sorted(commit.entries) == sorted((mattrs, b"other flow"))
    assert commit.expectations == (PASV.attrs,)


def test_commit_scope_group_takes_an_expectation_with_its_master_only():
    node = started("takeover")
    node.takeovers.scope = "group"
    mkey, mattrs = master_of(PASV)      # attrs the scope cannot read: they count as touching
    master = _event("vectors", "dump_ftp_control")          # the active FTP's real control connection
    assert ct.expect_master_key(ACTIVE.attrs) == master.key
    node.sync.peers[2].ext.apply(((PASV.key, PASV.attrs), (mkey, mattrs), (ACTIVE.key, ACTIVE.attrs),
                                  (master.key, master.attrs)), 3, False)
    (commit,) = [a for a in master_down(node) if isinstance(a, CommitFlows)]
    # group "lan" (192.0.2.0/24): the real control connection (192.168.100.2 -> 10.0.2.2) is out
    # of its scope, so is the expectation it made; PASV's master (unreadable attrs) is in
    assert commit.entries == (mattrs,)
    assert commit.expectations == (PASV.attrs,)


def test_continuous_applier_gets_the_expectations_apart():
    node = started("continuous")
    mkey, mattrs = master_of(PASV)
    node.sync.peers[2].ext.apply(((PASV.key, PASV.attrs), (mkey, mattrs)), 3, False)   # as received
    batch = [ExternalChanged(2, upserts=((PASV.key, PASV.attrs), (mkey, mattrs)),
                             deletes=((ACTIVE.key, ACTIVE.attrs), (b"g" * 16, b"gone")))]
    changes = node.kernel_changes(batch)
    assert changes.upserts == [mattrs] and changes.expect_upserts == [PASV.attrs]
    assert changes.deletes == [b"gone"] and changes.expect_deletes == [ACTIVE.attrs]


def test_an_expectation_used_up_before_its_adoption_is_not_adopted():
    """The data connection comes at once after the takeover: the expectation's EXP_DESTROY
    arrives before the adoption step, which must not bring it back as this node's."""
    from meshd.node.takeover import ADOPT_DELAY
    node = started("takeover")
    in_sync(node)
    mkey, mattrs = master_of(ACTIVE)
    peer = node.sync.peers[2]
    peer.ext.apply(((ACTIVE.key, ACTIVE.attrs), (mkey, mattrs)), 3, False)
    peer.epoch = 5                           # as if node 2's frames up to counter 3 had been heard
    node.sync.replay.accept(2, 5, 3)
    master_down(node)
    node.takeover_committed("lan", 10.1)
    node.addresses_added("lan", 10.2)
    node.kernel_events([USED_UP], 10.3)                    # used up on this node, before adoption
    due = node.takeovers.next_deadline()
    assert due >= 10.2 + ADOPT_DELAY
    while node.takeovers.next_deadline() is not None:
        node.takeovers.step(due)
    assert node.sync.internal.get(ACTIVE.key) is None      # not resurrected
    assert node.sync.internal.get(mkey) == mattrs          # its master is adopted
    assert node.sync.peers[2].stats["adopted entries ended"] == 1


def test_continuous_applier_holds_an_expectation_until_its_master_is_in():
    """A bulk sweeps bucket by bucket: an expectation can come before its master, and the
    kernel would refuse it (ENOENT). It waits, and goes in with (after) its master."""
    node = started("continuous")
    mkey, mattrs = master_of(PASV)
    ext = node.sync.peers[2].ext
    ext.apply(((PASV.key, PASV.attrs),), 3, False)
    first = node.kernel_changes([ExternalChanged(2, upserts=((PASV.key, PASV.attrs),), deletes=())])
    assert first.expect_upserts == [] and first.upserts == []
    ext.apply(((mkey, mattrs),), 4, False)
    second = node.kernel_changes([ExternalChanged(2, upserts=((mkey, mattrs),), deletes=())])
    assert second.upserts == [mattrs] and second.expect_upserts == [PASV.attrs]
    assert node.kernel_changes([]).expect_upserts == []          # once


def test_a_waiting_expectation_deleted_is_forgotten():
    node = started("continuous")
    node.kernel_changes([ExternalChanged(2, upserts=((PASV.key, PASV.attrs),), deletes=())])
    gone = node.kernel_changes([ExternalChanged(2, upserts=(), deletes=((PASV.key, PASV.attrs),))])
    assert gone.expect_deletes == [] and not node.flows._waiting      # it never went in


def test_with_min_age_an_expectation_is_held_like_a_flow():
    """[sync] min_age_ms holds an expectation as it holds a flow: one used up younger than
    that is never replicated, one that lives on is, after its master (which is older)."""
    node = started("takeover")
    node.flows.set_min_age(1.0, 0.0)
    node.kernel_events([ACTIVE], 1.0)
    node.kernel_events([USED_UP], 1.2)                  # used within the second
    assert node.sync.internal.get(ACTIVE.key) is None
    node._route(node.flows.release_young(3.0), 3.0)
    assert node.sync.internal.get(ACTIVE.key) is None   # never sent
    node.kernel_events([PASV], 4.0)
    node._route(node.flows.release_young(5.5), 5.5)
    assert node.sync.internal.get(PASV.key) == PASV.attrs
