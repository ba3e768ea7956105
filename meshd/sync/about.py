"""ABOUT frames (proto/sync.md, 4.7): who this node is, its groups as it
sees them, and the settings every node must agree on; what each peer said.

Why in the state mesh: its frames are authenticated and encrypted, sent
to every peer, and extensible, while an advert is 72 fixed bytes.  ABOUT
changes nothing in the mesh itself: it is what `meshctl cluster` shows.

Must not: interpret the settings (meshd/config/shared.py compares them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .actions import PeerAbout
from .frames import ABOUT_SETTINGS_MAX, FrameType, packb
from .outbound import send as send_frame
from .peer import Peer

if TYPE_CHECKING:
    from .core import SyncCore

ABOUT_INTERVAL_S = 2.0         # resent this often: a peer that starts hears it within that


def body(core: SyncCore) -> tuple | None:
    """The ABOUT body, its settings cut to fit one datagram (most important first)."""
    ident = core.about_identity
    if ident is None:
        return None
    name, version, settings, digest = ident
    groups = tuple(core.about_groups)
    # Each pair's packed size, summed: one pass, not a repack per pair dropped.
    # The room left after the rest of the body, its header and tag (52 bytes),
    # and the settings array's own header (at most 3 bytes).
    room = core.max_datagram - 52 - 3 - len(packb((name, version, groups, digest, (), 0)))
    kept = []
    for pair in settings[:ABOUT_SETTINGS_MAX]:
        room -= len(packb(tuple(pair)))
        if room < 0:
            break
        kept.append(pair)
    complete = int(len(kept) == len(settings))
    return (name, version, groups, digest, tuple(tuple(p) for p in kept), complete)


def send(core: SyncCore, now: float) -> None:
    b = body(core)
    if b is not None and core.peers:
        send_frame(core, None, FrameType.ABOUT, b)
    core.about_at = now + ABOUT_INTERVAL_S


def on_about(core: SyncCore, p: Peer, counter: int, body: tuple, now: float) -> None:
    name, version, groups, digest, settings, complete = body
    p.about = {"name": name, "version": version,
               "groups": [{"id": g[0], "state": g[1], "demotion": g[2]} for g in groups],
               "settings_digest": digest, "settings": [tuple(s) for s in settings],
               "complete": bool(complete)}
    p.about_heard = now
    core.out.append(PeerAbout(p.id))
