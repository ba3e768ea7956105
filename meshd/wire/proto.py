"""The wire engine's messages (imsg schemas, meshd/privsep/imsg.py).

    daemon → engine   keys {election: [{id, key}], send_election, sync: [{id, key}] | nil, send_sync}
    engine → daemon   hello {pid, uid, notes}
                      advert {family, data, source, ttl, interface}
                      frames {items: [{data, source}]}   (those of one read burst)
                      rejects {at, entries: [{channel, reason, detail, source, count}]}
                      tick {at}
                      log {event, level, text}

The keys are the derived keys of each purpose (meshd/crypto.py, HKDF of
the cluster secrets), never the secrets themselves: the engine can check a
MAC, and nothing else.  An `advert` or a `frame` is the datagram as it came
(at most a UDP payload), checked again in full by the daemon's cores; the
frames of one read burst travel in one `frames` message (at most MAX_FRAMES,
MAX_FRAMES_BYTES of data).
`at` is the engine's time.monotonic() (the host's clock, shared by both
processes) when it sent a `tick` or a report, every TICK_S: the daemon
knows from it whether the engine is still reading (WireEngine.check_silence).

Must not: do I/O.
"""

from __future__ import annotations

from ..crypto import KeyRing
from ..privsep.imsg import Field, Schema

MAX_KEYS = 16                  # key ids per purpose (two during a rotation, in practice)
MAX_DATAGRAM = 65535
MAX_REJECT_ENTRIES = 64        # per report (the screen holds at most 48 keys between reports)
MAX_TEXT = 1024
TICK_S = 0.02                  # the engine's heartbeat (a report or a tick), in seconds
MAX_FRAMES = 64                # frames per `frames` message: one read burst of the engine
MAX_FRAMES_BYTES = 64 << 10    # and their data together, under the channel's message limit

_KEY = Field("struct", struct={"id": Field("int", lo=0, hi=(1 << 32) - 1),
                               "key": Field("bytes", max_len=64)})
_SOURCE = Field("str", max_len=64)

TO_WIRE = Schema({
    "keys": {"election": Field("list", item=_KEY, max_len=MAX_KEYS),
             "send_election": Field("int", lo=0, hi=(1 << 32) - 1),
             "sync": Field("list", item=_KEY, max_len=MAX_KEYS, optional=True),
             "send_sync": Field("int", lo=0, hi=(1 << 32) - 1, optional=True)},
})

_REJECT = Field("struct", struct={
    "channel": Field("str", max_len=16),
    "reason": Field("str", max_len=64),
    "detail": Field("str", max_len=512),
    "source": Field("str", max_len=64, optional=True),
    "count": Field("int", lo=1, hi=(1 << 40)),
})

FROM_WIRE = Schema({
    "hello": {"pid": Field("int", lo=1), "uid": Field("int", lo=0), "notes": Field("str")},
    "advert": {"family": Field("int", lo=4, hi=6), "data": Field("bytes", max_len=MAX_DATAGRAM),
               "source": _SOURCE, "ttl": Field("int", lo=0, hi=255, optional=True),
               "interface": Field("str", max_len=16, optional=True)},
    # Frames go in batches, those of one read burst: a message per frame cost the
    # daemon as much as the external cache they feed (docs/benchmarks.md, row 8).
    "frames": {"items": Field("list", max_len=MAX_FRAMES, item=Field("struct", struct={
        "data": Field("bytes", max_len=MAX_DATAGRAM), "source": _SOURCE}))},
    "rejects": {"at": Field("float"), "entries": Field("list", item=_REJECT, max_len=MAX_REJECT_ENTRIES)},
    "tick": {"at": Field("float")},
    "log": {"event": Field("str", max_len=64), "level": Field("str", max_len=16),
            "text": Field("str", max_len=MAX_TEXT)},
})

LOG_LEVELS = ("debug", "info", "notice", "warning", "error")


def keys_fields(election: KeyRing, sync: KeyRing | None) -> dict:
    """The `keys` message's fields for these rings."""
    def ring(r: KeyRing) -> list[dict]:
        return [{"id": kid, "key": key} for kid, key in sorted(r.keys.items())]
    return {"election": ring(election), "send_election": election.send_id,
            "sync": ring(sync) if sync is not None else None,
            "send_sync": sync.send_id if sync is not None else None}


def rings_from(fields: dict) -> tuple[KeyRing | None, KeyRing | None]:
    """The key rings of a `keys` message; None for a ring that is absent or whose
    send id names no key (a daemon bug: the screen then refuses that channel)."""
    def ring(entries, send_id) -> KeyRing | None:
        if entries is None:
            return None
        keys = {e["id"]: e["key"] for e in entries}
        if not keys:
            return None
        return KeyRing(keys, send_id if send_id in keys else next(iter(keys)))
    return ring(fields["election"], fields["send_election"]), ring(fields["sync"], fields["send_sync"])
