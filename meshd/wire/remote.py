"""The daemon's side of the wire engine (meshd/wire/engine.py).

`WireEngine` keeps the engine running (a `ChildSupervisor`, restarted 0.1,
0.2 ... at most 2 s apart: a deaf node is a node that cannot take over) and
feeds what it forwards to the node core:

* `advert`: `NodeCore.advert`, with the TTL and interface the kernel reported
  to the engine; `frame`: `SyncShell.frame_in`.  The cores check each one
  again, in full: the engine is trusted with nothing but sparing the daemon
  the forgeries;
* `rejects`: the datagrams it refused, counted by the cores as their own
  rejects (`NodeCore.advert_refused`, `SyncShell.refused_in`): the stats,
  the reject log, the flood guard and `meshctl cluster` see them as before;
* what one read of the channel produced is dispatched at once
  (`on_batch`), and the election shell's flood guard told of it;
* `read_queued` reads what the channel already holds without waiting, for
  ReadFirst (a backup's master-down must not act on adverts that wait
  unread, meshd/election/shell.py).

While the engine is down the node hears nothing: `NodeCore.wire_engine`
holds every backup's master-down until it is back (ElectionCore.set_deaf).
An engine that is there but no longer reads (hung in a parser, stopped) is
as deaf: it sends a `tick` or a report every TICK_S, stamped with the
host's monotonic clock, and before a master-down acts (ReadFirst) an
engine silent for more than SILENT_S makes the node deaf until its next
message (`check_silence`).
The engine is given the sockets at exec, so a reload that opens an election
socket of a new family restarts it (`sockets_changed`).

Must not: read a socket from the network itself, or decide anything (the
node core does).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import trio

from ..privsep.backoff import Backoff
from ..privsep.supervisor import Channel, ChildSupervisor
from .proto import FROM_WIRE, LOG_LEVELS, TO_WIRE, keys_fields

ENGINE_MODULE = "meshd.wire.engine"
SILENT_S = 0.1                 # no tick for this long: the engine is not reading (TICK_S is 0.02)
READ_FIRST_BYTES = 1 << 20     # one ReadFirst's read of the channel (more than a flood's socket buffer)
MAX_MESSAGE = 96 << 10         # a datagram of up to 64 KiB, framed


class WireEngine:
    """Args:
        node: the NodeCore.
        election: the ElectionShell (its sockets, its flood guard).
        sync: the SyncShell, or None.
        dispatch: the daemon's router for the actions the node returns.
        uid, gid: the engine's user (`[node] wire_user`).
        log: the event logger.
    """

    def __init__(self, node, election, sync, dispatch: Callable[[list], None], *,
                 uid: int, gid: int, log, module: str = ENGINE_MODULE):
        self.node = node
        self.election = election
        self.sync = sync
        self.dispatch = dispatch
        self.log = log
        self.channel: Channel | None = None
        self.uid: int | None = None
        self.down_reason: str | None = "starting"
        self.changed_at = trio.current_time()
        self.forwarded = {"advert": 0, "frame": 0}
        self.refused = {"election": 0, "sync": 0}
        self.last_at: float | None = None          # the engine's clock at its last tick or report
        self.silent = False
        self.silences = 0
        self._election_out: list = []
        self._sync_out: list = []
        self._families = self._socket_families()
        self.supervisor = ChildSupervisor(
            "wire engine", module, ["--uid", str(uid), "--gid", str(gid)], FROM_WIRE, TO_WIRE,
            log=log, on_up=self._up, on_message=self._message, on_down=self._down,
            extra_fds=self._fds, backoff=Backoff(first=0.1, limit=2.0), on_batch=self._flush,
            max_size=MAX_MESSAGE)

    async def run(self) -> None:
        await self.supervisor.run()

    @property
    def up(self) -> bool:
        return self.channel is not None

    # ------------------------------------------------------------------ the daemon's calls

    def read_queued(self, now: float) -> list:
        """What the engine forwarded and is not read yet, fed to the node; the
        actions (those of frames included: they are the node's too)."""
        if self.channel is not None:
            self.channel.read_nowait(self._message, READ_FIRST_BYTES)
        election, sync = self._election_out, self._sync_out
        self._election_out, self._sync_out = [], []
        return election + sync

    def check_silence(self, now_mono: float) -> list:
        """Before a master-down acts: an engine up but silent for SILENT_S
        (by `now_mono`, time.monotonic()) makes the node deaf; the actions."""
        if self.channel is None or self.silent or self.last_at is None:
            return []
        silent_for = now_mono - self.last_at
        if silent_for <= SILENT_S:
            return []
        self.silent = True
        self.silences += 1
        self.log("wire_engine_silent", level="error", pid=self.supervisor.pid,
                 silent_ms=round(silent_for * 1000),
                 what="not reading the network; backups hold until it is heard again")
        return self.node.wire_engine(False, f"wire engine silent for {round(silent_for * 1000)} ms",
                                     trio.current_time())

    def keys_changed(self) -> None:
        """A reload may have changed the keys: the engine screens under the node's."""
        if self.channel is not None:
            self._send_keys(self.channel)

    def sockets_changed(self) -> None:
        """A reload opened an election socket of another family: the engine,
        which was given the sockets at exec, starts again with them."""
        families = self._socket_families()
        if families != self._families:
            self._families = families
            self.supervisor.restart(f"election sockets now {sorted(families['election'])}")

    def status(self, now: float) -> dict:
        """For `meshctl status`."""
        return {"up": self.up, "pid": self.supervisor.pid if self.up else None,
                "uid": self.uid if self.up else None, "since_s": round(now - self.changed_at, 1),
                "down_reason": self.down_reason, "starts": self.supervisor.starts,
                "silent": self.silent, "silences": self.silences,
                "forwarded": dict(self.forwarded), "refused": dict(self.refused)}

    # ------------------------------------------------------------------ the supervisor's callbacks

    def _socket_families(self) -> dict:
        return {"election": set(self.election.sockets.socks),
                "sync": self.sync is not None and self.sync.sock is not None}

    def _fds(self) -> dict:
        """Our sockets, duplicated for the engine (the supervisor closes what it
        passed; the daemon keeps its own descriptor to send on)."""
        out = {}
        for family, s in self.election.sockets.socks.items():
            out[f"election{family}"] = socket.socket(fileno=os.dup(s.fileno()))
        if self.sync is not None and self.sync.sock is not None:
            out["sync"] = socket.socket(fileno=os.dup(self.sync.sock.fileno()))
        return out

    def _send_keys(self, channel: Channel) -> None:
        sync_keys = self.node.sync.keys if self.node.sync is not None else None
        if not channel.send_nowait("keys", **keys_fields(self.node.election.keys, sync_keys)):
            self.log("wire_engine_keys_lost", level="error",
                     what="the engine's queue refused the keys; restarting it")
            self.supervisor.restart("keys not delivered")

    def _up(self, channel: Channel, hello) -> None:
        self.channel = channel
        self.last_at = None
        self.silent = False
        self.uid = hello.fields["uid"]
        self.down_reason = None
        self.changed_at = trio.current_time()
        self._send_keys(channel)
        self.log("wire_engine_up", pid=hello.fields["pid"], uid=hello.fields["uid"],
                 notes=hello.fields["notes"] or None)
        self.dispatch(self.node.wire_engine(True, "wire engine up", trio.current_time()))

    def _message(self, m) -> None:
        f = m.fields
        t = m.type
        now = trio.current_time()
        if t == "advert":
            self.forwarded["advert"] += 1
            self._election_out += self.node.advert(f["data"], f["source"], now, ttl=f["ttl"],
                                                   interface=f["interface"])
        elif t == "frames":
            items = f["items"]
            self.forwarded["frame"] += len(items)
            if self.sync is not None:
                frame_in, out = self.sync.frame_in, self._sync_out
                for item in items:
                    out += frame_in(item["data"], item["source"], now)
        elif t == "rejects" or t == "tick":
            self.last_at = f["at"]
            if self.silent:
                self.silent = False
                self.log("wire_engine_heard", pid=self.supervisor.pid)
                self._election_out += self.node.wire_engine(True, "wire engine heard again", now)
            for e in f.get("entries", ()):
                self._refused(e, now)
        elif t == "log":
            level = f["level"] if f["level"] in LOG_LEVELS else "warning"
            self.log("wire_engine_says", level=level, what=f["event"], text=f["text"] or None)

    def _refused(self, e: dict, now: float) -> None:
        channel, count = e["channel"], e["count"]
        if channel == "election":
            self.refused["election"] += count
            self._election_out += self.node.advert_refused(e["reason"], e["detail"], e["source"],
                                                           count, now)
        elif channel == "sync" and self.sync is not None:
            self.refused["sync"] += count
            self._sync_out += self.sync.refused_in(e["reason"], e["detail"], e["source"], count, now)

    def _flush(self) -> None:
        """After each read of the channel: the flood guard, then the dispatcher."""
        if not (self._election_out or self._sync_out):
            return
        now = trio.current_time()
        election, sync = self._election_out, self._sync_out
        self._election_out, self._sync_out = [], []
        self.election.watch_rejects(election, now)
        self.dispatch(election + sync)

    def _down(self, reason: str) -> None:
        self.channel = None
        self.down_reason = reason
        self.changed_at = trio.current_time()
        self.dispatch(self.node.wire_engine(False, f"wire engine down: {reason}", trio.current_time()))
