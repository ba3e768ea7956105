"""No (frame key, nonce) pair is ever sealed twice, across starts (issue 11).

The finding: a node in a crash loop runs its epochs ahead of the wall clock
(stored epoch + 1 at each start); when its state_dir is then lost, the
clock floor gives it an epoch it already used: the same frame key, the
counter back at 1, so AES-GCM nonces repeat (the XOR of two plaintexts
leaks, and so does the authentication key).  The boot id (16 random bytes
per start, bound into the frame key; proto/sync.md, section 3) makes every
start's key its own.

The test records the key and nonce of every AES-GCM encryption the state
mesh makes, through the real StateStore epochs and real SyncCores.
"""

from __future__ import annotations

import shutil
from typing import ClassVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshd.crypto import SYNC_INFO, KeyRing
from meshd.kernel import ctnetlink as ct
from meshd.state import StateStore
from meshd.sync import core as sync_core
from meshd.sync import frames

KEYS = KeyRing.from_secrets({1: bytes(range(32))}, 1, SYNC_INFO)
CLOCK = 1_700_000_000.0


class RecordingAESGCM:
    """AESGCM, with every (key, nonce) it encrypts under recorded."""

    sealed: ClassVar[list[tuple[bytes, bytes]]] = []

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)
        self._key = bytes(key)

    def encrypt(self, nonce, data, associated_data):
        RecordingAESGCM.sealed.append((self._key, bytes(nonce)))
        return self._aead.encrypt(nonce, data, associated_data)

    def decrypt(self, nonce, data, associated_data):
        return self._aead.decrypt(nonce, data, associated_data)


def _one_life(store: StateStore, wall_clock: float, flows: int) -> None:
    """One start of node 1: the epoch from the store, a few frames sealed, a crash."""
    epoch = store.next_epoch(wall_clock=wall_clock)
    core = sync_core.SyncCore(1, [2], KEYS, epoch)
    core.start(0.0)
    events = [(ct.NEW, b"flow %d" % i, b"attrs %d" % i) for i in range(flows)]
    core.local_events(events, 0.01)
    core.handle_timer(core.next_deadline())


def test_a_crash_loop_then_a_lost_state_dir_never_reuses_a_key_and_nonce(tmp_path, monkeypatch):
    monkeypatch.setattr(frames, "AESGCM", RecordingAESGCM)
    RecordingAESGCM.sealed = []
    state = tmp_path / "state"
    store = StateStore(str(state))
    store.ensure()
    # A crash loop: 30 starts within 3 s of wall clock, epochs run ahead of it.
    for i in range(30):
        _one_life(store, CLOCK + i * 0.1, flows=40)
    # The state_dir is lost (disk replaced); the node starts again, and again.
    shutil.rmtree(state)
    store.ensure()
    for i in range(30):
        _one_life(store, CLOCK + 3 + i * 0.1, flows=40)
    sealed = RecordingAESGCM.sealed
    assert len(sealed) >= 60 * 3          # a heartbeat, a resync request, records
    repeated = len(sealed) - len(set(sealed))
    assert repeated == 0, f"{repeated} of {len(sealed)} (key, nonce) pairs sealed twice"
