"""The `[[group]]` tables: one virtual-address group each, with its election
timing, its peers, its demotion counters and its notify hooks.

Owns `ALL_GROUPS`, the counter every group follows, and the rules between
groups (unique ids, names and addresses; a sync set never named like a
group).  Hook paths are kept as given.

Must not: look at the hook programs (whether they exist and are safe to run is
preflight's business), or hold the election's behaviour: which counters a
group follows is said here (`counters()`), what they do is ElectionCore's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .cluster import ClusterConfig
from .reader import NAME_RE, Reader, describe, is_ip

# Implicit demotion counter that every group follows.
ALL_GROUPS = "all"
GROUP_KEYS = {
    "id", "name", "interface", "addresses", "advbase_ms", "advskew", "preempt",
    "sync_set", "demotion_groups", "peers", "check_ttl", "advert_copies", "garp_count",
    "garp_interval_ms", "notify", "notify_timeout_ms",
}


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


def parse_groups(r: Reader, data: Any, cluster: ClusterConfig | None) -> tuple[GroupConfig, ...]:
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


def check_names(r: Reader, groups: tuple[GroupConfig, ...]) -> None:
    """Names reserved or taken: `all` for a group or sync set, a group's name for a sync set."""
    group_names = {g.name for g in groups}
    for i, g in enumerate(groups):
        if g.name == ALL_GROUPS:
            r.problem(f"group[{i}].name", f"\"{ALL_GROUPS}\" is reserved for the counter every group follows")
        if g.sync_set in group_names:
            r.problem(f"group[{i}].sync_set", f"\"{g.sync_set}\" is also a group name; use a distinct name")
        if g.sync_set == ALL_GROUPS:
            r.problem(f"group[{i}].sync_set", f"\"{ALL_GROUPS}\" is reserved")
