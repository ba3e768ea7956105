"""The daemon's check runner: network checks in the check engine child,
script checks in the daemon's own script pool.

`EngineRunner` has the interface of `CheckRunner` (start / cancel /
in_flight, a verdict reported per check), so the health shell and the
health core do not know where a check runs.  Behind it:

* a `ChildSupervisor` keeps the engine (meshd/health/engine.py) running as
  `[health] check_user`, with the raw ICMP sockets it may not open itself;
* `start` of a network check is a `start` message; the engine answers
  `outcome` or `refused`; `cancel` is a `cancel` message and nothing is
  reported for that check;
* while the engine is down, `start` refuses (the health core schedules the
  check again one interval later: a check not run counts neither for nor
  against a host); when it dies, every check that was in it is handed back
  as refused (`refused(check_id)`), and `engine(up, reason)` tells the shell,
  which demotes the node until the engine is back;
* script checks run here, in the `CheckRunner` of the daemon, because they
  are the operator's programs (their user is `script_user`'s business).

Must not: decide when a check runs or what it means (the health core), or
demote anything itself (the node core, through the shell).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Hashable

import trio

from ..privsep.supervisor import Channel, ChildSupervisor
from . import icmp
from .checks import CheckRunner
from .checkspec import CheckTarget
from .engineproto import FROM_ENGINE, LOG_LEVELS, TO_ENGINE, outcome_from, target_fields
from .scriptpool import ScriptPool

ENGINE_MODULE = "meshd.health.engine"


def icmp_sockets() -> dict[str, socket.socket]:
    """One raw ICMP socket per family that this process may open (CAP_NET_RAW)."""
    out = {}
    for option, family in (("icmp4", socket.AF_INET), ("icmp6", socket.AF_INET6)):
        try:
            out[option] = icmp.open_raw(family)
        except OSError:
            pass        # no CAP_NET_RAW, or no IPv6: the engine tries a ping socket itself
    return out


class EngineRunner:
    """Args:
        nursery: where the supervisor and the script checks run.
        report(check_id, outcome): a verdict.
        refused(check_id): a check handed back unrun (its engine died, or it refused).
        engine(up, reason): the engine came up or went down.
        uid, gid: the engine's user.
        log: the event logger.
        scripts: the daemon's script pool.
    """

    def __init__(self, nursery: trio.Nursery, report: Callable, refused: Callable[[Hashable], None],
                 engine: Callable[[bool, str], None], *, uid: int, gid: int, log,
                 scripts: ScriptPool | None = None, module: str = ENGINE_MODULE,
                 extra_fds: Callable[[], dict] | None = icmp_sockets):
        self.report = report
        self.refused = refused
        self.engine = engine
        self.log = log
        self.local = CheckRunner(nursery, report, scripts=scripts)
        self.remote: dict[Hashable, CheckTarget] = {}
        self.channel: Channel | None = None
        self.stale = 0
        self.engine_uid: int | None = None
        self.down_reason: str | None = "starting"
        self.changed_at = trio.current_time()
        self.supervisor = ChildSupervisor(
            "check engine", module, ["--uid", str(uid), "--gid", str(gid)], FROM_ENGINE, TO_ENGINE,
            log=log, on_up=self._up, on_message=self._message, on_down=self._down,
            extra_fds=extra_fds)
        nursery.start_soon(self.supervisor.run)

    @property
    def in_flight(self) -> int:
        return len(self.remote) + self.local.in_flight

    @property
    def up(self) -> bool:
        return self.channel is not None

    def start(self, check_id: Hashable, target: CheckTarget) -> bool:
        if target.spec.method == "script":
            return self.local.start(check_id, target)
        if self.channel is None or check_id in self.remote:
            return False
        if not self.channel.send_nowait("start", id=check_id, **target_fields(target)):
            return False
        self.remote[check_id] = target
        return True

    def cancel(self, check_id: Hashable) -> bool:
        if self.remote.pop(check_id, None) is not None:
            if self.channel is not None:
                self.channel.send_nowait("cancel", id=check_id)
            return True
        return self.local.cancel(check_id)

    # ------------------------------------------------------------ the supervisor's callbacks

    def status(self, now: float) -> dict:
        """For `meshctl status`: whether the engine is up, as whom, since when."""
        return {"up": self.up, "pid": self.supervisor.pid if self.up else None,
                "uid": self.engine_uid if self.up else None,
                "since_s": round(now - self.changed_at, 1), "down_reason": self.down_reason,
                "starts": self.supervisor.starts, "checks_in_flight": len(self.remote),
                "stale_answers": self.stale}

    def _up(self, channel: Channel, hello) -> None:
        self.channel = channel
        self.engine_uid = hello.fields["uid"]
        self.down_reason = None
        self.changed_at = trio.current_time()
        self.log("check_engine_up", pid=hello.fields["pid"], uid=hello.fields["uid"],
                 notes=hello.fields["notes"] or None)
        self.engine(True, "check engine up")

    def _message(self, m) -> None:
        if m.type in ("outcome", "refused"):
            check_id = m.fields["id"]
            if self.remote.pop(check_id, None) is None:
                self.stale += 1         # cancelled meanwhile, or an engine making ids up
                return
            if m.type == "outcome":
                self.report(check_id, outcome_from(m.fields))
            else:
                self.refused(check_id)
        elif m.type == "log":
            level = m.fields["level"] if m.fields["level"] in LOG_LEVELS else "warning"
            self.log("check_engine_says", level=level, what=m.fields["event"],
                     text=m.fields["text"] or None)

    def _down(self, reason: str) -> None:
        self.channel = None
        self.down_reason = reason
        self.changed_at = trio.current_time()
        lost = list(self.remote)
        self.remote.clear()
        self.engine(False, f"check engine down: {reason}")
        for check_id in lost:
            self.refused(check_id)
