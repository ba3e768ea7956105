"""The relay engine: meshd's layer-7 relays in a process of their own.

Started by the daemon (meshd/relay/remote.py, through
meshd/privsep/supervisor.py) as

    python -m meshd.relay.engine --fd N --parent PID --uid UID --gid GID
                                 [--listen FD ...]

It loads its code, drops to `[health] relay_user` (meshd/privsep/drop.py: no
capability, no new privileges, killed with its parent) before it reads
anything, and then accepts on the listening sockets the daemon bound for it
(`--listen`, one per socket: the daemon is root and binds ports below 1024
with IP_FREEBIND; the engine may bind nothing).  Each socket is matched to
its relay by its local address and type.

Everything a relay parses (TLS records, HTTP requests, DNS messages) and
every byte a client or a backend sends reaches this process, never the
daemon: a parser bug or a hostile peer can crash it, and the daemon restarts
it (no election, no state mesh, no nftables table is touched).

From the daemon (meshd/relay/proto.py): the relays (whole set each time),
the live hosts of each table they use (on every change of their health),
enable / disable (drain), and queries for `show relays` / `show sessions`.

Must not: pick a host's health (it follows what the daemon sends), bind a
socket, or read a file of the operator's (the daemon reads certificates and
keys and sends their PEM).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

from ..privsep.child import ChildLog, child_main, parser

HANDSHAKE_S = 10.0          # a client's TLS handshake, at most
ACCEPT_BURST = 64           # connections accepted per wake-up of a listener, then a checkpoint


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("meshd-relay-engine")
    p.add_argument("--listen", type=int, action="append", default=[])
    return p.parse_args(argv)


def _preload() -> None:
    """Every module the engine will use, loaded before the drop (an interpreter
    under a private directory can load nothing after it).  No byte of input
    is read here."""
    import encodings.idna  # noqa: F401
    import ssl  # noqa: F401
    import stringprep  # noqa: F401
    import unicodedata  # noqa: F401

    import msgpack  # noqa: F401
    import trio  # noqa: F401

    from ..config import relay as relay_config
    from ..privsep import supervisor  # noqa: F401
    from . import balance, proto, tcp, tls, upstream  # noqa: F401
    for protocol in relay_config.PROTOCOL_PARSERS:
        relay_config.protocol_parser(protocol)
        _protocol_module(protocol)


def _protocol_module(protocol: str):
    """meshd.relay.http / meshd.relay.dnsrelay, or None while not built in."""
    import importlib
    name = {"http": "meshd.relay.http", "dns": "meshd.relay.dnsrelay"}.get(protocol)
    if name is None:
        return None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    return child_main("relay engine", _args(argv), _preload, _serve)


async def _serve(args: argparse.Namespace, notes: str) -> None:
    import socket

    import trio

    from ..privsep.supervisor import Channel
    from .proto import FROM_RELAY, MAX_MESSAGE, TO_RELAY

    log = ChildLog("relay engine")
    channel = log.channel = Channel(socket.socket(fileno=args.fd), TO_RELAY, FROM_RELAY, log, "daemon",
                                    max_size=MAX_MESSAGE)
    listeners = [socket.socket(fileno=fd) for fd in args.listen]
    async with trio.open_nursery() as nursery:
        engine = RelayEngine(nursery, channel, log, listeners)
        nursery.start_soon(channel.sender)
        channel.send_nowait("hello", pid=os.getpid(), uid=os.getuid(), notes=notes)
        await channel.messages(engine.handle)
        nursery.cancel_scope.cancel()


class Session:
    __slots__ = ("id", "relay", "client", "backend", "started", "stream")

    def __init__(self, sid, relay, client, started, stream):
        self.id, self.relay, self.client, self.started, self.stream = sid, relay, client, started, stream
        self.backend = None


class RelayRuntime:
    """One relay in the engine: its settings, balancer, TLS contexts, sessions, counters."""

    def __init__(self, config: dict, live: dict, log):
        import trio

        from .balance import RelayBalancer
        from .upstream import RelayLog
        self.balancer = RelayBalancer(config["name"], config["mode"], config["table"],
                                      config["backup_table"], not config["disabled"])
        for table, hosts in live.items():
            self.balancer.set_live(table, hosts)
        self.log = RelayLog(config["name"], log)
        self.scope = trio.CancelScope()
        self.nursery = None
        self.sessions: dict[int, Session] = {}
        self.total = 0
        self.errors = 0
        self.connect_errors = 0
        self.listening = False
        self.stats = None
        self.apply(config)

    def apply(self, config: dict) -> None:
        """New settings (a reload); sessions already open keep theirs.  Raises
        ValueError / ssl.SSLError for TLS material that does not load."""
        from types import SimpleNamespace

        from ..config.reader import Reader
        from ..config.relay import parse_protocol_spec
        from . import tls
        from .interface import Timeouts
        server_ssl = None
        if config["tls"] is not None:
            t = config["tls"]
            server_ssl = tls.server_context(t["cert_pem"], t["key_pem"], t["ciphers"], t["min_version"],
                                            t["session_cache"])
        backend_ssl = None
        if config["backend_tls"] is not None:
            backend_ssl = tls.backend_context(config["backend_tls"]["verify"], config["backend_tls"]["ca_pem"])
        spec = None
        if config["protocol"] != "tcp":
            import msgpack
            raw = config["protocol_raw"]
            r = Reader("relay engine")
            spec = parse_protocol_spec(r, config["protocol"],
                                       None if raw is None else msgpack.unpackb(raw, raw=False),
                                       f"health.relay[{config['name']}].{config['protocol']}")
            if r.problems:
                raise ValueError("; ".join(r.problems))
        self.config = config
        self.server_ssl, self.backend_ssl, self.spec = server_ssl, backend_ssl, spec
        self.tcp = SimpleNamespace(**{k: config[k] for k in ("nodelay", "sndbuf", "rcvbuf", "ip_ttl",
                                                             "ip_minttl")})
        self.timeouts = Timeouts(config["connect_s"], config["idle_s"], config["session_s"])
        self.balancer.reconfigure(config["mode"], config["table"], config["backup_table"])
        self.balancer.set_enabled(not config["disabled"])      # the file's word and the operator's, merged
        self.handler, stats_type = _handler(config["protocol"])
        if not isinstance(self.stats, stats_type):
            self.stats = stats_type()


def _handler(protocol: str):
    """(handler(client, spec, upstream, session, timeouts, stats), stats class)."""
    from . import tcp
    if protocol == "tcp":
        async def serve(client, spec, upstream, session, timeouts, stats):
            await tcp.serve_tcp(client, upstream, session, timeouts, stats)
        return serve, tcp.TcpStats
    module = _protocol_module(protocol)
    if module is None:
        raise ValueError(f"protocol {protocol} is not built into this engine")
    if protocol == "http":
        return module.serve_http, module.HttpStats
    return module.serve_dns_tcp, module.DnsStats


class RelayEngine:
    def __init__(self, nursery, channel, log, listeners):
        self.nursery = nursery
        self.channel = channel
        self.log = log
        self.listeners = {(_local(s), s.type): s for s in listeners}
        self.relays: dict[str, RelayRuntime] = {}
        self.live: dict[str, tuple] = {}
        self.ids = itertools.count(1)

    def handle(self, m) -> None:
        if m.type == "relays":
            self._set_relays(m.fields["relays"])
        elif m.type == "live":
            hosts = tuple((h["host"], h["address"], h["port"], h["weight"]) for h in m.fields["hosts"])
            self.live[m.fields["table"]] = hosts
            for rt in self.relays.values():
                rt.balancer.set_live(m.fields["table"], hosts)
        elif m.type == "enable":
            rt = self.relays.get(m.fields["relay"])
            if rt is not None:
                rt.balancer.set_enabled(m.fields["on"])
        elif m.type == "query":
            self._answer(m.fields["id"], m.fields["what"])

    # ------------------------------------------------------------------ relays

    def _set_relays(self, configs: list[dict]) -> None:
        wanted = {c["name"]: c for c in configs}
        for name in list(self.relays):
            if name not in wanted:
                self.relays.pop(name).scope.cancel()
                self.log("relay_removed", "info", relay=name)
        for name, config in wanted.items():
            rt = self.relays.get(name)
            try:
                if rt is None:
                    rt = RelayRuntime(config, self.live, self.log)
                else:
                    rt.apply(config)
                    continue
            except (ValueError, OSError) as e:
                self.log("relay_refused", "error", relay=name, error=str(e)[:300])
                continue
            except Exception as e:  # noqa: BLE001 (ssl raises its own kinds; the relay is refused, not the engine)
                self.log("relay_refused", "error", relay=name, error=f"{type(e).__name__}: {e}"[:300])
                continue
            self.relays[name] = rt
            self.nursery.start_soon(self._run_relay, rt)

    async def _run_relay(self, rt: RelayRuntime) -> None:
        import socket

        import trio
        c = rt.config
        kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if c["protocol"] == "dns" else [])
        socks = []
        for kind in kinds:
            s = self.listeners.get(((c["address"], c["port"]), kind))
            if s is None:
                self.log("relay_not_listening", "error", relay=c["name"],
                         why=f"the daemon passed no socket for {c['address']} port {c['port']}")
                return
            socks.append(s)
        with rt.scope:
            async with trio.open_nursery() as nursery:
                rt.nursery = nursery
                rt.listening = True
                for s in socks:
                    if s.type == socket.SOCK_STREAM:
                        nursery.start_soon(self._accept_loop, rt, s)
                    else:
                        nursery.start_soon(self._udp, rt, s)
        rt.listening = False

    async def _udp(self, rt: RelayRuntime, sock) -> None:
        import trio

        from .upstream import RelayUpstream
        module = _protocol_module("dns")
        tsock = trio.socket.from_stdlib_socket(sock)
        await module.serve_dns_udp(tsock, rt.spec, RelayUpstream(rt, ""), rt.timeouts, rt.stats)

    async def _accept_loop(self, rt: RelayRuntime, sock) -> None:
        """Accept what the backlog holds, up to ACCEPT_BURST per wake-up.

        One accept per pass of trio's scheduler (trio.SocketListener) made the
        200th of 200 clients arriving together wait some 200 passes: p99 over
        a second in the bench's row 9, 76-144 ms with the burst."""
        import errno

        import trio
        sock.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(ACCEPT_BURST):
                try:
                    conn, _addr = sock.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue        # that client gave up or was refused: the next one
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        rt.log("relay_accept_failed", "error", error=e.strerror)
                        await trio.sleep(0.1)
                        break
                    raise
                conn.setblocking(False)
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                rt.nursery.start_soon(self._session, rt, stream)
            await trio.lowlevel.checkpoint()

    async def _session(self, rt: RelayRuntime, stream) -> None:
        import socket

        import trio

        from .interface import SessionVars
        from .sockopts import set_tcp_options
        from .tcp import CountingStream
        from .upstream import RelayUpstream
        try:
            peer = stream.socket.getpeername()
            set_tcp_options(stream.socket, rt.tcp, stream.socket.family == socket.AF_INET6)
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        sid = next(self.ids)
        counted = CountingStream(stream)
        entry = Session(sid, rt.config["name"], _endpoint(peer[0], peer[1]), trio.current_time(), counted)
        rt.sessions[sid] = entry
        rt.total += 1
        upstream = RelayUpstream(rt, peer[0], entry)
        client = counted
        c = rt.config
        try:
            if rt.server_ssl is not None:
                client = trio.SSLStream(counted, rt.server_ssl, server_side=True, https_compatible=True)
                with trio.fail_after(HANDSHAKE_S):
                    await client.do_handshake()
            session = SessionVars(peer[0], peer[1], c["address"], c["port"], c["idle_s"])
            await rt.handler(client, rt.spec, upstream, session, rt.timeouts, rt.stats)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            rt.errors += 1
        except Exception as e:  # noqa: BLE001 (a handler's bug ends its session, never the engine)
            rt.errors += 1
            rt.log("relay_session_error", "error", error=f"{type(e).__name__}: {e}"[:300])
        finally:
            upstream.release()
            rt.sessions.pop(sid, None)
            await trio.aclose_forcefully(client)

    # ------------------------------------------------------------------ queries

    def _answer(self, qid: int, what: str) -> None:
        import trio

        from .proto import MAX_SESSIONS
        now = trio.current_time()
        relays, sessions, truncated = [], [], 0
        if what == "relays":
            relays = [self._relay_row(rt) for rt in self.relays.values()]
        elif what == "sessions":
            for rt in self.relays.values():
                for s in rt.sessions.values():
                    if len(sessions) >= MAX_SESSIONS:
                        truncated += 1
                        continue
                    b = s.backend
                    sessions.append({"id": s.id, "relay": s.relay, "client": s.client,
                                     "backend": None if b is None else _endpoint(b.address, b.port),
                                     "age_s": round(now - s.started, 3),
                                     "bytes_in": s.stream.received, "bytes_out": s.stream.sent})
        self.channel.send_nowait("answer", id=qid, relays=relays, sessions=sessions, truncated=truncated)

    def _relay_row(self, rt: RelayRuntime) -> dict:
        c = rt.config
        b = rt.balancer
        live = set(b.candidates()[0])        # where new sessions go now
        backends = [{"host": k.host, "address": k.address, "port": k.port, "live": k in live,
                     "open": v.open, "total": v.total, "failed": v.failed}
                    for k, v in b.counts.items()][:1024]
        counters = counter_rows(rt.stats.as_dict())
        return {"name": c["name"], "address": c["address"], "port": c["port"], "protocol": c["protocol"],
                "status": b.status(), "listening": rt.listening, "sessions": len(rt.sessions),
                "total": rt.total, "refused": b.refused, "errors": rt.errors + rt.connect_errors,
                "tls": rt.server_ssl is not None, "backends": backends, "counters": counters}


def counter_rows(stats: dict) -> list[dict]:
    """A protocol's counters as `show relays` rows; a counter by reason (a dict,
    as DNS `servfail` and `dropped_queries`) becomes one row per reason,
    `servfail.timeout`, as docs/relays.md names them."""
    rows = []
    for name, value in stats.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for reason, count in items:
            if isinstance(count, int) and not isinstance(count, bool):
                full = str(name) if reason is None else f"{name}.{reason}"
                rows.append({"name": full[:64], "value": count})
    return rows[:256]


def _local(sock) -> tuple[str, int]:
    import ipaddress
    address = sock.getsockname()
    return ipaddress.ip_address(address[0]).compressed, address[1]


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


if __name__ == "__main__":
    sys.exit(main())
