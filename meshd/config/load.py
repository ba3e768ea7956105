"""The whole file: `load_config` reads it, `parse_config` walks every section
into one frozen `Config` or raises one `ConfigError` listing every problem.

Owns the top-level keys and the order sections are read in (a section that
depends on another, such as `[health]` on the counters the groups follow, is
read after it).

Must not: accept half a file (any problem refuses all of it), or touch the
system beyond reading the file, the secret files (`cluster.read_secret_files`),
the hostname (the default `[node] name`, node.py) and the user and group
databases (`[node] script_user`, node.py).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import ClusterConfig, parse_cluster, read_secret_files
from .groups import ALL_GROUPS, GroupConfig, check_names, parse_groups
from .health import HealthConfig, parse_health
from .metrics import MetricsConfig, parse_metrics
from .node import NodeConfig, parse_node
from .reader import Reader
from .sync import SyncConfig, parse_sync
from .tracks import (
    TrackInterfaceConfig,
    TrackScriptConfig,
    check_track_counters,
    parse_track_interfaces,
    parse_track_scripts,
)

TOP_KEYS = {"node", "cluster", "group", "track_interface", "track_script", "sync", "health",
            "metrics"}


class ConfigError(Exception):
    """One or more problems in a configuration file; str() lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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
    metrics: MetricsConfig | None = None
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
    node = parse_node(r, top.get("node", {}))
    cluster = parse_cluster(r, top.get("cluster", {}), base_dir)
    groups = parse_groups(r, top.get("group", []), cluster)
    track_ifs = parse_track_interfaces(r, top.get("track_interface", []))
    track_scripts = parse_track_scripts(r, top.get("track_script", []))
    check_names(r, groups)
    if groups:
        check_track_counters(r, groups, track_ifs, track_scripts)
    sync = None
    if "sync" in top:
        sync = parse_sync(r, top["sync"], node.id if node else None)
    health = None
    if "health" in top:
        followed = {name for g in groups for name in g.counters()} if groups else None
        health = parse_health(r, top["health"], followed)
    metrics = parse_metrics(r, top["metrics"]) if "metrics" in top else None
    secrets: dict[int, bytes] = {}
    if cluster is not None and read_secrets:
        secrets = read_secret_files(r, cluster)
    if r.problems or node is None or cluster is None:
        raise ConfigError(r.problems or [f"{filename}: invalid configuration"])
    return Config(filename, node, cluster, groups, track_ifs, track_scripts, sync, health, metrics,
                  secrets)
