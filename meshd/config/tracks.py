"""The `[[track_interface]]` and `[[track_script]]` tables: what raises a
demotion counter when a link goes down or a script keeps failing.

A track feeding a counter no group follows is refused here as a typo
(`check_track_counters`).  Script commands are kept as given.

Must not: run or look at a script (meshd/track/scripts.py runs them, preflight
checks them), or decide what a failed track does: NodeCore turns it into a
demotion, or a FAULT with weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .groups import ALL_GROUPS, GroupConfig
from .reader import Reader

TRACK_IF_KEYS = {"interface", "weight", "demotion_group"}
TRACK_SCRIPT_KEYS = {"name", "command", "interval_ms", "timeout_ms", "rise", "fall",
                     "weight", "demotion_group"}


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


def parse_track_interfaces(r: Reader, data: Any) -> tuple[TrackInterfaceConfig, ...]:
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


def parse_track_scripts(r: Reader, data: Any) -> tuple[TrackScriptConfig, ...]:
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


def check_track_counters(r: Reader, groups: tuple[GroupConfig, ...],
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
