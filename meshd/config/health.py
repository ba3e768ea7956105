"""The `[health]` section: backend hosts, tables with their check, redirects.

Absent section: no health checks and no load balancing.  Every key is
documented in docs/health.md.  The shapes follow relayd.conf:

* `[[health.host]]`: a backend host with a name (relayd's macros become host
  names: `hosts = ["web1", "web2"]` in a table).  A table may also list a
  bare address, which is an anonymous host of weight 1 named by its address.
* `[[health.table]]`: hosts, the port they serve, one check and its timing.
* `[[health.redirect]]`: a virtual address and port forwarded to a table,
  with a backup table used while no host of the main one is up.

Cross references are checked here, so the core never meets an unknown name.
The `check` sub-table of a table is parsed in meshd/config/health_check.py,
`[[health.relay]]` (layer-7 relays on the same tables) in meshd/config/relay.py.

`check_user` is looked up in the user database (pwd) here, so that a user
that does not exist is a configuration error like any other; it is the one
read of this section beyond the file.

Must not: probe a host or touch nftables (meshd/health/ does, from the
`HealthConfig` this module returns), or import the health core: only the
value types of `meshd.health.checkspec`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ..health.checkspec import CheckSpec, CheckTarget
from .health_check import parse_check
from .reader import NAME_RE, Reader, describe, is_ip, read_address
from .relay import HealthRelay, parse_relays
from .users import engine_user

NFT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
PROTOCOLS = ("tcp", "udp")
MODES = ("round-robin", "random", "source-hash", "weighted")
HEALTH_KEYS = {"max_in_flight", "rst_burst", "rst_window_ms", "nflog_group",
               "keep_table_on_stop", "nft_table", "check_user", "relay_user", "host", "table",
               "redirect", "relay"}
HOST_KEYS = {"name", "address", "weight", "disabled"}
TABLE_KEYS = {"name", "hosts", "port", "check", "interval_ms", "fast_interval_ms",
              "down_interval_ms", "rise", "fall", "jitter_percent", "disabled"}
REDIRECT_KEYS = {"name", "address", "port", "protocol", "table", "backup_table", "mode",
                 "sticky_timeout_s", "slots", "demote", "delete_dead_states", "disabled"}

DEFAULT_INTERVAL_MS = 2000        # HAProxy's inter


@dataclass(frozen=True)
class HealthHost:
    name: str
    address: str                      # canonical IPv4 / IPv6 text
    weight: int = 1
    disabled: bool = False

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True)
class HealthTable:
    name: str
    hosts: tuple[str, ...]            # host names, in order (the order of the slot map)
    port: int                         # where the hosts serve; redirects forward to it
    check: CheckSpec
    interval_ms: int = DEFAULT_INTERVAL_MS
    fast_interval_ms: int = DEFAULT_INTERVAL_MS // 2
    down_interval_ms: int = DEFAULT_INTERVAL_MS
    rise: int = 2
    fall: int = 3
    jitter_percent: int = 10
    disabled: bool = False

    def target(self, host: HealthHost) -> CheckTarget:
        """What the check of `host` in this table probes (icmp has no port)."""
        port = 0 if self.check.method == "icmp" else self.port
        return CheckTarget(host.address, port, self.check)


@dataclass(frozen=True)
class HealthRedirect:
    name: str
    address: str                      # the virtual address clients connect to
    port: int
    table: str
    protocol: str = "tcp"
    backup_table: str | None = None
    mode: str = "round-robin"
    sticky_timeout_s: int | None = None
    slots: int = 60               # divisible by 1-6, 10, 12: equal shares for small tables
    demote: str | None = None         # demotion counter raised while nothing is up
    delete_dead_states: bool = False
    disabled: bool = False


@dataclass(frozen=True)
class HealthConfig:
    hosts: tuple[HealthHost, ...]
    tables: tuple[HealthTable, ...]
    redirects: tuple[HealthRedirect, ...]
    max_in_flight: int = 32
    rst_burst: int = 5                # 0: the reset watcher is off
    rst_window_ms: int = 1000
    nflog_group: int = 7112
    keep_table_on_stop: bool = False
    nft_table: str = "meshd"
    check_user: str = "nobody"        # as written: a name or a numeric uid
    check_uid: int = 65534            # the check engine's uid and gid (from the user database)
    check_gid: int = 65534
    relays: tuple[HealthRelay, ...] = ()
    relay_user: str = "nobody"        # the relay engine's user; default: check_user's
    relay_uid: int = 65534
    relay_gid: int = 65534

    def host(self, name: str) -> HealthHost | None:
        return next((h for h in self.hosts if h.name == name), None)

    def table(self, name: str) -> HealthTable | None:
        return next((t for t in self.tables if t.name == name), None)

    def redirect(self, name: str) -> HealthRedirect | None:
        return next((r for r in self.redirects if r.name == name), None)

    def relay(self, name: str) -> HealthRelay | None:
        return next((r for r in self.relays if r.name == name), None)


# --------------------------------------------------------------------------


def parse_health(r: Reader, data: Any, followed_counters: set[str] | None) -> HealthConfig | None:
    """Parse `[health]`; `followed_counters` are the demotion counters some
    group follows (None when the groups themselves did not parse)."""
    t = r.table(data, "health", HEALTH_KEYS)
    kw: dict[str, Any] = {}
    kw["max_in_flight"] = r.get(t, "health", "max_in_flight", "int", default=32, lo=1, hi=10000)
    kw["rst_burst"] = r.get(t, "health", "rst_burst", "int", default=5, lo=0, hi=100000)
    kw["rst_window_ms"] = r.get(t, "health", "rst_window_ms", "int", default=1000, lo=10, hi=3_600_000)
    kw["nflog_group"] = r.get(t, "health", "nflog_group", "int", default=7112, lo=0, hi=65535)
    kw["keep_table_on_stop"] = r.get(t, "health", "keep_table_on_stop", "bool", default=False)
    kw["nft_table"] = r.get(t, "health", "nft_table", "str", default="meshd")
    if kw["nft_table"] is not None and not NFT_NAME_RE.match(kw["nft_table"]):
        r.problem("health.nft_table", "expected an nftables name (a letter, then letters, digits "
                  f"or '_', at most 32), found {describe(kw['nft_table'])}")
        kw["nft_table"] = None
    kw.update(_check_user(r, t))
    # Names of items refused for their own errors: references to them are not
    # reported again as unknown, so one mistake gives one message.
    broken: set[tuple[str, str]] = set()
    hosts = _parse_hosts(r, _array(r, t, "host"), broken)
    tables = _parse_tables(r, _array(r, t, "table"), hosts, broken)
    redirects = _parse_redirects(r, _array(r, t, "redirect"), hosts, tables, broken,
                                 followed_counters)
    kw["relays"] = tuple(parse_relays(
        r, _array(r, t, "relay"), set(tables), {n for kind, n in broken if kind == "table"},
        {(x.address, x.port): f"redirect {x.name}" for x in redirects if x.protocol == "tcp"}))
    kw.update(_relay_user(r, t, kw))
    if any(v is None for v in kw.values()):
        return None
    return HealthConfig(tuple(hosts.values()), tuple(tables.values()), tuple(redirects), **kw)


def _check_user(r: Reader, t: dict) -> dict[str, Any]:
    """`check_user`: see meshd/config/users.py."""
    user = engine_user(r, t, "health.check_user", "check engine")
    if user is None:
        return {"check_user": None, "check_uid": None, "check_gid": None}
    return {"check_user": user[0], "check_uid": user[1], "check_gid": user[2]}


def _relay_user(r: Reader, t: dict, kw: dict[str, Any]) -> dict[str, Any]:
    """`relay_user`: the relay engine's user; absent, the check engine's."""
    if "relay_user" not in t:
        return {"relay_user": kw["check_user"], "relay_uid": kw["check_uid"],
                "relay_gid": kw["check_gid"]}
    user = engine_user(r, t, "health.relay_user", "relay engine")
    if user is None:
        return {"relay_user": None, "relay_uid": None, "relay_gid": None}
    return {"relay_user": user[0], "relay_uid": user[1], "relay_gid": user[2]}


def _array(r: Reader, t: dict, key: str) -> list:
    data = t.get(key, [])
    if not isinstance(data, list):
        r.problem(f"health.{key}", f"expected a list of [[health.{key}]] tables, found {describe(data)}")
        return []
    return data


def _name(r: Reader, t: dict, path: str, kind: str, seen: dict[str, str]) -> str | None:
    name = r.get(t, path, "name", "str")
    if name is None:
        return None
    if not NAME_RE.match(name):
        r.problem(f"{path}.name", "expected a name of letters, digits, '_.-' (at most 32), "
                  f"found {describe(name)}")
        return None
    if name in seen:
        r.problem(f"{path}.name", f"duplicate {kind} name \"{name}\" (also {seen[name]})")
        return None
    seen[name] = path
    return name



def _parse_hosts(r: Reader, items: list, broken: set[tuple[str, str]]) -> dict[str, HealthHost]:
    hosts: dict[str, HealthHost] = {}
    names: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for i, item in enumerate(items):
        path = f"health.host[{i}]"
        t = r.table(item, path, HOST_KEYS)
        name = _name(r, t, path, "host", names)
        if name is not None and is_ip(name):
            # A name that reads as an address would shadow the bare-address form in tables.
            r.problem(f"{path}.name", f"\"{name}\" is an address; give the host a name such as \"web1\"")
            name = None
        address = read_address(r, t, path)
        weight = r.get(t, path, "weight", "int", default=1, lo=1, hi=1000)
        disabled = r.get(t, path, "disabled", "bool", default=False)
        if address is not None:
            if address in addresses:
                r.problem(f"{path}.address", f"duplicate host address {address} (also {addresses[address]})")
                address = None
            else:
                addresses[address] = path
        if None not in (name, address, weight, disabled):
            hosts[name] = HealthHost(name, address, weight, disabled)
        elif isinstance(t.get("name"), str):
            broken.add(("host", t["name"]))
    return hosts


def _resolve_host(r: Reader, where: str, ref: str, hosts: dict[str, HealthHost],
                  broken: set[tuple[str, str]]) -> HealthHost | None:
    """A table entry: a declared host name, or an address (declared or anonymous)."""
    if ref in hosts:
        return hosts[ref]
    if ("host", ref) in broken:
        return None
    try:
        address = ipaddress.ip_address(ref).compressed
    except ValueError:
        known = ", ".join(hosts) or "none declared"
        r.problem(where, f"unknown host \"{ref}\" (hosts: {known}; or give an IP address)")
        return None
    declared = next((h for h in hosts.values() if h.address == address), None)
    if declared is not None:
        return declared
    anonymous = HealthHost(address, address)
    hosts[address] = anonymous
    return anonymous


def _parse_tables(r: Reader, items: list, hosts: dict[str, HealthHost],
                  broken: set[tuple[str, str]]) -> dict[str, HealthTable]:
    tables: dict[str, HealthTable] = {}
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        path = f"health.table[{i}]"
        t = r.table(item, path, TABLE_KEYS)
        name = _name(r, t, path, "table", names)
        refs = r.get(t, path, "hosts", "strlist")
        members: list[str] = []
        if refs is not None and not refs:
            r.problem(f"{path}.hosts", "expected at least one host")
        for j, ref in enumerate(refs or ()):
            host = _resolve_host(r, f"{path}.hosts[{j}]", ref, hosts, broken)
            if host is None:
                continue
            if host.name in members:
                r.problem(f"{path}.hosts[{j}]", f"host \"{host.name}\" is listed twice")
                continue
            members.append(host.name)
        port = r.get(t, path, "port", "int", lo=1, hi=65535)
        check = parse_check(r, t.get("check"), f"{path}.check")
        kw: dict[str, Any] = {}
        interval = r.get(t, path, "interval_ms", "int", default=DEFAULT_INTERVAL_MS, lo=100, hi=3_600_000)
        kw["interval_ms"] = interval
        kw["fast_interval_ms"] = r.get(t, path, "fast_interval_ms", "int",
                                       default=max(100, (interval or DEFAULT_INTERVAL_MS) // 2),
                                       lo=100, hi=3_600_000)
        kw["down_interval_ms"] = r.get(t, path, "down_interval_ms", "int",
                                       default=interval or DEFAULT_INTERVAL_MS, lo=100, hi=3_600_000)
        kw["rise"] = r.get(t, path, "rise", "int", default=2, lo=1, hi=100)
        kw["fall"] = r.get(t, path, "fall", "int", default=3, lo=1, hi=100)
        kw["jitter_percent"] = r.get(t, path, "jitter_percent", "int", default=10, lo=0, hi=50)
        kw["disabled"] = r.get(t, path, "disabled", "bool", default=False)
        if None in (name, refs, port, check) or not members or any(v is None for v in kw.values()):
            if isinstance(t.get("name"), str):
                broken.add(("table", t["name"]))
            continue
        tables[name] = HealthTable(name, tuple(members), port, check, **kw)
    return tables


def _parse_redirects(r: Reader, items: list, hosts: dict[str, HealthHost],
                     tables: dict[str, HealthTable], broken: set[tuple[str, str]],
                     followed_counters: set[str] | None) -> list[HealthRedirect]:
    redirects: list[HealthRedirect] = []
    names: dict[str, str] = {}
    listeners: dict[tuple[str, int, str], str] = {}
    for i, item in enumerate(items):
        path = f"health.redirect[{i}]"
        t = r.table(item, path, REDIRECT_KEYS)
        name = _name(r, t, path, "redirect", names)
        if name is not None and "." in name:
            # The name becomes part of nftables set and map names, which refuse dots.
            r.problem(f"{path}.name", f"\"{name}\": a redirect name may not contain '.' "
                      "(it names nftables sets)")
            name = None
        address = read_address(r, t, path)
        port = r.get(t, path, "port", "int", lo=1, hi=65535)
        kw: dict[str, Any] = {}
        kw["protocol"] = r.choice(t, path, "protocol", PROTOCOLS, "tcp")
        kw["mode"] = r.choice(t, path, "mode", MODES, "round-robin")
        kw["sticky_timeout_s"] = r.get(t, path, "sticky_timeout_s", "int", default=None, lo=1, hi=86400)
        kw["slots"] = r.get(t, path, "slots", "int", default=60, lo=1, hi=4096)
        kw["demote"] = r.get(t, path, "demote", "str", default=None)
        kw["delete_dead_states"] = r.get(t, path, "delete_dead_states", "bool", default=False)
        kw["disabled"] = r.get(t, path, "disabled", "bool", default=False)
        table = _table_ref(r, t, path, "table", tables, broken, required=True)
        backup = _table_ref(r, t, path, "backup_table", tables, broken, required=False)
        kw["backup_table"] = backup
        if table is not None and table == backup:
            r.problem(f"{path}.backup_table", f"\"{backup}\" is already the main table")
        if kw["mode"] == "source-hash" and kw["sticky_timeout_s"] is not None:
            r.problem(f"{path}.sticky_timeout_s", "not with mode source-hash: "
                      "the hash already keeps a source on one host")
        if kw["sticky_timeout_s"] is not None and address is not None \
                and ipaddress.ip_address(address).version == 6:
            # nftables 1.0.6 aborts on the IPv6 dynamic map update sticky needs (meshd/kernel/nft/model.py).
            r.problem(f"{path}.sticky_timeout_s", "IPv4 redirects only: nftables cannot keep "
                      "sticky IPv6 sources here")
        if kw["demote"] is not None and followed_counters is not None \
                and kw["demote"] not in followed_counters:
            r.problem(f"{path}.demote", f"no group follows counter \"{kw['demote']}\" "
                      f"(followed: {', '.join(sorted(followed_counters))})")
        for key, ref in (("table", table), ("backup_table", backup)):
            if ref is None or kw["slots"] is None:
                continue
            count = len(tables[ref].hosts)
            if count > kw["slots"]:
                r.problem(f"{path}.slots", f"{kw['slots']} slots cannot hold the {count} hosts "
                          f"of table \"{ref}\"")
            if address is not None:
                _check_families(r, f"{path}.{key}", address, tables[ref], hosts)
        if None not in (name, address, port, kw["protocol"]):
            listener = (address, port, kw["protocol"])
            if listener in listeners:
                r.problem(f"{path}.port", f"{kw['protocol']} {_endpoint(address, port)} is already "
                          f"redirected by {listeners[listener]}")
            else:
                listeners[listener] = path
        optional = {"sticky_timeout_s", "demote", "backup_table"}
        if None in (name, address, port, table) or any(v is None for k, v in kw.items()
                                                       if k not in optional):
            continue
        redirects.append(HealthRedirect(name, address, port, table, **kw))
    return redirects


def _table_ref(r: Reader, t: dict, path: str, key: str, tables: dict[str, HealthTable],
               broken: set[tuple[str, str]], required: bool) -> str | None:
    ref = r.get(t, path, key, "str", default=... if required else None)
    if ref is not None and ("table", ref) in broken:
        return None
    if ref is not None and ref not in tables:
        known = ", ".join(tables) or "none"
        r.problem(f"{path}.{key}", f"unknown table \"{ref}\" (tables: {known})")
        return None
    return ref


def _check_families(r: Reader, where: str, address: str, table: HealthTable,
                    hosts: dict[str, HealthHost]) -> None:
    """DNAT cannot change the address family: every host must match the redirect."""
    version = ipaddress.ip_address(address).version
    for name in table.hosts:
        host = hosts[name]
        if host.version != version:
            r.problem(where, f"host \"{name}\" ({host.address}) of table \"{table.name}\" is "
                      f"IPv{host.version}, the redirect address {address} is IPv{version}")


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
