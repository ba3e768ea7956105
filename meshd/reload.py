"""Reload: what a new configuration changes, and whether it can change live.

Sans-I/O: plan_reload(old, new) compares the running Config with a freshly
parsed one and returns every change as a short line naming the key
(`cluster.send_key: 1 -> 2`, `group lan: advskew 0 -> 50`) and every change
that needs a restart as a refusal (`FILE: node.id: changing it needs a
restart (1 -> 3; ...)`).  The daemon applies a plan only if it has no
refusal: a reload is all or nothing, and the running configuration stays in
force otherwise.

What applies live, and why (Daemon.reload carries it out):

* `[cluster]` keys and `send_key`: the election's KeyRing is replaced (an
  advert is checked against the ring of the moment); the state mesh's sealer
  switches keys with its counter running on, and its opener forgets the keys
  that are gone (SyncCore.set_keys).
* groups: ElectionCore.reconfigure keeps the state of groups whose election
  settings are unchanged; a changed id, interface, advbase, address set or
  peer list restarts that group (bowing out first if master).
* tracks: scripts restart, links are read afresh; demotions of removed
  tracks are cleared.
* `[sync]` peers, filter, timers, commit mode and scope, event buffer: see
  NodeCore.reconfigure (node/core.py), SyncShell.reconfigure and the SyncCore reload methods.
* `[health]` except its table and reset watcher: the node core reloads the health core (HealthShell.prepare_reload rebuilds the table first).
* `[[health.relay]]` and `health.relay_user`: the relay engine gets the new
  relays (RelayEngine.reload); a change of a listener or of the user
  restarts the engine, ending its sessions (docs/relays.md, "Reload").
* `node.name`: read where it is shown (status, logs).
* `node.script_user`, `node.script_group` (and a change of that user's
  groups in the group database): every hook, track script or script check
  started from then on runs as the new identity; one already running ends
  as it started.
* `[metrics]` added, removed, or its `listen` changed: the endpoint is
  bound anew before anything else changes (a port that cannot be bound
  fails the whole reload, the old endpoint still serving), then the old
  one is closed.  Nothing but scrapers depends on the socket, and the
  counters live in the cores, so nothing is lost by re-binding.

What needs a restart, and why:

* `node.id`: the identity peers know this node by (adverts, frames, their
  replay marks and external caches of it).
* `node.state_dir`, `node.run_dir`, `node.control_socket`: read or bound at
  start (the epoch and replay marks, the control socket meshctl is talking
  to right now).
* `node.address_lifetime_s`: the addresses held now carry the old lifetime.
* `cluster.port`, `cluster.multicast_v4/v6`: the election's sockets are
  bound and joined at start.
* `sync.port`, `sync.interface`, `sync.multicast_group`, a change of the
  peers' address family: the state mesh's socket is bound, bound to its
  device and joined at start.
* `sync.max_datagram`, `sync.resend_queue`: they size the core's frames,
  caches and resend queues, which hold live state.
* adding or removing `[sync]` or `[health]`: the state mesh opens netlink
  sockets and reads the kernel table at start, and the health checker
  builds its nftables table; the demotions that guard a start (not in sync
  yet) only make sense there.
* `health.nft_table`, `health.nflog_group` and turning the reset watcher
  on: the table and the NFLOG socket are set up at start.
* `health.check_user` naming another uid or gid: the check engine drops to
  its user when it starts; `node.wire_user` likewise for the wire engine.

Must not: apply anything or read a file: Daemon.reload loads the new file and
carries the plan out (NodeCore.reconfigure and the shells' reload methods).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import Config, GroupConfig
from .config.health import HealthConfig
from .config.sync import PROTOCOLS, SyncConfig

RESTART = "changing it needs a restart"
_PROTOCOL_NAMES = {n: name for name, n in PROTOCOLS.items()}

# Group keys whose change restarts the group (ElectionCore._same_election).
GROUP_RESTART_KEYS = ("id", "interface", "advbase_ms", "addresses", "peers")

NODE_RESTART_WHY = {
    "id": "peers know this node by it: adverts, frames, replay marks",
    "state_dir": "the epoch and replay marks were read from it at start",
    "run_dir": "created at start; the control socket and dumps live there",
    "control_socket": "bound at start; meshctl talks to it",
    "address_lifetime_s": "the addresses held now were added with the old lifetime",
}
CLUSTER_RESTART_WHY = "the election's sockets are bound and joined at start"
SYNC_RESTART_WHY = {
    "interface": "the state mesh's socket is bound to its device at start",
    "port": "the state mesh's socket is bound at start",
    "multicast_group": "the state mesh's socket joins it at start",
    "max_datagram": "it sizes the frames and caches that hold live state",
    "resend_queue": "it sizes the resend queues that hold live state",
    "discover": "the announcer and browser run on the sync interface from the start",
}


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload from `old` to `new` would do."""

    old: Config
    new: Config
    changes: tuple[str, ...]     # applied if nothing is refused, one line per change
    refusals: tuple[str, ...]    # each "FILE: key.path: changing it needs a restart (...)"


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: everything in `applied`, or nothing (`refused` or `error`)."""

    applied: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def refusing(cls, refusals: tuple[str, ...]) -> ReloadOutcome:
        return cls(refused=refusals,
                   error=f"reload refused: {len(refusals)} change(s) need a restart")

    @classmethod
    def failing(cls, problems: list[str], what: str) -> ReloadOutcome:
        """Nothing applied because of `problems` (a file that does not parse, a socket...)."""
        return cls(error=f"reload failed ({what}; the running configuration stays): "
                         + "; ".join(problems))


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    changes: list[str] = []
    refusals: list[str] = []

    def refuse(key: str, why: str) -> None:
        refusals.append(f"{new.path}: {key}: {RESTART} ({why})")

    for key, old_value, new_value in _fields_changed(old.node, new.node):
        if key in ("name", "script_user", "script_group"):
            changes.append(f"node.{key}: {_show(old_value)} -> {_show(new_value)}")
        elif key.startswith("run_as"):
            continue                # the resolved identity, said once below
        elif key in ("wire_user", "wire_uid", "wire_gid"):
            continue                # said once below, by the uid and gid it names
        else:
            refuse(f"node.{key}", f"{_show(old_value)} -> {_show(new_value)}; {NODE_RESTART_WHY[key]}")
    if (old.node.wire_uid, old.node.wire_gid) != (new.node.wire_uid, new.node.wire_gid):
        refuse("node.wire_user", f"{_show(old.node.wire_user)} -> {_show(new.node.wire_user)}; "
                                 "the wire engine drops to its user when it starts")
    a, b = old.node.run_as, new.node.run_as
    if a != b:
        changes.append(f"node.script_user: runs as {a} -> {b}"
                       + ("" if a.groups == b.groups else f", groups {list(a.groups)} -> {list(b.groups)}"))
    _plan_cluster(old, new, changes, refuse)
    changes += _group_changes(old.groups, new.groups)
    changes += _track_changes(old, new)
    _plan_sync(old.sync, new.sync, changes, refuse)
    _plan_health(old.health, new.health, changes, refuse)
    changes += _metrics_changes(old, new)
    return ReloadPlan(old, new, tuple(changes), tuple(refusals))


def keys_changed(old: Config, new: Config) -> bool:
    """Whether the cluster keys, a secret or the send key changed."""
    return (old.cluster.keys != new.cluster.keys or old.cluster.send_key != new.cluster.send_key
            or old.secrets != new.secrets)


# ------------------------------------------------------------------ [cluster]

def _plan_cluster(old: Config, new: Config, changes: list[str], refuse) -> None:
    for key in ("port", "multicast_v4", "multicast_v6"):
        a, b = getattr(old.cluster, key), getattr(new.cluster, key)
        if a != b:
            refuse(f"cluster.{key}", f"{_show(a)} -> {_show(b)}; {CLUSTER_RESTART_WHY}")
    before = {k.id: k for k in old.cluster.keys}
    after = {k.id: k for k in new.cluster.keys}
    for kid in sorted(after.keys() - before.keys()):
        changes.append(f"cluster.keys: key {kid} added")
    for kid in sorted(before.keys() - after.keys()):
        changes.append(f"cluster.keys: key {kid} removed")
    for kid in sorted(before.keys() & after.keys()):
        if before[kid].secret_file != after[kid].secret_file:
            changes.append(f"cluster.keys: key {kid} secret_file {before[kid].secret_file} -> "
                           f"{after[kid].secret_file}")
        elif old.secrets.get(kid) != new.secrets.get(kid):
            changes.append(f"cluster.keys: key {kid} secret changed (in {after[kid].secret_file})")
    if old.cluster.send_key != new.cluster.send_key:
        changes.append(f"cluster.send_key: {old.cluster.send_key} -> {new.cluster.send_key}")


# ------------------------------------------------------------------ groups and tracks

def _group_changes(old: tuple[GroupConfig, ...], new: tuple[GroupConfig, ...]) -> list[str]:
    out = []
    before = {g.name: g for g in old}
    after = {g.name: g for g in new}
    for name in after:
        if name not in before:
            out.append(f"group {name}: added")
    for name in before:
        if name not in after:
            out.append(f"group {name}: removed (bows out if master)")
    for name, g in after.items():
        o = before.get(name)
        if o is None:
            continue
        for key, a, b in _fields_changed(o, g):
            if key == "addresses" and sorted(a) == sorted(b):
                continue              # order only: the set is what the election compares
            if key == "peers" and sorted(a) == sorted(b):
                continue
            restarts = " (the group restarts)" if key in GROUP_RESTART_KEYS else ""
            out.append(f"group {name}: {key} {_show(a)} -> {_show(b)}{restarts}")
    return out


def _track_changes(old: Config, new: Config) -> list[str]:
    out = []
    ifs_before = {(t.interface, t.demotion_group): t for t in old.track_interfaces}
    ifs_after = {(t.interface, t.demotion_group): t for t in new.track_interfaces}
    for key in ifs_after.keys() - ifs_before.keys():
        out.append(f"track_interface {key[0]} (counter {key[1]}): added")
    for key in ifs_before.keys() - ifs_after.keys():
        out.append(f"track_interface {key[0]} (counter {key[1]}): removed")
    for key in ifs_before.keys() & ifs_after.keys():
        for field, a, b in _fields_changed(ifs_before[key], ifs_after[key]):
            out.append(f"track_interface {key[0]} (counter {key[1]}): {field} {_show(a)} -> {_show(b)}")
    out += _named_changes("track_script", old.track_scripts, new.track_scripts)
    return sorted(out)


# ------------------------------------------------------------------ [sync]

def _plan_sync(old: SyncConfig | None, new: SyncConfig | None, changes: list[str], refuse) -> None:
    if old is None and new is None:
        return
    if old is None or new is None:
        refuse("sync", f"section {'added' if old is None else 'removed'}; the state mesh opens its "
                       "sockets and reads the kernel table at start")
        return
    for key, a, b in _fields_changed(old, new):
        if key in SYNC_RESTART_WHY:
            refuse(f"sync.{key}", f"{_show(a)} -> {_show(b)}; {SYNC_RESTART_WHY[key]}")
        elif key == "peers":
            if old.family != new.family:
                refuse("sync.peers", f"the peers' addresses are IPv{new.family} now, "
                                     f"the state mesh's socket is IPv{old.family}")
            if old.multipath != new.multipath and new.interface:
                refuse("sync.peers", f"a backup path {'added' if new.multipath else 'removed'}: the "
                                     "state mesh's socket is bound to sync.interface only while every "
                                     "peer has one path, as a backup path arrives on another one")
            changes.extend(_peer_changes(a, b))
        elif key.startswith("filter."):
            if key == "filter.ignore_protocols":
                a, b = [_PROTOCOL_NAMES.get(n, n) for n in a], [_PROTOCOL_NAMES.get(n, n) for n in b]
            changes.append(f"sync.{key}: {_show(a)} -> {_show(b)} "
                           "(the internal cache is rebuilt from the kernel table)")
        else:
            changes.append(f"sync.{key}: {_show(a)} -> {_show(b)}")


def _peer_changes(old, new) -> list[str]:
    before = {p.id: ", ".join(p.paths) for p in old}
    after = {p.id: ", ".join(p.paths) for p in new}
    out = [f"sync.peers: peer {pid} added ({after[pid]})" for pid in sorted(after.keys() - before.keys())]
    out += [f"sync.peers: peer {pid} removed ({before[pid]})" for pid in sorted(before.keys() - after.keys())]
    out += [f"sync.peers: peer {pid} {'addresses' if ',' in before[pid] + after[pid] else 'address'} "
            f"{before[pid]} -> {after[pid]}"
            for pid in sorted(before.keys() & after.keys()) if before[pid] != after[pid]]
    return out


# ------------------------------------------------------------------ [health]

def _reset_watcher(cfg: HealthConfig) -> bool:
    """Whether the health shell needs its NFLOG socket (HealthShell.open)."""
    return cfg.rst_burst > 0 and any(r.protocol == "tcp" for r in cfg.redirects)


def _plan_health(old: HealthConfig | None, new: HealthConfig | None, changes: list[str], refuse) -> None:
    if old is None and new is None:
        return
    if old is None or new is None:
        refuse("health", f"section {'added' if old is None else 'removed'}; meshd's nftables "
                         "table is built at start")
        return
    if old.nft_table != new.nft_table:
        refuse("health.nft_table", f"{_show(old.nft_table)} -> {_show(new.nft_table)}; "
                                   "the table is created under its name at start")
    if old.nflog_group != new.nflog_group and (_reset_watcher(old) or _reset_watcher(new)):
        refuse("health.nflog_group", f"{old.nflog_group} -> {new.nflog_group}; "
                                     "the reset watcher's NFLOG socket is bound at start")
    if _reset_watcher(new) and not _reset_watcher(old):
        key = "health.rst_burst" if old.rst_burst == 0 else "health.redirects"
        refuse(key, "it turns the reset watcher on; its NFLOG socket is opened at start")
    if (old.check_uid, old.check_gid) != (new.check_uid, new.check_gid):
        refuse("health.check_user", f"{_show(old.check_user)} -> {_show(new.check_user)}; "
                                    "the check engine drops to its user when it starts")
    for key, a, b in _fields_changed(old, new):
        if key in ("check_uid", "check_gid", "relay_uid", "relay_gid"):
            continue
        if key in ("hosts", "tables", "redirects", "relays"):
            changes.extend(f"health: {line}" for line in _named_changes(key[:-1], a, b))
        elif key != "nft_table":
            changes.append(f"health.{key}: {_show(a)} -> {_show(b)}")


# ------------------------------------------------------------------ [metrics]

def _metrics_changes(old: Config, new: Config) -> list[str]:
    a, b = old.metrics, new.metrics
    if a == b:
        return []
    if a is None:
        return [f"metrics: section added (serving on {b.listen})"]
    if b is None:
        return [f"metrics: section removed (the endpoint on {a.listen} closes)"]
    return [f"metrics.listen: {a.listen} -> {b.listen} (the endpoint is bound anew)"]


# ------------------------------------------------------------------ helpers

def _named_changes(kind: str, old, new) -> list[str]:
    """Lines for a list of named items (track scripts, hosts, tables, redirects)."""
    before = {x.name: x for x in old}
    after = {x.name: x for x in new}
    out = [f"{kind} {name}: added" for name in after if name not in before]
    out += [f"{kind} {name}: removed" for name in before if name not in after]
    for name in after.keys() & before.keys():
        for key, a, b in _fields_changed(before[name], after[name]):
            out.append(f"{kind} {name}: {key} {_show(a)} -> {_show(b)}")
    return out


def _fields_changed(old: Any, new: Any, prefix: str = ""):
    """(dotted field, old value, new value) for each compared field of two dataclasses
    that differs; nested dataclasses (a sync filter, a health check) field by field."""
    for f in dataclasses.fields(old):
        if not f.compare:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            yield from _fields_changed(a, b, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, a, b


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        if any(dataclasses.is_dataclass(v) for v in value):
            return f"{len(value)} item(s)"
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)
