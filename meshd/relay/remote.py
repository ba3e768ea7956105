"""The daemon's side of the relay engine (meshd/relay/engine.py).

`RelayEngine` keeps the engine running (a `ChildSupervisor`: restarted
0.5, 1, 2 ... 30 s apart) as `[health] relay_user`, and feeds it:

* at each start, the listening sockets of every relay, bound here as root
  with IP_FREEBIND (meshd/relay/listeners.py) and kept bound here, so
  clients queue in the backlog while the engine restarts; the engine gets
  copies at exec.  A relay whose socket cannot be bound (the port taken) is
  logged and left out, the others run;
* when it says hello: the relays (certificates and keys read here, sent as
  PEM), the live hosts of every table they use, the operator's drains;
* `tables_changed()`, called by the daemon after every batch of health
  actions: the live hosts of each table (HealthCore.live_hosts) compared
  with what the engine has, and the changed ones sent, so a relay follows
  its tables' health in the same event-loop step as the redirects do;
* `set_enabled(name, on)`: `meshctl relay disable|enable` (drain);
* `query(what)`: `show relays` / `show sessions`, answered by the engine;
  every REPORT_S the daemon asks for `relays` itself and keeps the answer
  for the metrics endpoint (`metrics_rows`).

The engine's coming and going is logged and shown by `meshctl status`; it
demotes nothing: relays are not part of the election or the state mesh (a
node whose relay engine is down still holds its addresses and its L3
redirects; its relays' clients are refused until it is back).

Reload: a change of the relays' listeners (address, port, protocol or
`tcp` options) or of `relay_user` restarts the engine (its sessions end);
any other change is sent to the running engine and applies to new
sessions.

Must not: accept a connection or parse a relayed byte (the engine does), or
decide a host's health (the health core).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import trio

from ..privsep.supervisor import Channel, ChildSupervisor
from .listeners import bind_relay
from .proto import FROM_RELAY, LOG_LEVELS, MAX_MESSAGE, TO_RELAY, live_fields, relay_fields

ENGINE_MODULE = "meshd.relay.engine"
QUERY_TIMEOUT_S = 3.0
REPORT_S = 2.0               # the metrics' relay counts are at most this old (plus a scrape)


class RelayUnavailable(Exception):
    """The engine is down, or did not answer a query in time."""


def _socket_key(relay) -> tuple:
    """What a relay's listening sockets are bound with."""
    t = relay.tcp
    return relay.listener(), t.backlog, t.sndbuf, t.rcvbuf, t.ip_ttl, t.ip_minttl


def listener_key(cfg) -> tuple:
    """What the engine is given at exec: a change restarts it."""
    return cfg.relay_uid, cfg.relay_gid, tuple(sorted((_socket_key(r) for r in cfg.relays), key=repr))


class RelayEngine:
    """Args:
        health: a callable returning the daemon's HealthCore (live_hosts).
        cfg: the `[health]` section (HealthConfig) with its relays.
        log: the event logger.
    """

    def __init__(self, health: Callable, cfg, *, log, module: str = ENGINE_MODULE):
        self.health = health
        self.cfg = cfg
        self.log = log
        self.channel: Channel | None = None
        self.overrides: dict[str, bool] = {}      # relay -> enabled, by the operator
        self.sent_live: dict[str, tuple] = {}
        self.pending: dict[int, tuple[trio.Event, list]] = {}
        self.ids = itertools.count(1)
        self.uid: int | None = None
        self.down_reason: str | None = "starting"
        self.changed_at = trio.current_time()
        self.not_listening: dict[str, str] = {}    # relay -> why its socket is missing
        self.bound: dict[tuple, list] = {}          # _socket_key -> the daemon's own sockets
        self.pems: dict[str, tuple] = {}            # relay -> (tls, backend_tls, PEMs last read)
        self.report: list[dict] = []                # the engine's last `relays` answer (metrics)
        self.report_at: float | None = None
        self.supervisor = ChildSupervisor(
            "relay engine", module, ["--uid", str(cfg.relay_uid), "--gid", str(cfg.relay_gid)],
            FROM_RELAY, TO_RELAY, log=log, on_up=self._up, on_message=self._message,
            on_down=self._down, extra_fds=self._listeners, max_size=MAX_MESSAGE)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_loop)
                await self.supervisor.run()
        finally:
            for socks in self.bound.values():
                for sock in socks:
                    sock.close()
            self.bound.clear()

    @property
    def up(self) -> bool:
        return self.channel is not None

    # ------------------------------------------------------------------ daemon's inputs

    def tables_changed(self) -> None:
        if self.channel is None:
            return
        core = self.health()
        for table in self._tables():
            hosts = core.live_hosts(table)
            if self.sent_live.get(table) != hosts:
                if self.channel.send_nowait("live", **live_fields(table, hosts)):
                    self.sent_live[table] = hosts

    def set_enabled(self, name: str, on: bool) -> None:
        """Raises KeyError for a relay not configured."""
        relay = self.cfg.relay(name)
        if relay is None:
            raise KeyError(name)
        if on == (not relay.disabled):
            self.overrides.pop(name, None)
        else:
            self.overrides[name] = on
        self.log("relay_enabled" if on else "relay_disabled", relay=name, by="operator")
        if self.channel is not None:
            self.channel.send_nowait("enable", relay=name, on=on)

    def enabled(self, name: str) -> bool:
        relay = self.cfg.relay(name)
        return self.overrides.get(name, relay is not None and not relay.disabled)

    def reload(self, cfg) -> None:
        """The new `[health]`: see the module docstring, "Reload"."""
        old = self.cfg
        self.cfg = cfg
        for name in list(self.overrides):
            a, b = old.relay(name), cfg.relay(name)
            if b is None or a is None or a.disabled != b.disabled:
                del self.overrides[name]       # the file's newer word
        if listener_key(old) != listener_key(cfg):
            keep = {_socket_key(r) for r in cfg.relays}
            for key in list(self.bound):
                if key not in keep:
                    for sock in self.bound.pop(key):
                        sock.close()
            self.supervisor.args = ["--uid", str(cfg.relay_uid), "--gid", str(cfg.relay_gid)]
            self.supervisor.restart("relay listeners or relay_user changed")
            return
        if self.channel is not None:
            self._send_relays()
            self.tables_changed()

    async def query(self, what: str) -> dict:
        """The engine's answer to `show relays` / `show sessions`; RelayUnavailable."""
        if self.channel is None:
            raise RelayUnavailable(f"relay engine is down ({self.down_reason})")
        qid = next(self.ids)
        done = trio.Event()
        box: list = []
        self.pending[qid] = (done, box)
        try:
            if not self.channel.send_nowait("query", id=qid, what=what):
                raise RelayUnavailable("relay engine's channel is full or closed")
            with trio.move_on_after(QUERY_TIMEOUT_S):
                await done.wait()
        finally:
            self.pending.pop(qid, None)
        if not box:
            raise RelayUnavailable(f"relay engine did not answer within {QUERY_TIMEOUT_S:g} s")
        return box[0]

    async def _report_loop(self) -> None:
        """The engine's counts every REPORT_S, for the metrics: a scrape reads
        the last report and never waits for the engine."""
        while True:
            await trio.sleep(REPORT_S)
            if self.channel is None:
                continue
            try:
                answer = await self.query("relays")
            except RelayUnavailable:
                continue
            self.report, self.report_at = answer["relays"], trio.current_time()

    def metrics_rows(self, now: float) -> dict:
        """For meshd/metrics/snapshot.py: the engine's state and its last report."""
        return {"up": self.up, "starts": self.supervisor.starts,
                "age_s": None if self.report_at is None else round(now - self.report_at, 3),
                "rows": self.report}

    def status(self, now: float) -> dict:
        return {"up": self.up, "pid": self.supervisor.pid if self.up else None,
                "uid": self.uid if self.up else None, "since_s": round(now - self.changed_at, 1),
                "down_reason": self.down_reason, "starts": self.supervisor.starts,
                "not_listening": dict(self.not_listening)}

    # ------------------------------------------------------------------ the supervisor's callbacks

    def _listeners(self) -> dict:
        """Copies of the bound sockets (the originals stay here, so connections
        queue in their backlog while the engine restarts); binds what is missing."""
        socks = []
        self.not_listening = {}
        for relay in self.cfg.relays:
            key = _socket_key(relay)
            try:
                if key not in self.bound:
                    self.bound[key] = bind_relay(relay)
                socks += [s.dup() for s in self.bound[key]]
            except OSError as e:
                why = e.strerror or str(e)
                self.not_listening[relay.name] = why
                self.log("relay_listen_failed", level="error", relay=relay.name, address=relay.address,
                         port=relay.port, error=why)
        return {"listen": socks} if socks else {}

    def _up(self, channel: Channel, hello) -> None:
        self.channel = channel
        self.uid = hello.fields["uid"]
        self.down_reason = None
        self.changed_at = trio.current_time()
        self.sent_live = {}
        self.log("relay_engine_up", pid=hello.fields["pid"], uid=hello.fields["uid"],
                 notes=hello.fields["notes"] or None)
        self._send_relays()
        self.tables_changed()

    def _message(self, m) -> None:
        if m.type == "answer":
            waiting = self.pending.get(m.fields["id"])
            if waiting is not None:
                waiting[1].append(m.fields)
                waiting[0].set()
        elif m.type == "log":
            level = m.fields["level"] if m.fields["level"] in LOG_LEVELS else "warning"
            self.log("relay_engine_says", level=level, what=m.fields["event"], text=m.fields["text"] or None)

    def _down(self, reason: str) -> None:
        if self.channel is not None or self.down_reason is None:
            self.log("relay_engine_down", level="warning", reason=reason)
        self.channel = None
        self.down_reason = reason
        self.changed_at = trio.current_time()
        for done, _box in self.pending.values():
            done.set()

    def _send_relays(self) -> None:
        items = []
        for relay in self.cfg.relays:
            try:
                pems = _read_pems(relay)
                self.pems[relay.name] = (relay.tls, relay.backend_tls, pems)
            except OSError as e:
                kept = self.pems.get(relay.name)
                # The same files read before (a certificate being replaced, say): keep serving them.
                usable = kept is not None and kept[:2] == (relay.tls, relay.backend_tls)
                self.log("relay_tls_unreadable", level="error", relay=relay.name, file=e.filename,
                         error=e.strerror or str(e), kept_previous=usable)
                if not usable:
                    continue
                pems = kept[2]
            items.append(relay_fields(relay, *pems, disabled=not self.enabled(relay.name)))
        if not self.channel.send_nowait("relays", relays=items):
            self.log("relay_config_not_sent", level="error", relays=len(items))

    def _tables(self) -> list[str]:
        out: list[str] = []
        for r in self.cfg.relays:
            for t in (r.table, r.backup_table):
                if t is not None and t not in out:
                    out.append(t)
        return out


def _read_pems(relay) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(certificate, key, backend CA) of a relay, read as root; OSError."""
    def read(path):
        with open(path, "rb") as f:
            return f.read()
    cert = key = ca = None
    if relay.tls is not None:
        cert, key = read(relay.tls.certificate), read(relay.tls.key)
    if relay.backend_tls is not None and relay.backend_tls.ca is not None:
        ca = read(relay.backend_tls.ca)
    return cert, key, ca
