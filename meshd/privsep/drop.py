"""A child process giving up its privileges for good, and proving it did.

`drop_privileges(uid, gid, parent)` runs first thing in a child started as
root, before it reads anything from the outside:

1. `setgroups([])`, `setresgid(gid)`, the capability bounding set emptied
   (PR_CAPBSET_DROP; needs CAP_SETPCAP, which systemd's
   CapabilityBoundingSet may withhold: then the set stays as systemd left it,
   harmless under NO_NEW_PRIVS since no exec can gain from it), the ambient
   set cleared, PR_SET_KEEPCAPS off;
2. `setresuid(uid)`: a uid change away from 0 without keepcaps clears the
   permitted and effective sets (capabilities(7));
3. PR_SET_NO_NEW_PRIVS: no exec of this process gains a privilege;
4. PR_SET_PDEATHSIG(SIGKILL), *after* the uid change, which clears it; then
   getppid() is compared with the parent that started us: if the parent died
   before the prctl, the signal will never come, so we exit;
5. /proc/self/status read back (`check_status`): uid and gid, no supplementary
   group, CapEff, CapPrm and CapAmb zero, NoNewPrivs 1.  Anything else is a
   PrivilegeError and the child must exit.

`parse_status` and `check_status` are pure, for tests.

Must not: import anything of meshd's beyond the standard library (it runs
before the child imports its engine), or carry on when a step fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class PrivilegeError(Exception):
    """A step of the drop failed or its result is not what was asked for."""


_libc = None


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    rc = _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0),
                     ctypes.c_ulong(0))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def drop_privileges(uid: int, gid: int, parent: int) -> list[str]:
    """Become (uid, gid) with no capability; returns notes (what could not be
    dropped but does not matter, e.g. the bounding set under systemd).
    Raises PrivilegeError."""
    notes: list[str] = []
    try:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            kept = []
            for cap in range(_last_cap() + 1):
                if _prctl(PR_CAPBSET_READ, cap) != 1:
                    continue
                try:
                    _prctl(PR_CAPBSET_DROP, cap)
                except OSError:
                    kept.append(cap)
            if kept:
                notes.append("capability bounding set not emptied (no CAP_SETPCAP): "
                             f"{len(kept)} left, {','.join(map(str, kept))}")
            _prctl(PR_SET_KEEPCAPS, 0)
            os.setresuid(uid, uid, uid)
        elif (os.getuid(), os.getgid()) != (uid, gid):
            raise PrivilegeError(f"not root (uid {os.getuid()}): cannot become uid {uid} gid {gid}")
        try:
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError:
            pass                        # kernels before 4.3: no ambient set to clear
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as e:
        raise PrivilegeError(f"dropping privileges: {e.strerror or e}") from None
    if os.getppid() != parent:
        raise PrivilegeError(f"parent {parent} is gone (now {os.getppid()})")
    with open("/proc/self/status") as f:
        problems = check_status(parse_status(f.read()), uid, gid)
    if problems:
        raise PrivilegeError("; ".join(problems))
    return notes


def parse_status(text: str) -> dict[str, str]:
    """/proc/PID/status as a dict of its fields (values stripped)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def check_status(status: dict[str, str], uid: int, gid: int) -> list[str]:
    """What is wrong with a dropped process's status: [] when nothing."""
    problems = []
    uids = status.get("Uid", "").split()
    gids = status.get("Gid", "").split()
    if len(uids) != 4 or any(int(u) != uid for u in uids):
        problems.append(f"Uid is {status.get('Uid')!r}, expected {uid} four times")
    if len(gids) != 4 or any(int(g) != gid for g in gids):
        problems.append(f"Gid is {status.get('Gid')!r}, expected {gid} four times")
    if status.get("Groups", ""):
        problems.append(f"Groups is {status.get('Groups')!r}, expected none")
    for key in ("CapEff", "CapPrm", "CapAmb"):
        value = status.get(key)
        if value is None or int(value, 16) != 0:
            problems.append(f"{key} is {value!r}, expected 0")
    if status.get("NoNewPrivs") != "1":
        problems.append(f"NoNewPrivs is {status.get('NoNewPrivs')!r}, expected 1")
    return problems
