"""The unprivileged users meshd's engines run as (`[health] check_user`,
`[node] wire_user`): a name or a numeric uid that the user database knows,
never root, looked up when the file is read so that `--check` names a user
that does not exist here.

Must not: change any process's user (meshd/privsep/drop.py does, in the child).
"""

from __future__ import annotations

import pwd

from .reader import Reader, describe

DEFAULT_ENGINE_USER = "nobody"


def engine_user(r: Reader, t: dict, where: str, what: str) -> tuple[str, int, int] | None:
    """(as written, uid, gid) of the user at key `where` (a dotted path) of table
    `t`, or None after naming the problem; `what` is the engine, for the words."""
    value = t.get(where.rsplit(".", 1)[1], DEFAULT_ENGINE_USER)
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < 2**32 - 1:
                r.problem(where, f"expected a uid (0 – 4294967294), found {value}")
                return None
            pw = pwd.getpwuid(value)
        elif isinstance(value, str) and value:
            pw = pwd.getpwnam(value)
        else:
            r.problem(where, f"expected a user name or a numeric uid, found {describe(value)}")
            return None
    except KeyError:
        r.problem(where, f"no such user: {value!r} (not in the user database)")
        return None
    if pw.pw_uid == 0:
        r.problem(where, f"{value!r} is root: the {what} must run as an unprivileged user")
        return None
    return str(value), pw.pw_uid, pw.pw_gid
