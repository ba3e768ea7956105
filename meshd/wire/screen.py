"""What the wire engine lets through to the daemon (sans-I/O).

The screen is the first reader of every datagram from the network: an
advert must decode and carry a valid MAC under one of the election keys
(meshd/election/wire.py, `decode_advert`), a sync frame a valid header and
an AES-GCM tag under one of the state mesh's keys (meshd/sync/frames.py,
`parse_header` and `FrameOpener.open`).  What passes goes to the daemon
as it came, and the daemon's cores check it again, in full, with the
history only they hold (replay windows, peers, group configuration): the
screen only decides what is worth the daemon's attention, never what it
means.

What fails is counted here, per channel and reason, and reported in
batches (`RejectTally`): the daemon's cores count it, the flood guard weighs
it and the reject log writes it, as if the core had refused it itself.
The tally holds at most MAX_KEYS (channel, reason, source) keys between
reports; the rest of a flood is counted under its reason with no source.

Must not: do I/O, read a clock, or hold state about a sender (that is the
cores' history, and a compromised screen must not be able to make up any).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..crypto import KeyRing
from ..election.wire import AdvertError, decode_advert
from ..sync.frames import FrameError, FrameOpener, parse_header

MAX_KEYS = 48                 # (channel, reason, source) keys held between two reports
CHANNELS = ("election", "sync")


@dataclass
class RejectTally:
    """Refused datagrams between two reports: {(channel, reason, source): [count, detail]}."""
    entries: dict[tuple[str, str, str | None], list] = field(default_factory=dict)
    total: int = 0

    def add(self, channel: str, reason: str, detail: str, source: str) -> None:
        self.total += 1
        key = (channel, reason, source)
        e = self.entries.get(key)
        if e is None:
            if len(self.entries) >= MAX_KEYS:
                key = (channel, reason, None)       # a flood from many sources: its reason only
                e = self.entries.get(key)
            if e is None:
                e = self.entries[key] = [0, detail]
        e[0] += 1
        e[1] = detail

    def report(self) -> list[dict]:
        """The entries as the `rejects` message carries them; the tally starts again."""
        out = [{"channel": ch, "reason": reason, "detail": detail[:512], "source": source,
                "count": count}
               for (ch, reason, source), (count, detail) in self.entries.items()]
        self.entries = {}
        return out


class Screen:
    """Args: the election's and the state mesh's key rings (None: no such channel)."""

    def __init__(self, election_keys: KeyRing | None, sync_keys: KeyRing | None):
        self.election_keys = election_keys
        self.opener = FrameOpener(sync_keys) if sync_keys is not None else None
        self.tally = RejectTally()
        self.passed = {"election": 0, "sync": 0}

    def set_keys(self, election_keys: KeyRing | None, sync_keys: KeyRing | None) -> None:
        """A reload changed the keys: screen under the new ones from now on."""
        self.election_keys = election_keys
        if sync_keys is None:
            self.opener = None
        elif self.opener is None:
            self.opener = FrameOpener(sync_keys)
        else:
            self.opener.rekey(sync_keys)

    def advert(self, data: bytes, source: str) -> bool:
        """True: an authentic advert, for the daemon.  False: refused and counted."""
        if self.election_keys is None:
            self.tally.add("election", "no keys", "the daemon has not sent the keys yet", source)
            return False
        try:
            decode_advert(data, self.election_keys)
        except AdvertError as e:
            self.tally.add("election", e.reason, e.detail, source)
            return False
        self.passed["election"] += 1
        return True

    def frame(self, data: bytes, source: str) -> bool:
        """True: a frame whose tag is valid, for the daemon.  False: refused and counted."""
        if self.opener is None:
            self.tally.add("sync", "no keys", "the daemon has not sent the keys yet", source)
            return False
        try:
            header = parse_header(data)
            self.opener.open(data, header)
        except FrameError as e:
            self.tally.add("sync", e.reason, e.detail, source)
            return False
        self.passed["sync"] += 1
        return True
