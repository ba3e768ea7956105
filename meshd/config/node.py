"""The `[node]` section: this node's id and name, its state directory, its
control socket, how long its virtual addresses outlive it, and the user its
hooks and scripts run as (`script_user`, `script_group`), and the user of the
wire engine (`wire_user`, meshd/wire/engine.py).

Owns the defaults of the run directory and the control socket, shared with
`meshctl --config`, which reads only those two keys (`parse_control_socket`).
Paths are checked as text: absolute, short enough for a Unix socket.

`script_user` and `script_group` are looked up in the user and group
databases here (meshd/runas.py), `wire_user` in the user database
(meshd/config/users.py: never root), so a user that does not exist refuses the
file, and `meshd --check` says so.

Must not: look at the file system (the daemon creates the directories, the
control server binds the socket), or read anything from the system but the
hostname, the default `name`, and the user and group databases.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..runas import (
    DEFAULT_SCRIPT_USER,
    RunAs,
    RunAsError,
    default_run_as,
    resolve_run_as,
)
from .reader import NAME_RE, Reader, describe
from .users import DEFAULT_ENGINE_USER, engine_user

NODE_KEYS = {"id", "name", "state_dir", "control_socket", "run_dir", "address_lifetime_s",
             "script_user", "script_group", "wire_user"}
# sun_path is 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107
DEFAULT_RUN_DIR = "/run/meshd"
CONTROL_SOCKET_NAME = "meshd.sock"       # in run_dir, unless control_socket says otherwise


@dataclass(frozen=True)
class NodeConfig:
    id: int
    name: str
    state_dir: str
    control_socket: str
    run_dir: str = "/run/meshd"
    address_lifetime_s: int = 1
    script_user: str = DEFAULT_SCRIPT_USER       # as written in the file (a name or an id)
    script_group: str | None = None              # None: the user's primary group
    # Resolved when the file is read; compared too, so a reload after a change
    # of the user database applies the new groups.
    run_as: RunAs = field(default_factory=default_run_as)
    # The wire engine's user (meshd/wire/engine.py): never root.
    wire_user: str = DEFAULT_ENGINE_USER
    wire_uid: int = 65534
    wire_gid: int = 65534


def parse_node(r: Reader, data: Any) -> NodeConfig | None:
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
    user, group, run_as = parse_script_user(r, t)
    wire = engine_user(r, t, "node.wire_user", "wire engine")
    if node_id is None or None in (state_dir, run_dir, sock, lifetime, run_as, wire):
        return None
    return NodeConfig(node_id, name, state_dir, sock, run_dir, lifetime, user, group, run_as, *wire)


def parse_script_user(r: Reader, node: dict) -> tuple[str, str | None, RunAs | None]:
    """[node].script_user and script_group: a name or a numeric id each, looked up.

    Returns the two as written (ids as text) and their RunAs, None when wrong.
    """
    ids = {}
    for key, default in (("script_user", DEFAULT_SCRIPT_USER), ("script_group", None)):
        value = node.get(key, default)
        if value is not None and not (isinstance(value, str) and value) and \
                not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32 - 1):
            r.problem(f"node.{key}", f"expected a user or group name, or a numeric id, found {describe(value)}")
            return DEFAULT_SCRIPT_USER, None, None
        ids[key] = value
    try:
        run_as = resolve_run_as(ids["script_user"], ids["script_group"])
    except RunAsError as e:
        r.problem(f"node.{e.key}", str(e))
        return DEFAULT_SCRIPT_USER, None, None
    group = ids["script_group"]
    return str(ids["script_user"]), None if group is None else str(group), run_as


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
