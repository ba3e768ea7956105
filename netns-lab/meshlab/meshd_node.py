"""Configure and run meshd on lab firewalls, and read their status.

The daemon contract used here:
  * `python3 -m meshd --config FILE --log-format json` runs in the foreground
    and logs one line per event to stderr;
  * `python3 -m meshd.control.meshctl --socket SOCK status --json` prints
    {"ok": true, "node_id": N, "groups": [{"name", "state", "master", "adverts": {...}}]}.

Files for node N live in RUN_DIR/fwN/ (config, state dir, control socket); the
cluster secret RUN_DIR/cluster.key (48 random bytes, mode 0600) is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .topology import LAN4, LAN6, LAN_VIRTUAL, SRV_VIRTUAL, SYNC4, Lab, LabError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # netns-lab/
REPO = os.path.dirname(HERE)
SECRET_BYTES = 48
MESHD_LOG = "meshd-fw{n}"


def child_env() -> dict[str, str]:
    """PYTHONPATH so that `python3 -m meshd` and `-m meshlab.*` resolve from this checkout."""
    parts = [REPO, HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts)), "PYTHONUNBUFFERED": "1"}


def meshd_available() -> tuple[bool, str]:
    """Whether the daemon in this checkout can run (`python3 -m meshd --help` works)."""
    if not os.path.exists(os.path.join(REPO, "meshd", "daemon.py")):
        return False, "meshd/daemon.py does not exist yet"
    env = dict(os.environ, **child_env())
    try:
        p = subprocess.run([sys.executable, "-m", "meshd", "--help"], capture_output=True,
                           text=True, timeout=30, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return False, "`python3 -m meshd --help` hung"
    if p.returncode != 0:
        return False, f"`python3 -m meshd --help` failed: {(p.stderr or p.stdout).strip()[-500:]}"
    return True, ""


# ---------------------------------------------------------------------- groups


def default_groups(advbase_ms: int = 100) -> list[dict[str, Any]]:
    """The two edge groups, fw1 preferred (skew 10*(N-1)), failing over together."""
    skew = {1: 0, 2: 10, 3: 20}
    return [
        {"id": 1, "name": "lan", "interface": "lan0", "addresses": list(LAN_VIRTUAL),
         "advbase_ms": advbase_ms, "advskew": skew, "sync_set": "edge"},
        {"id": 2, "name": "srv", "interface": "srv0", "addresses": list(SRV_VIRTUAL),
         "advbase_ms": advbase_ms, "advskew": skew, "sync_set": "edge"},
    ]


ACTIVE_B = (f"{LAN4}.254/24", f"{LAN6}fe/64")


def active_active_groups(advbase_ms: int = 100) -> list[dict[str, Any]]:
    """Two independent LAN groups: "a" prefers fw1, "b" prefers fw2 (opposite skews)."""
    return [
        {"id": 1, "name": "a", "interface": "lan0", "addresses": list(LAN_VIRTUAL),
         "advbase_ms": advbase_ms, "advskew": {1: 0, 2: 20, 3: 40}},
        {"id": 2, "name": "b", "interface": "lan0", "addresses": list(ACTIVE_B),
         "advbase_ms": advbase_ms, "advskew": {1: 20, 2: 0, 3: 40}},
    ]


def group_addresses(groups: list[dict[str, Any]]) -> list[str]:
    return [a for g in groups for a in g["addresses"]]


def _for_node(group: dict[str, Any], n: int) -> dict[str, Any]:
    """A group spec with per-node values (a dict {node: value}) resolved for node n."""
    return {k: (v[n] if isinstance(v, dict) else v) for k, v in group.items()}


def _for_node_sync(table: dict[str, Any], n: int) -> dict[str, Any]:
    """Like _for_node, for the [sync] table: only dicts keyed by node numbers are per-node
    (`filter` is an inline table of its own)."""
    return {k: (v[n] if isinstance(v, dict) and v and all(isinstance(x, int) for x in v) else v)
            for k, v in table.items()}


# ---------------------------------------------------------------------- files


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)          # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def write_secret(run_dir: str, name: str = "cluster.key") -> str:
    """A shared cluster secret RUN_DIR/NAME (created once per run dir, mode 0600)."""
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(SECRET_BYTES))
    os.chmod(path, 0o600)
    return path


def node_dir(run_dir: str, n: int) -> str:
    return os.path.join(run_dir, f"fw{n}")


def control_socket(run_dir: str, n: int) -> str:
    return os.path.join(node_dir(run_dir, n), "meshd.sock")


def write_config(run_dir: str, n: int, groups: list[dict[str, Any]] | None = None,
                 advbase_ms: int = 100, extra_cluster: dict[str, Any] | None = None, *,
                 track_interfaces: list[dict[str, Any]] | None = None,
                 track_scripts: list[dict[str, Any]] | None = None,
                 sync: dict[str, Any] | None = None, extra_toml: str | None = None,
                 keys: list[dict[str, Any]] | None = None) -> str:
    """Write RUN_DIR/fwN/meshd.toml for node n; return its path.

    `extra_toml` is appended as is (e.g. a [health] section).  `keys` are the
    `[cluster] keys` tables (default: key 1, the run dir's cluster.key); put
    `send_key` in extra_cluster when there are two.

    Group, track_interface and track_script tables are dicts of keys; a value that
    is itself a dict {node: value} is resolved for node n (per-node advskew, peers,
    notify, command...).  `sync` (None: no state mesh) is the `[sync]` table, for
    example `sync_section(nodes)`; its values may be per-node dicts as well.
    """
    groups = groups if groups is not None else default_groups(advbase_ms)
    d = node_dir(run_dir, n)
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    secret = write_secret(run_dir)
    lines = [
        "[node]",
        f"id = {n}",
        f"name = {_toml_value(f'fw{n}')}",
        f"state_dir = {_toml_value(os.path.join(d, 'state'))}",
        f"control_socket = {_toml_value(control_socket(run_dir, n))}",
        "",
        "[cluster]",
        f"keys = {_toml_value(keys if keys is not None else [{'id': 1, 'secret_file': secret}])}",
    ]
    for k, v in (extra_cluster or {}).items():
        lines.append(f"{k} = {_toml_value(v)}")
    if sync is not None:
        lines += ["", "[sync]"]
        for k, v in _for_node_sync(sync, n).items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    tables = [("group", g) for g in groups]
    tables += [("track_interface", t) for t in track_interfaces or ()]
    tables += [("track_script", t) for t in track_scripts or ()]
    for kind, table in tables:
        lines += ["", f"[[{kind}]]"]
        for k, v in _for_node(table, n).items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    if extra_toml:
        lines += ["", extra_toml.strip()]
    path = os.path.join(d, "meshd.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------- running


def start_meshd(procs, lab: Lab, n: int, groups: list[dict[str, Any]] | None = None,
                advbase_ms: int = 100, log_format: str | None = "json", *,
                extra_cluster: dict[str, Any] | None = None,
                track_interfaces: list[dict[str, Any]] | None = None,
                track_scripts: list[dict[str, Any]] | None = None,
                sync: dict[str, Any] | None = None, extra_toml: str | None = None,
                keys: list[dict[str, Any]] | None = None):
    """Write node n's config and start meshd in lab.fw(n) under `procs` (name meshd-fwN).

    `sync`: the `[sync]` table (see sync_section()); None runs the election alone.
    """
    config = write_config(procs.run_dir, n, groups, advbase_ms, extra_cluster,
                          track_interfaces=track_interfaces, track_scripts=track_scripts, sync=sync,
                          extra_toml=extra_toml, keys=keys)
    sock = control_socket(procs.run_dir, n)
    if os.path.exists(sock):
        os.unlink(sock)
    argv = [sys.executable, "-m", "meshd", "--config", config]
    if log_format:
        argv += ["--log-format", log_format]
    return procs.start(MESHD_LOG.format(n=n), lab.fw(n), argv, env=child_env(), cwd=REPO)


def meshctl(run_dir: str, n: int, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run `meshctl --socket <node n's socket> ARGS...`; the completed process (never raises on exit code)."""
    env = dict(os.environ, **child_env())
    return subprocess.run([sys.executable, "-m", "meshd.control.meshctl", "--socket",
                           control_socket(run_dir, n), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def status(run_dir: str, n: int, timeout: float = 5.0) -> dict[str, Any]:
    """meshctl status of node n; {"ok": False, "error": ...} when it cannot be read."""
    sock = control_socket(run_dir, n)
    if not os.path.exists(sock):
        return {"ok": False, "error": f"no control socket {sock} yet"}
    env = dict(os.environ, **child_env())
    try:
        p = subprocess.run([sys.executable, "-m", "meshd.control.meshctl", "--socket", sock,
                            "status", "--json"], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "meshctl status timed out"}
    try:
        data = json.loads(p.stdout)
    except ValueError:
        return {"ok": False, "error": f"meshctl exit {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}"}
    if not isinstance(data, dict):
        return {"ok": False, "error": f"meshctl printed {data!r}"}
    return data


def statuses(run_dir: str, nodes: list[int]) -> dict[int, dict[str, Any]]:
    """Status of several nodes, read in parallel."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as ex:
        return dict(zip(nodes, ex.map(lambda n: status(run_dir, n), nodes)))


def group_states(st: dict[str, Any]) -> dict[str, str]:
    """{group name: state} from one node's status ({} when unreadable)."""
    if not st.get("ok"):
        return {}
    return {g.get("name"): g.get("state") for g in st.get("groups", [])}


def rejected(st: dict[str, Any], group: str | None = None) -> dict[str, int]:
    """Summed adverts.rejected counters of one node (all groups, or one)."""
    out: dict[str, int] = {}
    for g in st.get("groups", []) if st.get("ok") else []:
        if group is not None and g.get("name") != group:
            continue
        for reason, count in ((g.get("adverts") or {}).get("rejected") or {}).items():
            out[reason] = out.get(reason, 0) + int(count)
    return out


def wait_states(run_dir: str, want: dict[int, dict[str, str] | str], group_names: list[str],
                timeout: float = 10.0, procs=None,
                poll: float = 0.2) -> dict[int, dict[str, Any]]:
    """Poll until every node n is in want[n] (a state for all groups, or {group: state}).

    Raises LabError naming what was seen, with the daemons' log tails.
    """
    expected = {n: ({g: w for g in group_names} if isinstance(w, str) else w) for n, w in want.items()}
    deadline = time.monotonic() + timeout
    last: dict[int, dict[str, Any]] = {}
    while True:
        last = statuses(run_dir, list(expected))
        if all(group_states(last[n]).get(g) == s for n, gs in expected.items() for g, s in gs.items()):
            return last
        if procs is not None:
            dead = [p for name, p in procs.procs.items() if name.startswith("meshd-") and not p.alive()
                    and int(name.split("fw")[-1]) in expected]
            if dead:
                raise LabError(_describe_wait("a daemon exited", expected, last, procs))
        if time.monotonic() >= deadline:
            raise LabError(_describe_wait(f"timed out after {timeout:g} s", expected, last, procs))
        time.sleep(poll)


def _describe_wait(why: str, expected, last, procs) -> str:
    lines = [f"meshd nodes did not reach the expected states ({why})"]
    for n, gs in expected.items():
        st = last.get(n, {})
        seen = group_states(st) if st.get("ok") else st.get("error", "?")
        lines.append(f"  fw{n}: want {gs}, seen {seen}")
    if procs is not None:
        lines.append("daemon logs (last lines):")
        lines.append(procs.logs(25))
    return "\n".join(lines)


def format_status(n: int, st: dict[str, Any]) -> str:
    if not st.get("ok"):
        return f"fw{n}: status unavailable ({st.get('error', st)})"
    parts = []
    for g in st.get("groups", []):
        adv = g.get("adverts") or {}
        rej = sum((adv.get("rejected") or {}).values()) if isinstance(adv.get("rejected"), dict) else 0
        parts.append(f"{g.get('name')} {g.get('state')} (master fw{g.get('master')}, adverts sent "
                     f"{adv.get('sent', '?')}, received {adv.get('received', '?')}, rejected {rej})")
    return f"fw{n}: " + "; ".join(parts)


# ---------------------------------------------------------------------- logs


_TIME_KEYS = ("mono", "monotonic", "t_mono", "ts", "time", "timestamp")


def find_log_event(path: str, match: Callable[[dict[str, Any], str], bool]) -> list[tuple[dict, str]]:
    """JSON log lines of a daemon log for which match(record, raw_line) is true."""
    found = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and match(rec, line):
                    found.append((rec, line))
    except OSError:
        pass
    return found


def became_master_records(path: str) -> list[tuple[dict, str]]:
    """Log records that look like a transition to MASTER (best effort: the format is the daemon's)."""
    def match(rec: dict, line: str) -> bool:
        values = {str(v).upper() for v in rec.values() if isinstance(v, (str, int))}
        return "MASTER" in values and any(k in rec for k in ("from", "old", "prev", "previous", "old_state"))
    recs = find_log_event(path, match)
    if recs:
        return recs
    return find_log_event(path, lambda rec, line: "MASTER" in line and ("->" in line or "becom" in line.lower()
                                                                        or "transition" in line.lower()))


def record_time_ms(rec: dict, t_kill_mono: float, t_kill_wall: float) -> float | None:
    """Milliseconds from the kill to a log record's timestamp, if it has one we understand."""
    for key in _TIME_KEYS:
        v = rec.get(key)
        if isinstance(v, (int, float)):
            # a monotonic clock (same clock as ours) or a Unix time
            if abs(v - t_kill_mono) < 3600:
                return (v - t_kill_mono) * 1000
            if abs(v - t_kill_wall) < 86400:
                return (v - t_kill_wall) * 1000
        elif isinstance(v, str):
            try:
                from datetime import datetime
                ts = datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            return (ts - t_kill_wall) * 1000
    return None


# ---------------------------------------------------------------------- state mesh

SYNC_PORT = 7113


def sync_peers(n: int, nodes=(1, 2)) -> list[dict[str, Any]]:
    """Node n's state-mesh peers: every other node, by its sync0 address 203.0.113.M."""
    return [{"id": m, "address": f"{SYNC4}.{m}"} for m in nodes if m != n]


def sync_section(nodes=(1, 2), **overrides: Any) -> dict[str, Any]:
    """A `[sync]` table for write_config/start_meshd: unicast peers on the sync link.

    Keys of `overrides` are [sync] keys (commit, event_buffer_bytes, heartbeat_ms,
    filter...); a value {node: value} applies per node.
    """
    table: dict[str, Any] = {"interface": "sync0", "port": SYNC_PORT,
                             "peers": {n: sync_peers(n, nodes) for n in nodes}}
    table.update(overrides)
    return table


def control(run_dir: str, n: int, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One control request to node n, in-process (no meshctl start-up): the raw answer, or
    {"ok": False, "error": ...} when the daemon cannot be reached."""
    from meshd.control.meshctl import ClientError, request
    sock = control_socket(run_dir, n)
    if not os.path.exists(sock):
        return {"ok": False, "error": f"no control socket {sock} yet"}
    try:
        return request(sock, req, timeout)
    except ClientError as e:
        return {"ok": False, "error": str(e)}


def control_stream(run_dir: str, n: int, req: dict[str, Any], timeout: float = 10.0):
    """Every answer line of a streaming request (dump), terminator excluded."""
    from meshd.control.meshctl import request_stream
    for answer in request_stream(control_socket(run_dir, n), req, timeout):
        if not answer.get("ok"):
            raise LabError(f"fw{n}: {req.get('cmd')}: {answer.get('error')}")
        if answer.get("more") is not True:
            return
        yield answer


def sync_stats(run_dir: str, n: int, timeout: float = 5.0) -> dict[str, Any]:
    """`meshctl stats` of node n ({"ok": False, ...} when unreadable)."""
    return control(run_dir, n, {"cmd": "stats"}, timeout)


def peer_stats(stats: dict[str, Any], origin: int) -> dict[str, Any]:
    """Per-peer block of a stats answer (JSON keys are strings)."""
    peers = (stats.get("sync") or {}).get("peers") or {}
    return peers.get(str(origin)) or peers.get(origin) or {}


def external_count(stats: dict[str, Any], origin: int) -> int:
    """Entries in a node's external cache of `origin`, from its stats answer (-1 if unknown)."""
    return int((peer_stats(stats, origin).get("in") or {}).get("external_entries", -1))


def internal_count(stats: dict[str, Any]) -> int:
    return int(((stats.get("sync") or {}).get("internal") or {}).get("entries", -1))


def in_sync(stats: dict[str, Any]) -> bool:
    return bool((stats.get("sync") or {}).get("in_sync"))


def wait_external(run_dir: str, n: int, want: dict[int, int], timeout: float, poll: float = 0.05,
                  at_least: bool = True) -> tuple[bool, float, dict[int, int]]:
    """Poll node n until its external cache of each origin holds want[origin] entries.

    Returns (reached, monotonic time reached or last poll, {origin: count seen last}).
    """
    deadline = time.monotonic() + timeout
    seen: dict[int, int] = {}
    while True:
        st = sync_stats(run_dir, n)
        now = time.monotonic()
        if st.get("ok"):
            seen = {o: external_count(st, o) for o in want}
            if all((seen[o] >= w) if at_least else (seen[o] == w) for o, w in want.items()):
                return True, now, seen
        if now >= deadline:
            return False, now, seen
        time.sleep(poll)


def wait_in_sync(run_dir: str, nodes, timeout: float = 15.0, procs=None) -> dict[int, dict[str, Any]]:
    """Poll until every node's state mesh reports in sync; LabError (with logs) otherwise."""
    deadline = time.monotonic() + timeout
    last: dict[int, dict[str, Any]] = {}
    while True:
        last = {n: sync_stats(run_dir, n) for n in nodes}
        if all(in_sync(st) for st in last.values()):
            return last
        if time.monotonic() >= deadline:
            seen = {n: (st.get("sync") or {}).get("sync_reason", st.get("error")) for n, st in last.items()}
            raise LabError(f"state mesh not in sync after {timeout:g} s: {seen}"
                           + (f"\n{procs.logs(25)}" if procs is not None else ""))
        time.sleep(0.1)


def log_events(path: str, event: str) -> list[dict[str, Any]]:
    """Every JSON log record of a daemon log whose "event" (or "msg") is `event`."""
    return [rec for rec, _ in find_log_event(path, lambda rec, line: rec.get("event", rec.get("msg")) == event)]
