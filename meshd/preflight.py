"""What a valid configuration would still trip on once meshd runs.

load_config() checks the file itself.  preflight() looks at the machine: the
programs meshd will run (notify hooks, track scripts, health script checks),
the configuration file and the directories of the key files and the control
socket, the CA files the TLS
checks will load, the relays' certificates and keys, the interfaces the
groups use.  Each
problem is a Finding; `meshd --check` prints them, and the daemon logs them
at start without refusing to start (a hook fixed later works from then on).

Programs follow keepalived's enable_script_security: meshd runs them as
`[node] script_user` (root if so configured), so whoever can change one, or
rename a directory on its path, runs code as that user.  The same holds for
the configuration file (it names those programs), for the directories of
the key files (whoever can replace a key chooses it; the key files
themselves are load_config's) and for the control socket's (whoever can
replace the socket answers meshctl).  Every path component (of the name as
written and of the file it resolves to) must be owned by root, by the user
meshd runs as or, for programs, by script_user, and writable by nobody
else, except a directory with the sticky bit (/tmp): there, others cannot
replace a file they do not own.  script_user must also be able to reach
and run a program (search permission on each directory, execute on the
file, read too for a `#!` script): a hook that root could run but "nobody"
cannot is an error here, not a surprise at the first failover.
script_user = "root" is a warning; a meshd not running as root cannot
start programs as another user, an error.

Must not: refuse to start (only `meshd --check` fails on an error), change
anything on the machine (it stats, looks up and loads, never writes), or
check the file itself again (load_config did).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import stat
from dataclasses import dataclass

from .config import Config
from .runas import RunAs


@dataclass(frozen=True)
class Finding:
    level: str        # "error": meshd would fail at it; "warning": it may, on this machine
    key: str          # key path in the configuration file, as in config errors
    message: str      # names the file or interface concerned
    config: str = ""  # the configuration file

    def __str__(self) -> str:
        text = f"{self.config}: {self.key}: {self.message}"
        return f"warning: {text}" if self.level == "warning" else text


def preflight(config: Config) -> list[Finding]:
    """Every finding for `config` on this machine, in file order."""
    found: list[tuple[str, str, str]] = []
    run_as = config.node.run_as
    programs = 0
    for i, g in enumerate(config.groups):
        for j, program in enumerate(g.notify):
            found += _program(f"group[{i}].notify[{j}]", program, run_as)
            programs += 1
    for i, t in enumerate(config.track_scripts):
        found += _program(f"track_script[{i}].command[0]", t.command[0], run_as)
        programs += 1
    if config.health is not None:
        for i, table in enumerate(config.health.tables):
            where = f"health.table[{i}].check"
            if table.check.script:
                found += _program(f"{where}.script", table.check.script, run_as)
                programs += 1
            if table.check.ca_file:
                found += _ca_file(f"{where}.ca_file", table.check.ca_file)
        for i, relay in enumerate(config.health.relays):
            if relay.tls is not None:
                found += _certificate(f"health.relay[{i}].tls", relay.tls.certificate, relay.tls.key)
            if relay.backend_tls is not None and relay.backend_tls.ca:
                found += _ca_file(f"health.relay[{i}].backend_tls.ca", relay.backend_tls.ca)
    found += _secrets_and_file(config)
    for i, g in enumerate(config.groups):
        found += _interface(f"group[{i}].interface", g.interface,
                            "the group would stay in FAULT until it appears")
    for i, t in enumerate(config.track_interfaces):
        found += _interface(f"track_interface[{i}].interface", t.interface,
                            "it would count as down, adding its weight")
    if config.sync is not None and config.sync.interface:
        found += _interface("sync.interface", config.sync.interface,
                            "the state mesh could not bind to it and meshd would not start")
    found = _script_user(run_as, programs) + found
    return [Finding(level, key, message, config.path) for level, key, message in found]


# ---------------------------------------------------------------- programs


def _script_user(run_as: RunAs, programs: int) -> list[tuple[str, str, str]]:
    key = "node.script_user"
    if run_as.is_root:
        return [("warning", key, ("hooks and scripts run as root (script_user = \"root\"): "
                                  "whoever can change one of them is root"))]
    euid = os.geteuid()
    if programs and euid != 0 and euid != run_as.uid:
        return [("error", key, (f"meshd runs as {_user(euid)}, not root: it cannot start its "
                                f"{programs} hook(s) and script(s) as {run_as}"))]
    return []


def _program(key: str, program: str, run_as: RunAs) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    if "/" not in program:
        # Resolved as the daemon will (subprocess searches PATH); a service
        # manager may give meshd another PATH than this shell has.
        found = shutil.which(program)
        if found is None:
            return [("error", key, (f"no executable \"{program}\" found in PATH "
                                    f"({os.environ.get('PATH', os.defpath)})"))]
        path = found
    elif not os.path.isabs(program):
        path = os.path.abspath(program)
        out.append(("warning", key, (f"{program} is a relative path: found here as {path}, but "
                                     "meshd resolves it from the directory it starts in "
                                     "(/ under systemd)")))
    else:
        path = program
    try:
        st = os.stat(path)
    except OSError as e:
        return [*out, ("error", key, f"{path}: {e.strerror}")]
    if not stat.S_ISREG(st.st_mode):
        return [*out, ("error", key, f"{path} is not a regular file")]
    if not st.st_mode & 0o111 or not os.access(path, os.X_OK):
        out.append(("error", key, f"{path} is not executable (mode {_mode(st)}); chmod +x it"))
    else:
        out += [("error", key, problem) for problem in _unreachable(path, run_as)]
    out += [("error", key, problem) for problem in _unsafe(path, run_as)]
    return out


def _unreachable(path: str, run_as: RunAs) -> list[str]:
    """Why script_user could not run `path`, which meshd itself can ([] when it can)."""
    if run_as.is_root:
        return []
    real = os.path.realpath(path)
    for component in [*_components(os.path.abspath(path))[:-1], *_components(real)[:-1]]:
        try:
            st = os.stat(component)
        except OSError:
            continue            # _unsafe names it
        if not _may(st, run_as, 0o1):
            return [(f"script_user {run_as.user} cannot enter directory {component} (owner "
                    f"{_user(st.st_uid)}, mode {_mode(st)}), so it cannot run {path}")]
    st = os.stat(real)
    if not _may(st, run_as, 0o1):
        return [(f"script_user {run_as.user} may not execute {path} (owner {_user(st.st_uid)}, "
                f"mode {_mode(st)})")]
    if _is_script(real) and not _may(st, run_as, 0o4):
        return [(f"script_user {run_as.user} may not read {path} (owner {_user(st.st_uid)}, "
                f"mode {_mode(st)}), and its interpreter must read it")]
    return []


def _may(st: os.stat_result, run_as: RunAs, bit: int) -> bool:
    """Whether run_as has permission `bit` (4 read, 1 execute/search) by the mode bits."""
    if st.st_uid == run_as.uid:
        shift = 6
    elif st.st_gid in run_as.groups or st.st_gid == run_as.gid:
        shift = 3
    else:
        shift = 0
    return bool(st.st_mode >> shift & bit)


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _unsafe(path: str, run_as: RunAs | None = None) -> list[str]:
    """Why someone other than root, us or (for a program, run_as given) script_user
    could change what `path` holds or runs ([] when safe)."""
    problems = []
    trusted = {0, os.geteuid()} | ({run_as.uid} if run_as is not None else set())
    owners = (f"root, the user meshd runs as or script_user {run_as.user}" if run_as is not None
              else "root or the user meshd runs as")
    given, real = os.path.abspath(path), os.path.realpath(path)
    # By inode: /bin and /usr/bin (merged /usr) are one directory, checked once;
    # a symbolic link's own mode means nothing, its directory and target do.
    seen: set[tuple[int, int]] = set()
    for component in [*_components(given)[:-1], *_components(real)]:
        try:
            st = os.stat(component)
        except OSError as e:
            problems.append(f"{component}: {e.strerror}")
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        if component == real:
            what = path if real == given else f"{real} (where {path} leads)"
            how = ""
        else:
            what = f"directory {component}"
            how = f", so others could replace {path}"
        if st.st_uid not in trusted:
            problems.append(f"{what} is owned by {_user(st.st_uid)}, not by {owners}{how}; chown it")
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            by = {stat.S_IWGRP: ("group", "g-w"), stat.S_IWOTH: ("others", "o-w"),
                  stat.S_IWGRP | stat.S_IWOTH: ("group and others", "go-w")}[writable]
            problems.append(f"{what} is writable by {by[0]} (mode {_mode(st)}){how}; "
                            f"chmod {by[1]} {'it' if not how else component}")
    return problems


def _components(path: str) -> list[str]:
    """/usr/lib/x -> ["/", "/usr", "/usr/lib", "/usr/lib/x"]."""
    parts = [p for p in path.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1)]


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):o}"


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


# ------------------------------------------------- secrets and the file itself


def _secrets_and_file(config: Config) -> list[tuple[str, str, str]]:
    """Directories others could use to replace a key file or the control socket;
    a configuration file others could change (it names the programs meshd runs
    as root, and the keys).

    The key files themselves were checked by load_config (owner, mode), so
    only their directories can be found here.  A file that is not there is
    not preflight's to report: load_config does for keys it reads, and a
    configuration parsed from a string has no file.
    """
    out: list[tuple[str, str, str]] = []
    for i, key in enumerate(config.cluster.keys if config.cluster else ()):
        if os.path.lexists(key.secret_file):
            out += [("error", f"cluster.keys[{i}].secret_file", p) for p in _unsafe(key.secret_file)]
    if config.path and os.path.lexists(config.path):
        why = " (whoever can change it chooses the programs meshd runs as root)"
        out += [("error", "file", p + why) for p in _unsafe(config.path)]
    if config.node is not None:
        parent = os.path.dirname(os.path.abspath(config.node.control_socket))
        if os.path.isdir(parent):   # meshd creates it (0755) when it is missing
            why = (" (the control socket's directory: others could put their own socket "
                   "in place of meshd's, and meshctl would talk to it)")
            out += [("error", "node.control_socket", p + why) for p in _unsafe(parent)]
    return out


# ---------------------------------------------------------------- CA files


def _ca_file(key: str, path: str) -> list[tuple[str, str, str]]:
    """The file the TLS check loads as its trust store: readable, and certificates in it."""
    out: list[tuple[str, str, str]] = []
    if not os.path.isabs(path):
        out.append(("warning", key, (f"{path} is a relative path: meshd opens it from the "
                                     "directory it starts in (/ under systemd)")))
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):   # before open(): a FIFO would block it
            return [*out, ("error", key, f"{path} is not a regular file")]
        with open(path, "rb"):
            pass
    except OSError as e:
        return [*out, ("error", key, f"cannot read {path}: {e.strerror}")]
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError as e:
        out.append(("error", key, f"{path} holds no certificate the TLS check can use: {e.reason or e}"))
    return out


def _certificate(key: str, certificate: str, private_key: str) -> list[tuple[str, str, str]]:
    """A relay's certificate and key: readable here (the daemon reads them for
    the relay engine), and a pair that loads."""
    for name, path in (("certificate", certificate), ("key", private_key)):
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                return [("error", f"{key}.{name}", f"{path} is not a regular file")]
            with open(path, "rb"):
                pass
        except OSError as e:
            return [("error", f"{key}.{name}", f"cannot read {path}: {e.strerror}")]
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, private_key)
    except ssl.SSLError as e:
        return [("error", key, f"{certificate} and {private_key} do not load as a certificate "
                 f"and its key: {e.reason or e}")]
    return []


# --------------------------------------------------------------- interfaces


def _interface(key: str, name: str, consequence: str) -> list[tuple[str, str, str]]:
    try:
        socket.if_nametoindex(name)
    except OSError:
        # A warning: --check may run on another machine than the one it is for.
        return [("warning", key, f"no interface \"{name}\" on this machine; {consequence}")]
    return []
