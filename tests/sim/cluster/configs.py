"""The simulated nodes' configuration files: TOML text, parsed as the daemon parses it.

Every node of the simulator runs from a real `Config`: `parse_config` on the
text these helpers write, with the secrets given directly (the files they
name are never read).  The helpers return plain dicts for one section or
table, so a test changes a key with `dict(...)` or a keyword and the result
still goes through the configuration's own checks.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib

from meshd.config import Config, parse_config
from meshd.config.health import HealthConfig
from meshd.crypto import ELECTION_INFO, SYNC_INFO, KeyRing
from meshd.health.checkspec import CheckSpec

SECRET = b"meshd simulated cluster secret!!"          # 32 bytes, key id 1
SECRETS = {1: SECRET}
ELECTION_KEYS = KeyRing.from_secrets(SECRETS, 1, ELECTION_INFO)
SYNC_KEYS = KeyRing.from_secrets(SECRETS, 1, SYNC_INFO)
# An outsider's keys: the same key id, another secret.
OTHER_ELECTION_KEYS = KeyRing.from_secrets({1: b"x" * 32}, 1, ELECTION_INFO)
OTHER_SYNC_KEYS = KeyRing.from_secrets({1: b"y" * 32}, 1, SYNC_INFO)


def address(node_id: int) -> str:
    """A node's own address, on every segment of the simulated network."""
    return f"10.0.0.{node_id}"


# ------------------------------------------------------------------ sections

def group(gid: int, advskew: int = 0, advbase_ms: int = 100, **kw) -> dict:
    """A [[group]] table; nodes share everything but advskew (and preempt if wanted).

    Group k holds 192.0.2.k/24 on eth0 unless told otherwise.
    """
    kw.setdefault("interface", "eth0")
    return {"id": gid, "name": kw.pop("name", f"g{gid}"), "addresses": [f"192.0.2.{gid}/24"],
            "advbase_ms": advbase_ms, "advskew": advskew, **kw}


def quiet_group() -> dict:
    """A group for simulations of the state mesh alone: the longest advbase
    (60 s), so its adverts and takeovers stay out of the way."""
    return group(250, advbase_ms=60000, name="quiet")


def sync(node_id: int, peer_ids, **kw) -> dict:
    """A [sync] section with every other node of `peer_ids` as a unicast peer.

    heartbeat_ms defaults to 250 here (the sync core's own default, which the
    state-mesh simulations were written against; the configuration's is 200).
    """
    kw.setdefault("heartbeat_ms", 250)
    peers = [{"id": p, "address": address(p)} for p in sorted(peer_ids) if p != node_id]
    return {"peers": peers, **kw}


def mesh(ids, peers: dict | None = None, **sync_kw) -> dict[int, str]:
    """The files of a state mesh of nodes `ids` (each the peer of every other,
    unless `peers` gives a node's own list), with the quiet group only."""
    return {n: node(n, [quiet_group()], sync=sync(n, (peers or {}).get(n, ids), **sync_kw)) for n in ids}


def node(node_id: int, groups, *, sync: dict | None = None, health: dict | None = None,
         keys: tuple[int, ...] = (1,), send_key: int | None = None, **node_kw) -> str:
    """The whole file of one node."""
    doc: dict = {"node": {"id": node_id, "name": f"node{node_id}", **node_kw},
                 "cluster": {"keys": [{"id": k, "secret_file": f"k{k}.key"} for k in keys]},
                 "group": list(groups)}
    if send_key is not None:
        doc["cluster"]["send_key"] = send_key
    if sync is not None:
        doc["sync"] = sync
    if health is not None:
        doc["health"] = health
    return dumps(doc)


def parse(text: str, secrets: dict[int, bytes] | None = None, path: str = "meshd.toml") -> Config:
    """The node's Config, as the daemon reads it; `secrets` stand for the key files."""
    cfg = parse_config(tomllib.loads(text), path, read_secrets=False)
    return dataclasses.replace(cfg, secrets=dict(SECRETS if secrets is None else secrets))


# ------------------------------------------------------------------ [health]

HTTP = {"method": "http", "timeout_ms": 500}
TCP = {"method": "tcp", "timeout_ms": 500}
HTTP_SPEC = CheckSpec("http", timeout_s=0.5)
TCP_SPEC = CheckSpec("tcp", timeout_s=0.5)
WEB = {"web1": "10.1.0.11", "web2": "10.1.0.12", "web3": "10.1.0.13", "sorry": "10.1.0.99"}


def table(name: str, hosts, port: int = 80, check: dict = HTTP, **kw) -> dict:
    """A [[health.table]]: 2 s interval, 0.5 s fast, 5 s down, rise 2, fall 3, no jitter."""
    base = {"interval_ms": 2000, "fast_interval_ms": 500, "down_interval_ms": 5000, "rise": 2,
            "fall": 3, "jitter_percent": 0}
    return {"name": name, "hosts": list(hosts), "port": port, **base, **kw, "check": dict(check)}


def redirect(name: str = "www", tbl: str = "web", **kw) -> dict:
    kw.setdefault("address", "192.0.2.80")
    kw.setdefault("port", 80)
    return {"name": name, "table": tbl, **kw}


def health(hosts: dict, tables, redirects=(), **kw) -> dict:
    """[health]: hosts as {name: address} or {name: (address, weight[, disabled])}."""
    items = []
    for name, spec in hosts.items():
        if isinstance(spec, str):
            items.append({"name": name, "address": spec})
        else:
            addr, weight, *disabled = spec
            items.append({"name": name, "address": addr, "weight": weight,
                          **({"disabled": disabled[0]} if disabled else {})})
    return {**kw, "host": items, "table": list(tables), "redirect": list(redirects)}


def health_node(node_id: int = 1, health_section: dict | None = None, *, advbase_ms: int = 1000,
                **kw) -> str:
    """One node whose only group, "lan", is the counter the redirects demote."""
    return node(node_id, [group(1, advbase_ms=advbase_ms, name="lan")], health=health_section, **kw)


def health_config(hosts: dict, tables, redirects=(), **kw) -> HealthConfig:
    """The HealthConfig of that section, for tests that drive a HealthCore alone."""
    return parse(health_node(1, health(hosts, tables, redirects, **kw))).health


# ------------------------------------------------------------------ TOML

def dumps(doc: dict, path: tuple[str, ...] = ()) -> str:
    """TOML text of a document of tables, arrays of tables and plain values."""
    lines: list[str] = []
    subs: list[tuple[str, object]] = []
    for key, value in doc.items():
        if isinstance(value, dict) or _tables(value):
            subs.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in subs:
        name = ".".join((*path, key))
        for item in (value if isinstance(value, list) else [value]):
            lines.append(f"\n[[{name}]]" if isinstance(value, list) else f"\n[{name}]")
            lines.append(dumps(item, (*path, key)))
    return "\n".join(lines)


def _tables(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")
