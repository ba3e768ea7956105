"""meshd configuration: TOML parsed with tomllib into frozen dataclasses.

Every error names the file and the key path (`meshd.toml: group[0].advbase_ms:
expected an integer from 10 to 60000, found "fast"`).  All errors of a file are
collected before refusing it, so an administrator fixes them in one pass.
Nothing here touches the system except reading the secret files, which `--check`
must verify too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .health import HealthConfig, parse_health
from .reader import Reader, describe, is_ip
from .sync import SyncConfig, parse_sync

DEFAULT_PORT = 7112
DEFAULT_MCAST_V4 = "224.0.0.18"
DEFAULT_MCAST_V6 = "ff02::12"
MIN_SECRET_BYTES = 32
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
# Implicit demotion counter that every group follows.
ALL_GROUPS = "all"


class ConfigError(Exception):
    """One or more problems in a configuration file; str() lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class KeyConfig:
    id: int
    secret_file: str


@dataclass(frozen=True)
class NodeConfig:
    id: int
    name: str
    state_dir: str
    control_socket: str
    run_dir: str = "/run/meshd"
    address_lifetime_s: int = 1


@dataclass(frozen=True)
class ClusterConfig:
    port: int
    multicast_v4: str
    multicast_v6: str
    keys: tuple[KeyConfig, ...]
    send_key: int


@dataclass(frozen=True)
class GroupConfig:
    id: int
    name: str
    interface: str
    addresses: tuple[str, ...]          # "192.0.2.1/24", "2001:db8::1/64"
    advbase_ms: int = 1000
    advskew: int = 0
    preempt: bool = True
    sync_set: str | None = None
    demotion_groups: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()          # unicast peers; empty means multicast
    check_ttl: bool = True
    advert_copies: int = 3
    garp_count: int = 3
    garp_interval_ms: int = 100
    notify: tuple[str, ...] = ()         # executables, run in order
    notify_timeout_ms: int = 5000

    @property
    def family(self) -> int:
        """Address family the adverts use: that of the first address."""
        return ipaddress.ip_interface(self.addresses[0]).version

    def counters(self) -> tuple[str, ...]:
        """Names of the demotion counters whose sum this group advertises."""
        names = [ALL_GROUPS, self.name, *self.demotion_groups]
        if self.sync_set:
            names.append(self.sync_set)
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class TrackInterfaceConfig:
    interface: str
    weight: int = 50
    demotion_group: str = ALL_GROUPS


@dataclass(frozen=True)
class TrackScriptConfig:
    name: str
    command: tuple[str, ...]
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 2
    weight: int = 50
    demotion_group: str = ALL_GROUPS


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeConfig
    cluster: ClusterConfig
    groups: tuple[GroupConfig, ...]
    track_interfaces: tuple[TrackInterfaceConfig, ...] = ()
    track_scripts: tuple[TrackScriptConfig, ...] = ()
    sync: SyncConfig | None = None
    health: HealthConfig | None = None
    secrets: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    def group(self, name: str) -> GroupConfig | None:
        return next((g for g in self.groups if g.name == name), None)

    def demotion_names(self) -> set[str]:
        names = {ALL_GROUPS}
        for g in self.groups:
            names.update(g.counters())
        names.update(t.demotion_group for t in self.track_interfaces)
        names.update(t.demotion_group for t in self.track_scripts)
        return names


# --------------------------------------------------------------------------


NODE_KEYS = {"id", "name", "state_dir", "control_socket", "run_dir", "address_lifetime_s"}
# sun_path is 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107
DEFAULT_RUN_DIR = "/run/meshd"
CONTROL_SOCKET_NAME = "meshd.sock"       # in run_dir, unless control_socket says otherwise
CLUSTER_KEYS = {"port", "multicast_v4", "multicast_v6", "keys", "send_key"}
KEY_KEYS = {"id", "secret_file"}
GROUP_KEYS = {
    "id", "name", "interface", "addresses", "advbase_ms", "advskew", "preempt",
    "sync_set", "demotion_groups", "peers", "check_ttl", "advert_copies", "garp_count",
    "garp_interval_ms", "notify", "notify_timeout_ms",
}
TRACK_IF_KEYS = {"interface", "weight", "demotion_group"}
TRACK_SCRIPT_KEYS = {"name", "command", "interval_ms", "timeout_ms", "rise", "fall",
                     "weight", "demotion_group"}
TOP_KEYS = {"node", "cluster", "group", "track_interface", "track_script", "sync", "health"}


def load_config(path: str | os.PathLike, read_secrets: bool = True) -> Config:
    """Parse and validate a configuration file; raise ConfigError listing every problem."""
    filename = str(path)
    return parse_config(read_toml(filename), filename, base_dir=str(Path(filename).resolve().parent),
                        read_secrets=read_secrets)


def read_toml(filename: str) -> dict:
    """The file's TOML document, unvalidated; ConfigError if it cannot be read or parsed."""
    try:
        raw = Path(filename).read_bytes()
    except OSError as e:
        raise ConfigError([f"{filename}: cannot read: {e.strerror}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError([f"{filename}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{filename}: TOML syntax: {e}"]) from None


def parse_config(data: dict, filename: str = "<config>", base_dir: str = ".",
                 read_secrets: bool = True) -> Config:
    r = Reader(filename)
    top = r.table(data, "", TOP_KEYS)
    node = _parse_node(r, top.get("node", {}))
    cluster = _parse_cluster(r, top.get("cluster", {}), base_dir)
    groups = _parse_groups(r, top.get("group", []), cluster)
    track_ifs = _parse_track_interfaces(r, top.get("track_interface", []))
    track_scripts = _parse_track_scripts(r, top.get("track_script", []))
    _check_names(r, groups, track_scripts)
    if groups:
        _check_track_counters(r, groups, track_ifs, track_scripts)
    sync = None
    if "sync" in top:
        sync = parse_sync(r, top["sync"], node.id if node else None)
    health = None
    if "health" in top:
        followed = {name for g in groups for name in g.counters()} if groups else None
        health = parse_health(r, top["health"], followed)
    secrets: dict[int, bytes] = {}
    if cluster is not None and read_secrets:
        secrets = _read_secrets(r, cluster)
    if r.problems or node is None or cluster is None:
        raise ConfigError(r.problems or [f"{filename}: invalid configuration"])
    return Config(filename, node, cluster, groups, track_ifs, track_scripts, sync, health, secrets)


def _parse_node(r: Reader, data: Any) -> NodeConfig | None:
    t = r.table(data, "node", NODE_KEYS)
    node_id = r.get(t, "node", "id", "int", lo=1, hi=2**32 - 1)
    name = r.get(t, "node", "name", "str", default=_default_node_name())
    if name is not None and not NAME_RE.match(name):
        r.problem("node.name", f"expected a name of letters, digits, '_.-' (at most 32), found {describe(name)}")
    state_dir = r.get(t, "node", "state_dir", "str", default="/var/lib/meshd")
    _require_absolute(r, "node.state_dir", state_dir)
    run_dir, sock = parse_control_socket(r, t)
    # The kernel drops the addresses of a node whose renewals stop (a crash)
    # this long after the last one; 0 keeps them forever (see docs/architecture.md).
    lifetime = r.get(t, "node", "address_lifetime_s", "int", default=1, lo=0, hi=3600)
    if node_id is None or None in (state_dir, run_dir, sock, lifetime):
        return None
    return NodeConfig(node_id, name, state_dir, sock, run_dir, lifetime)


def parse_control_socket(r: Reader, node: dict) -> tuple[str | None, str | None]:
    """[node].run_dir and [node].control_socket, defaults applied and checked.

    Shared with `meshctl --config`, which reads only these two keys so that it
    finds the socket of a file whose other parts do not validate.
    """
    run_dir = r.get(node, "node", "run_dir", "str", default=DEFAULT_RUN_DIR)
    sock = r.get(node, "node", "control_socket", "str",
                 default=os.path.join(run_dir, CONTROL_SOCKET_NAME) if run_dir else None)
    _require_absolute(r, "node.run_dir", run_dir)
    _require_absolute(r, "node.control_socket", sock)
    if sock is not None and len(os.fsencode(sock)) > MAX_SOCKET_PATH:
        r.problem("node.control_socket", f"{describe(sock)} is {len(os.fsencode(sock))} bytes long; "
                  f"a Unix socket path holds at most {MAX_SOCKET_PATH}")
    return run_dir, sock


def _require_absolute(r: Reader, where: str, path: str | None) -> None:
    # Relative paths would depend on the directory meshd happens to start in.
    if path is not None and not os.path.isabs(path):
        r.problem(where, f"expected an absolute path, found {describe(path)}")


def _default_node_name() -> str:
    """The short hostname, trimmed to what NAME_RE accepts."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename.split(".")[0]).lstrip("_.-")
    return host[:32] or "meshd"


def _parse_cluster(r: Reader, data: Any, base_dir: str) -> ClusterConfig | None:
    t = r.table(data, "cluster", CLUSTER_KEYS)
    port = r.get(t, "cluster", "port", "int", default=DEFAULT_PORT, lo=1, hi=65535)
    mc4 = r.get(t, "cluster", "multicast_v4", "str", default=DEFAULT_MCAST_V4)
    mc6 = r.get(t, "cluster", "multicast_v6", "str", default=DEFAULT_MCAST_V6)
    for key, value, version in (("multicast_v4", mc4, 4), ("multicast_v6", mc6, 6)):
        if value is None:
            continue
        try:
            addr = ipaddress.ip_address(value)
            if addr.version != version or not addr.is_multicast:
                raise ValueError
        except ValueError:
            r.problem(f"cluster.{key}", f"expected an IPv{version} multicast address, found {describe(value)}")
    keys: list[KeyConfig] = []
    raw_keys = r.get(t, "cluster", "keys", "list")
    if raw_keys is not None:
        if not 1 <= len(raw_keys) <= 2:
            r.problem("cluster.keys", f"expected one or two keys (two while rotating), found {len(raw_keys)}")
        for i, item in enumerate(raw_keys):
            path = f"cluster.keys[{i}]"
            kt = r.table(item, path, KEY_KEYS)
            kid = r.get(kt, path, "id", "int", lo=0, hi=255)
            sf = r.get(kt, path, "secret_file", "str")
            if kid is None or sf is None:
                continue
            if any(k.id == kid for k in keys):
                r.problem(f"{path}.id", f"duplicate key id {kid}")
                continue
            keys.append(KeyConfig(kid, os.path.join(base_dir, sf)))
    send_key = r.get(t, "cluster", "send_key", "int", default=None, lo=0, hi=255)
    if send_key is None and len(keys) == 2:
        # Guessing here would let one node sign with a key its peers lack.
        r.problem("cluster.send_key", "required when two keys are listed (rotation): "
                  "name the key id this node signs with")
    elif send_key is None and keys:
        send_key = keys[0].id
    if send_key is not None and keys and all(k.id != send_key for k in keys):
        r.problem("cluster.send_key", f"key id {send_key} is not in cluster.keys")
    if port is None or not keys or send_key is None:
        return None
    return ClusterConfig(port, mc4 or DEFAULT_MCAST_V4, mc6 or DEFAULT_MCAST_V6, tuple(keys), send_key)


def _parse_groups(r: Reader, data: Any, cluster: ClusterConfig | None) -> tuple[GroupConfig, ...]:
    if not isinstance(data, list) or not data:
        r.problem("group", "expected at least one [[group]] table")
        return ()
    groups: list[GroupConfig] = []
    seen_ids: dict[int, str] = {}
    seen_names: dict[str, str] = {}
    seen_addrs: dict[str, str] = {}
    for i, item in enumerate(data):
        path = f"group[{i}]"
        t = r.table(item, path, GROUP_KEYS)
        gid = r.get(t, path, "id", "int", lo=1, hi=65535)
        name = r.get(t, path, "name", "str", default=None if gid is None else f"g{gid}")
        iface = r.get(t, path, "interface", "str")
        addrs = r.get(t, path, "addresses", "strlist")
        kw: dict[str, Any] = {}
        kw["advbase_ms"] = r.get(t, path, "advbase_ms", "int", default=1000, lo=10, hi=60000)
        kw["advskew"] = r.get(t, path, "advskew", "int", default=0, lo=0, hi=254)
        kw["preempt"] = r.get(t, path, "preempt", "bool", default=True)
        kw["sync_set"] = r.get(t, path, "sync_set", "str", default=None)
        kw["demotion_groups"] = r.get(t, path, "demotion_groups", "strlist", default=())
        kw["peers"] = r.get(t, path, "peers", "strlist", default=())
        kw["check_ttl"] = r.get(t, path, "check_ttl", "bool", default=True)
        kw["advert_copies"] = r.get(t, path, "advert_copies", "int", default=3, lo=1, hi=5)
        kw["garp_count"] = r.get(t, path, "garp_count", "int", default=3, lo=0, hi=100)
        kw["garp_interval_ms"] = r.get(t, path, "garp_interval_ms", "int", default=100, lo=1, hi=10000)
        kw["notify"] = r.get(t, path, "notify", "strlist", default=())
        kw["notify_timeout_ms"] = r.get(t, path, "notify_timeout_ms", "int", default=5000, lo=10, hi=600000)
        if gid is not None:
            if gid in seen_ids:
                r.problem(f"{path}.id", f"duplicate group id {gid} (also {seen_ids[gid]})")
            seen_ids[gid] = path
        if name is not None:
            if not NAME_RE.match(name):
                r.problem(f"{path}.name", f"expected a name of letters, digits, '_.-' (at most 32), found {describe(name)}")
            elif name in seen_names:
                r.problem(f"{path}.name", f"duplicate group name \"{name}\" (also {seen_names[name]})")
            seen_names[name] = path
        parsed_addrs: list[str] = []
        if addrs is not None:
            if not addrs:
                r.problem(f"{path}.addresses", "expected at least one virtual address")
            for j, a in enumerate(addrs):
                try:
                    ifa = ipaddress.ip_interface(a)
                except ValueError:
                    r.problem(f"{path}.addresses[{j}]", f"expected an address with prefix length like 192.0.2.1/24, found {describe(a)}")
                    continue
                if "/" not in a:
                    ifa = ipaddress.ip_interface(f"{a}/{ifa.max_prefixlen}")
                key = str(ifa.ip)
                if key in seen_addrs:
                    r.problem(f"{path}.addresses[{j}]", f"duplicate address {key} (also {seen_addrs[key]})")
                seen_addrs[key] = f"{path}.addresses[{j}]"
                parsed_addrs.append(str(ifa))
        for j, p in enumerate(kw["peers"] or ()):
            try:
                ipaddress.ip_address(p)
            except ValueError:
                r.problem(f"{path}.peers[{j}]", f"expected an IP address, found {describe(p)}")
        for key in ("demotion_groups",):
            for j, n in enumerate(kw[key] or ()):
                if not NAME_RE.match(n):
                    r.problem(f"{path}.{key}[{j}]", f"expected a name, found {describe(n)}")
        if kw["sync_set"] is not None and not NAME_RE.match(kw["sync_set"]):
            r.problem(f"{path}.sync_set", f"expected a name, found {describe(kw['sync_set'])}")
        if None in (gid, name, iface, addrs) or not parsed_addrs:
            continue
        families = {ipaddress.ip_interface(a).version for a in parsed_addrs}
        if kw["peers"] and any(ipaddress.ip_address(p).version not in families
                               for p in kw["peers"] if is_ip(p)):
            r.problem(f"{path}.peers", "peers must use an address family of the group's addresses")
        # Canonical text, so that 2001:DB8::2 matches the source the kernel reports.
        kw["peers"] = tuple(str(ipaddress.ip_address(p)) for p in kw["peers"] if is_ip(p))
        groups.append(GroupConfig(gid, name, iface, tuple(parsed_addrs), **kw))
    return tuple(groups)


def _parse_track_interfaces(r: Reader, data: Any) -> tuple[TrackInterfaceConfig, ...]:
    out = []
    if not isinstance(data, list):
        r.problem("track_interface", "expected a list of [[track_interface]] tables")
        return ()
    for i, item in enumerate(data):
        path = f"track_interface[{i}]"
        t = r.table(item, path, TRACK_IF_KEYS)
        iface = r.get(t, path, "interface", "str")
        weight = r.get(t, path, "weight", "int", default=50, lo=0, hi=1_000_000)
        dg = r.get(t, path, "demotion_group", "str", default=ALL_GROUPS)
        if None not in (iface, weight, dg):
            out.append(TrackInterfaceConfig(iface, weight, dg))
    return tuple(out)


def _parse_track_scripts(r: Reader, data: Any) -> tuple[TrackScriptConfig, ...]:
    out = []
    if not isinstance(data, list):
        r.problem("track_script", "expected a list of [[track_script]] tables")
        return ()
    names: set[str] = set()
    for i, item in enumerate(data):
        path = f"track_script[{i}]"
        t = r.table(item, path, TRACK_SCRIPT_KEYS)
        name = r.get(t, path, "name", "str")
        command = r.get(t, path, "command", "strlist")
        if command is not None and not command:
            r.problem(f"{path}.command", "expected a non-empty list: the program and its arguments")
            command = None
        interval = r.get(t, path, "interval_ms", "int", default=2000, lo=10, hi=3_600_000)
        timeout = r.get(t, path, "timeout_ms", "int", default=1000, lo=10, hi=3_600_000)
        rise = r.get(t, path, "rise", "int", default=2, lo=1, hi=100)
        fall = r.get(t, path, "fall", "int", default=2, lo=1, hi=100)
        weight = r.get(t, path, "weight", "int", default=50, lo=0, hi=1_000_000)
        dg = r.get(t, path, "demotion_group", "str", default=ALL_GROUPS)
        if name is not None and name in names:
            r.problem(f"{path}.name", f"duplicate track script name \"{name}\"")
        names.add(name)
        if None not in (name, command, interval, timeout, rise, fall, weight, dg):
            out.append(TrackScriptConfig(name, command, interval, timeout, rise, fall, weight, dg))
    return tuple(out)


def _check_names(r: Reader, groups: tuple[GroupConfig, ...],
                 scripts: tuple[TrackScriptConfig, ...]) -> None:
    group_names = {g.name for g in groups}
    for i, g in enumerate(groups):
        if g.name == ALL_GROUPS:
            r.problem(f"group[{i}].name", f"\"{ALL_GROUPS}\" is reserved for the counter every group follows")
        if g.sync_set in group_names:
            r.problem(f"group[{i}].sync_set", f"\"{g.sync_set}\" is also a group name; use a distinct name")
        if g.sync_set == ALL_GROUPS:
            r.problem(f"group[{i}].sync_set", f"\"{ALL_GROUPS}\" is reserved")


def _check_track_counters(r: Reader, groups: tuple[GroupConfig, ...],
                          track_ifs: tuple[TrackInterfaceConfig, ...],
                          scripts: tuple[TrackScriptConfig, ...]) -> None:
    """A track feeding a counter no group follows would have no effect: refuse the typo."""
    followed = {name for g in groups for name in g.counters()}
    for kind, tracks in (("track_interface", track_ifs), ("track_script", scripts)):
        for i, t in enumerate(tracks):
            if t.demotion_group not in followed:
                r.problem(f"{kind}[{i}].demotion_group",
                          f"no group follows counter \"{t.demotion_group}\" "
                          f"(followed: {', '.join(sorted(followed))})")


def _read_secrets(r: Reader, cluster: ClusterConfig) -> dict[int, bytes]:
    secrets = {}
    for i, key in enumerate(cluster.keys):
        path = f"cluster.keys[{i}].secret_file"
        try:
            st = os.stat(key.secret_file)
            data = Path(key.secret_file).read_bytes()
        except OSError as e:
            r.problem(path, f"cannot read {key.secret_file}: {e.strerror}")
            continue
        if len(data) < MIN_SECRET_BYTES:
            r.problem(path, f"{key.secret_file} holds {len(data)} bytes, expected at least {MIN_SECRET_BYTES} random bytes")
            continue
        if st.st_mode & 0o077:
            r.problem(path, f"{key.secret_file} is readable by group or others (mode {st.st_mode & 0o777:o}); chmod 600 it")
            continue
        secrets[key.id] = data
    return secrets
