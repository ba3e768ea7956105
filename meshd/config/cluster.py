"""The `[cluster]` section: the election's port and multicast groups, and the
keys the cluster signs and seals with.

This is the one module of the package that reads other files: the secret
files the keys name (`read_secret_files`: type, owner, mode and size checked
on the descriptor read, because `--check` must catch a bad key before a
start does, and a start must not use a key another user can read or choose).

Must not: derive key material or open a socket (meshd/crypto.py and the shells
do), or keep a secret that is too short, readable or writable by group or
others, or owned by another user than root or meshd's.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Any

from .reader import Reader, describe

DEFAULT_PORT = 7112
DEFAULT_MCAST_V4 = "224.0.0.18"
DEFAULT_MCAST_V6 = "ff02::12"
MIN_SECRET_BYTES = 32
CLUSTER_KEYS = {"port", "multicast_v4", "multicast_v6", "keys", "send_key"}
KEY_KEYS = {"id", "secret_file"}


@dataclass(frozen=True)
class KeyConfig:
    id: int
    secret_file: str


@dataclass(frozen=True)
class ClusterConfig:
    port: int
    multicast_v4: str
    multicast_v6: str
    keys: tuple[KeyConfig, ...]
    send_key: int


def parse_cluster(r: Reader, data: Any, base_dir: str) -> ClusterConfig | None:
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


def read_secret_files(r: Reader, cluster: ClusterConfig) -> dict[int, bytes]:
    """Each key's secret, checked on the file descriptor it is read from.

    Refused (a problem naming the file): not a regular file (a FIFO would
    block the read), owned by a user other than root or the one meshd runs
    as (that user could read it, and write a key of their choosing), any
    permission for group or others, fewer than MIN_SECRET_BYTES bytes.
    Directories on the path are preflight's (meshd/preflight.py).
    """
    secrets = {}
    for i, key in enumerate(cluster.keys):
        path = f"cluster.keys[{i}].secret_file"
        try:
            problem, data = _read_secret(key.secret_file)
        except OSError as e:
            r.problem(path, f"cannot read {key.secret_file}: {e.strerror}")
            continue
        if problem:
            r.problem(path, f"{key.secret_file} {problem}")
            continue
        if len(data) < MIN_SECRET_BYTES:
            r.problem(path, f"{key.secret_file} holds {len(data)} bytes, expected at least {MIN_SECRET_BYTES} random bytes")
            continue
        secrets[key.id] = data
    return secrets


def _read_secret(name: str) -> tuple[str, bytes]:
    """(what is wrong with the file, "" if nothing; its bytes).  Raises OSError."""
    # O_NONBLOCK: opening a FIFO does not wait for a writer; fstat then refuses it.
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file", b""
        if st.st_uid not in (0, os.geteuid()):
            return (f"is owned by {_user(st.st_uid)}, not by root or the user meshd runs as: "
                    "that user can read and replace the key; chown root it"), b""
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            how = "readable" if mode & 0o044 else "writable" if mode & 0o022 else "accessible"
            return f"is {how} by group or others (mode {mode:o}); chmod 600 it", b""
        return "", f.read()


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
