"""`[[health.relay]]`: layer-7 relays (relayd's `relay` blocks) on the health tables.

A relay listens on an address and port (usually a virtual address: the
listener is bound with IP_FREEBIND, so a backup listens before it holds the
address), speaks `tcp`, `http` or `dns`, and forwards each session to a host
of its table that is up (the same health as the redirects), or of its backup
table while none is.  Every key is documented in docs/relays.md.

The relay's `http = {...}` / `dns = {...}` sub-table is parsed by the
protocol's own module (meshd/config/relay_http.py, relay_dns.py); until such
a module exists the sub-table must be absent and the protocol is refused.
The raw sub-table also travels to the relay engine (as msgpack bytes in
`protocol_raw`), which parses it again with the same function: the daemon
never hands a process a structure of its own making to trust.

Must not: open a certificate, a key or a socket (the daemon reads the PEM
files and binds the listeners: meshd/relay/listeners.py), or import the
relay engine: only the parsers of the protocol sub-tables.
"""

from __future__ import annotations

import importlib
import ssl
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .reader import NAME_RE, Reader, describe, read_address

PROTOCOLS = ("tcp", "http", "dns")
MODES = ("roundrobin", "loadbalance", "hash", "source-hash")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
RELAY_KEYS = {"name", "address", "port", "protocol", "table", "backup_table", "mode",
              "connect_timeout_ms", "idle_timeout_ms", "session_timeout_ms", "tcp", "tls",
              "backend_tls", "http", "dns", "disabled"}
TCP_KEYS = {"backlog", "nodelay", "sndbuf", "rcvbuf", "ip_ttl", "ip_minttl"}
TLS_KEYS = {"certificate", "key", "ciphers", "min_version", "session_cache"}
BACKEND_TLS_KEYS = {"verify", "ca", "sni"}
# The protocol sub-table each protocol takes, and the module that parses it.
PROTOCOL_PARSERS = {"http": ("relay_http", "parse_http"), "dns": ("relay_dns", "parse_dns")}

BUFFER_MAX = 64 << 20


@dataclass(frozen=True)
class RelayTcp:
    """Socket options (relayd's `tcp { ... }`): on the listener and on every
    accepted and backend socket; 0 buffers mean the kernel's default."""
    backlog: int = 512
    nodelay: bool = True
    sndbuf: int = 0
    rcvbuf: int = 0
    ip_ttl: int | None = None
    ip_minttl: int | None = None


@dataclass(frozen=True)
class RelayTls:
    """TLS on the listening side; files read by the daemon (root), the PEM
    text handed to the relay engine."""
    certificate: str
    key: str
    ciphers: str | None = None
    min_version: str = "TLSv1.2"
    session_cache: bool = True


@dataclass(frozen=True)
class RelayBackendTls:
    verify: bool = False
    ca: str | None = None           # a PEM file of CAs; default: the system's
    sni: str | None = None


@dataclass(frozen=True)
class HealthRelay:
    name: str
    address: str                    # canonical IPv4 / IPv6 text
    port: int
    table: str
    protocol: str = "tcp"
    backup_table: str | None = None
    mode: str = "roundrobin"
    connect_timeout_ms: int = 5000
    idle_timeout_ms: int = 600_000
    session_timeout_ms: int = 0     # 0: no limit
    tcp: RelayTcp = RelayTcp()
    tls: RelayTls | None = None
    backend_tls: RelayBackendTls | None = None
    protocol_raw: bytes | None = None       # msgpack of the http / dns sub-table as written
    disabled: bool = False
    # The protocol parser's value (HttpSpec, DnsSpec): compared through protocol_raw.
    protocol_spec: Any = field(default=None, compare=False, hash=False, repr=False)

    def listener(self) -> tuple[str, int, str]:
        """What the relay binds: (address, port, "tcp" | "tcp+udp")."""
        return self.address, self.port, "tcp+udp" if self.protocol == "dns" else "tcp"


def protocol_parser(protocol: str):
    """The parser of a protocol's sub-table, or None while its module is absent."""
    if protocol not in PROTOCOL_PARSERS:
        return None
    module, name = PROTOCOL_PARSERS[protocol]
    try:
        mod = importlib.import_module(f"meshd.config.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"meshd.config.{module}":
            raise                   # the module exists and is broken: say so loudly
        return None
    return getattr(mod, name)


def parse_protocol_spec(r: Reader, protocol: str, data: Any, path: str) -> Any:
    """The protocol parser run on the sub-table (None when absent); also what
    the relay engine runs on `protocol_raw`."""
    parser = protocol_parser(protocol)
    if parser is None:
        return None
    return parser(r, data, path)


def parse_relays(r: Reader, items: list, tables: set[str], broken_tables: set[str],
                 redirect_listeners: dict[tuple[str, int], str]) -> list[HealthRelay]:
    """Every `[[health.relay]]`; `tables` are the names of the tables that parsed,
    `broken_tables` of those that did not (not reported again),
    `redirect_listeners` the TCP (address, port) of each redirect."""
    relays: list[HealthRelay] = []
    names: dict[str, str] = {}
    listeners: dict[tuple[str, int], str] = {}
    for i, item in enumerate(items):
        path = f"health.relay[{i}]"
        relay = _parse_relay(r, item, path, names, tables, broken_tables)
        if relay is None:
            continue
        key = (relay.address, relay.port)
        if key in listeners:
            r.problem(f"{path}.port", f"{_endpoint(*key)} is already the listener of {listeners[key]}")
            continue
        if key in redirect_listeners:
            # The redirect's DNAT comes first (prerouting): the relay would never see a client.
            r.problem(f"{path}.port", f"{_endpoint(*key)} is redirected by {redirect_listeners[key]} "
                      "(nftables forwards it before a relay could accept it)")
            continue
        listeners[key] = path
        relays.append(relay)
    return relays


def _parse_relay(r: Reader, item: Any, path: str, names: dict[str, str], tables: set[str],
                 broken_tables: set[str]) -> HealthRelay | None:
    before = len(r.problems)
    t = r.table(item, path, RELAY_KEYS)
    name = r.get(t, path, "name", "str")
    if name is not None and not NAME_RE.match(name):
        r.problem(f"{path}.name", "expected a name of letters, digits, '_.-' (at most 32), "
                  f"found {describe(name)}")
    elif name is not None and name in names:
        r.problem(f"{path}.name", f"duplicate relay name \"{name}\" (also {names[name]})")
    elif name is not None:
        names[name] = path
    address = read_address(r, t, path)
    port = r.get(t, path, "port", "int", lo=1, hi=65535)
    protocol = r.choice(t, path, "protocol", PROTOCOLS, "tcp")
    mode = r.choice(t, path, "mode", MODES, "roundrobin")
    table = _table_ref(r, t, path, "table", tables, broken_tables, required=True)
    backup = _table_ref(r, t, path, "backup_table", tables, broken_tables, required=False)
    if table is not None and table == backup:
        r.problem(f"{path}.backup_table", f"\"{backup}\" is already the main table")
    kw: dict[str, Any] = {}
    kw["connect_timeout_ms"] = r.get(t, path, "connect_timeout_ms", "int", default=5000,
                                     lo=10, hi=600_000)
    kw["idle_timeout_ms"] = r.get(t, path, "idle_timeout_ms", "int", default=600_000,
                                  lo=100, hi=86_400_000)
    kw["session_timeout_ms"] = r.get(t, path, "session_timeout_ms", "int", default=0,
                                     lo=0, hi=86_400_000)
    kw["disabled"] = r.get(t, path, "disabled", "bool", default=False)
    kw["tcp"] = _parse_tcp(r, t.get("tcp", {}), f"{path}.tcp")
    kw["tls"] = _parse_tls(r, t["tls"], f"{path}.tls") if "tls" in t else None
    kw["backend_tls"] = (_parse_backend_tls(r, t["backend_tls"], f"{path}.backend_tls")
                         if "backend_tls" in t else None)
    if protocol == "dns":
        for key in ("tls", "backend_tls"):
            if key in t:
                r.problem(f"{path}.{key}", "not with protocol dns (DNS over UDP has no TLS here)")
    if mode == "hash" and protocol == "tcp":
        r.problem(f"{path}.mode", "mode hash needs a value the protocol feeds (an http `hash` "
                  "action); a tcp relay has none: use source-hash")
    spec, raw = None, None
    if protocol is not None:
        spec, raw = _protocol_table(r, t, path, protocol)
    if protocol == "http" and spec is not None and mode != "hash" \
            and any(a.op == "hash" for a in spec.request):
        # The value would be ignored by the balancing, and every new value
        # would still cost the client's kept backend connection.
        r.problem(f"{path}.mode", f"the http `hash` action feeds mode hash only; this relay's mode "
                  f"is {mode}: set mode = \"hash\" or drop the action")
    if len(r.problems) > before:
        return None
    return HealthRelay(name, address, port, table, protocol=protocol, backup_table=backup, mode=mode,
                       protocol_raw=raw, protocol_spec=spec, **kw)


def _protocol_table(r: Reader, t: dict, path: str, protocol: str) -> tuple[Any, bytes | None]:
    for key in PROTOCOL_PARSERS:
        if key in t and key != protocol:
            r.problem(f"{path}.{key}", f"only with protocol {key} (this relay is {protocol})")
    if protocol not in PROTOCOL_PARSERS:
        return None, None
    data = t.get(protocol)
    parser = protocol_parser(protocol)
    if parser is None:
        r.problem(f"{path}.protocol", f"protocol {protocol} is not built into this meshd "
                  f"(meshd/config/{PROTOCOL_PARSERS[protocol][0]}.py is missing)")
        return None, None
    spec = parser(r, data, f"{path}.{protocol}")
    raw = None if data is None else msgpack.packb(data, use_bin_type=True)
    return spec, raw



def _table_ref(r: Reader, t: dict, path: str, key: str, tables: set[str], broken: set[str],
               required: bool) -> str | None:
    ref = r.get(t, path, key, "str", default=... if required else None)
    if ref is None or ref in broken:
        return None
    if ref not in tables:
        r.problem(f"{path}.{key}", f"unknown table \"{ref}\" (tables: {', '.join(sorted(tables)) or 'none'})")
        return None
    return ref


def _parse_tcp(r: Reader, data: Any, path: str) -> RelayTcp | None:
    t = r.table(data, path, TCP_KEYS)
    kw = {
        "backlog": r.get(t, path, "backlog", "int", default=512, lo=1, hi=65535),
        "nodelay": r.get(t, path, "nodelay", "bool", default=True),
        "sndbuf": _buffer(r, t, path, "sndbuf"),
        "rcvbuf": _buffer(r, t, path, "rcvbuf"),
        "ip_ttl": r.get(t, path, "ip_ttl", "int", default=None, lo=1, hi=255),
        "ip_minttl": r.get(t, path, "ip_minttl", "int", default=None, lo=1, hi=255),
    }
    if any(kw[k] is None for k in ("backlog", "nodelay", "sndbuf", "rcvbuf")):
        return None
    return RelayTcp(**kw)


def _buffer(r: Reader, t: dict, path: str, key: str) -> int | None:
    value = r.get(t, path, key, "int", default=0, lo=0, hi=BUFFER_MAX)
    if value is not None and 0 < value < 1024:
        r.problem(f"{path}.{key}", f"expected 0 (the kernel's default) or at least 1024 bytes, "
                  f"found {value}")
        return None
    return value


def _parse_tls(r: Reader, data: Any, path: str) -> RelayTls | None:
    t = r.table(data, path, TLS_KEYS)
    certificate = _file(r, t, path, "certificate", required=True)
    key = _file(r, t, path, "key", required=True)
    ciphers = r.get(t, path, "ciphers", "str", default=None)
    if ciphers is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
        except ssl.SSLError:
            r.problem(f"{path}.ciphers", f"OpenSSL knows no cipher in {describe(ciphers)} "
                      "(see `openssl ciphers`)")
            return None
    min_version = r.choice(t, path, "min_version", TLS_VERSIONS, "TLSv1.2")
    session_cache = r.get(t, path, "session_cache", "bool", default=True)
    if None in (certificate, key, min_version, session_cache):
        return None
    return RelayTls(certificate, key, ciphers, min_version, session_cache)


def _parse_backend_tls(r: Reader, data: Any, path: str) -> RelayBackendTls | None:
    t = r.table(data, path, BACKEND_TLS_KEYS)
    verify = r.get(t, path, "verify", "bool", default=False)
    ca = _file(r, t, path, "ca", required=False)
    sni = r.get(t, path, "sni", "str", default=None)
    if ca is not None and not verify:
        r.problem(f"{path}.ca", "only with verify = true (nothing is verified otherwise)")
        return None
    if verify is None:
        return None
    return RelayBackendTls(verify, ca, sni)


def _file(r: Reader, t: dict, path: str, key: str, required: bool) -> str | None:
    value = r.get(t, path, key, "str", default=... if required else None)
    if value is not None and not value.startswith("/"):
        r.problem(f"{path}.{key}", f"expected an absolute path, found {describe(value)}")
        return None
    return value


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
