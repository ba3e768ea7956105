"""Who the programs meshd starts run as, and the arguments that start them so.

meshd starts three kinds of programs: notify hooks (meshd/hooks.py), track
scripts (meshd/track/scripts.py) and script health checks
(meshd/health/scriptpool.py).  Each is started as `[node] script_user`
(keepalived's `script_user`), "nobody" unless the file says otherwise; root
only when the file says `script_user = "root"`.

`resolve_run_as` turns the configured names or numeric ids into a `RunAs`
(uid, gid, supplementary groups, home) by the user and group databases; the
configuration reader calls it, so an unknown user is a configuration error.
`spawn_options` gives the keyword arguments of subprocess.Popen (and so of
trio.run_process / trio.lowlevel.open_process) that start a program as that
identity: `user=`, `group=` and `extra_groups=` are applied by the child
between fork and exec in C (_posixsubprocess), with no Python preexec_fn,
which is unsafe in a process with threads (meshd has worker threads); then
the working directory "/", every other descriptor closed, a session (and so
a process group) of its own, and the environment.

Decisions (docs/security.md, "Scripts and hooks"):

* supplementary groups: the user's own, from the group database (what a
  login of that user gets, so group-based file access and sudo rules work);
  never meshd's own.
* no PR_SET_NO_NEW_PRIVS from meshd: a hook may legitimately call sudo, as
  under keepalived; the shipped systemd unit sets NoNewPrivileges=yes for the
  whole service, which a site can relax in a drop-in.
* the environment: meshd's own (already without systemd's NOTIFY_SOCKET and
  watchdog variables, meshd/sdnotify.py), with HOME, USER and LOGNAME those of
  the script user.

`kill_group` ends such a program with its whole process group, at a timeout
or a cancellation.

Must not: start anything itself (its callers do, with these arguments), or
import anything from meshd (foundation floor, tests/test_layers.py).
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
from dataclasses import dataclass

DEFAULT_SCRIPT_USER = "nobody"


class RunAsError(ValueError):
    """A script_user or script_group that names no user or group; str() says which."""

    def __init__(self, key: str, message: str):
        self.key = key              # "script_user" or "script_group"
        super().__init__(message)


@dataclass(frozen=True)
class RunAs:
    user: str                       # the user's name ("nobody", "root")
    uid: int
    gid: int
    groups: tuple[int, ...]         # supplementary groups (setgroups), sorted
    home: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid}, gid {self.gid})"


def resolve_run_as(user: str | int, group: str | int | None = None) -> RunAs:
    """The identity of `script_user` (and `script_group`): names or numeric ids.

    A numeric id must exist in its database too.  Raises RunAsError naming the
    key and the value when one does not.
    """
    try:
        pw = pwd.getpwuid(user) if isinstance(user, int) else _getpwnam(user)
    except (KeyError, OverflowError):
        what = f"uid {user}" if isinstance(user, int) else f'"{user}"'
        raise RunAsError("script_user", f"no user {what} on this machine (getent passwd)") from None
    gid = pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrgid(group).gr_gid if isinstance(group, int) else _getgrnam(group).gr_gid
        except (KeyError, OverflowError):
            what = f"gid {group}" if isinstance(group, int) else f'"{group}"'
            raise RunAsError("script_group", f"no group {what} on this machine (getent group)") from None
    try:
        groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, gid))))
    except OSError:
        groups = (gid,)
    return RunAs(pw.pw_name, pw.pw_uid, gid, groups, pw.pw_dir)


def _getpwnam(text: str):
    return pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)


def _getgrnam(text: str):
    return grp.getgrgid(int(text)) if text.isdigit() else grp.getgrnam(text)


def default_run_as() -> RunAs:
    """The identity when nothing is configured: DEFAULT_SCRIPT_USER (RunAsError if absent)."""
    return resolve_run_as(DEFAULT_SCRIPT_USER)


def identity_arguments(run_as: RunAs, euid: int | None = None) -> dict:
    """user=, group=, extra_groups= for Popen; {} when there is nothing to change.

    As root (euid 0) they are always given, so the child never keeps meshd's
    own supplementary groups.  Not as root, a process can set neither its
    groups nor another uid: for its own uid nothing is passed (the program
    runs as meshd does), for another one the arguments are passed anyway and
    the start fails with EPERM, which the caller logs as "cannot run".
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0 and run_as.uid == euid:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups)}


def script_environment(run_as: RunAs, base: dict[str, str] | None = None) -> dict[str, str]:
    """meshd's environment (read at each start) with the script user's HOME, USER, LOGNAME."""
    env = dict(os.environ if base is None else base)
    env.update(HOME=run_as.home, USER=run_as.user, LOGNAME=run_as.user)
    return env


def spawn_options(run_as: RunAs) -> dict:
    """Every Popen keyword argument the programs meshd starts share (see the module doc)."""
    return {**identity_arguments(run_as), "cwd": "/", "close_fds": True,
            "start_new_session": True, "env": script_environment(run_as)}


def kill_group(proc) -> None:
    """SIGKILL the process group a program leads (its session: start_new_session).

    Its children (a shell script's sleep, curl) die with it, so none holds a
    pipe open or outlives its timeout.  Not permitted (meshd is not root and
    the program runs as another user): the leader at least, which fails the
    same way if it is not ours either.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:         # the group leader changed its group, or is not ours
        try:
            proc.kill()
        except (ProcessLookupError, PermissionError):
            pass


async def deliver_kill_group(proc) -> None:
    """trio.run_process's deliver_cancel: the whole group, at once, as scriptpool does."""
    kill_group(proc)
