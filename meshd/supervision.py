"""What the running daemon tells systemd, and what signals make it do (trio side).

Owns: READY=1 / STATUS= / WATCHDOG=1 / RELOADING=1 / STOPPING=1 as the
daemon's state changes (the rules are in lifecycle.py), the liveness task
that feeds the address leases and the watchdog from the event loop, the
signal loop, and the SIGUSR1 / SIGUSR2 dumps.

Must not: change any state of the cores itself; it asks the daemon (reload,
stop, handle_control) like an operator would.
"""

from __future__ import annotations

import signal

import trio

from .commands import ControlError
from .lifecycle import (DUMP_SIGNALS, HANDLED_SIGNALS, IGNORED_SIGNALS, RELOAD_SIGNALS, Readiness,
                        signal_name, status_line, write_dump)
from .sdnotify import Notifier


class Supervision:
    """Args:
        daemon: the Daemon (node, election shell, reload, stop, handle_control, log).
        notifier: the sd_notify client, read from the environment before any hook ran.
    """

    def __init__(self, daemon, notifier: Notifier):
        self.daemon = daemon
        self.notifier = notifier
        self.readiness = Readiness(with_sync=daemon.config.sync is not None)
        self._status_sent: str | None = None

    # ------------------------------------------------------------------ notify

    def status_line(self) -> str:
        node = self.daemon.node
        return status_line(node.election.status(trio.current_time())["groups"], node.in_sync)

    def groups_started(self) -> None:
        self.readiness.groups_started(trio.current_time())
        self.changed()
        if self.notifier.last_error:
            self.daemon.log("notify_problem", level="warning", error=self.notifier.last_error)

    def sync_verdict(self, in_sync: bool) -> None:
        self.readiness.sync_verdict(in_sync)

    def changed(self) -> None:
        """READY=1 once start-up is done, and STATUS= whenever the summary changes."""
        if self.readiness.groups_started_at is None:
            return
        groups = self.daemon.node.election.status(trio.current_time())["groups"]
        line = status_line(groups, self.daemon.node.in_sync)
        if self.readiness.check(trio.current_time(), [g["state"] for g in groups]):
            self.notifier.ready(line)
            self._status_sent = line
            self.daemon.log("ready", status=line)
        elif line != self._status_sent and self.readiness.ready:
            self.notifier.status(line)
            self._status_sent = line

    async def liveness_loop(self) -> None:
        """Show that the event loop runs: to the address leases (kernel/leases.py)
        and to systemd's watchdog, which restarts a daemon whose loop is stuck.
        Also where a start-up still waiting for the state mesh is called done."""
        leases = self.daemon.election.leases
        periods = [p for p in (leases and leases.interval / 2, self.notifier.watchdog_interval, 1.0) if p]
        period = min(periods)
        while True:
            if leases is not None:
                leases.feed()
            self.notifier.watchdog()
            if not self.readiness.ready:
                self.changed()
            await trio.sleep(period)

    # ------------------------------------------------------------------ signals

    async def signal_loop(self) -> None:
        """See lifecycle.py for what each signal does (and which cannot be caught)."""
        for signum in IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            async for signum in signals:
                if signum in RELOAD_SIGNALS:
                    await self.reload()
                elif signum in DUMP_SIGNALS:
                    await self.write_dump(signum)
                else:
                    await self.daemon.stop(signal_name(signum))
                    return

    async def reload(self):
        """A reload as systemd sees it: RELOADING=1, the reload, READY=1."""
        self.notifier.reloading()
        self.daemon.log.reopen()             # a log file moved away by logrotate (never raises)
        try:
            return await self.daemon.reload()
        finally:
            self.notifier.ready(self.status_line())

    def stopping(self) -> None:
        self.notifier.stopping()

    async def write_dump(self, signum: int) -> None:
        """SIGUSR1: the state (meshctl status, the addresses held, health's
        summary); SIGUSR2: the statistics; as JSON files under run_dir."""
        d = self.daemon
        leases = d.election.leases
        name = DUMP_SIGNALS[signum]
        try:
            if signum == signal.SIGUSR1:
                data = {"status": await d.handle_control({"cmd": "status"}),
                        "addresses_held": leases.held() if leases else None}
                if d.health is not None:
                    data["health"] = await d.handle_control({"cmd": "show", "what": "summary"})
            else:
                election = d.node.election
                data = {"election": {g["name"]: {"adverts": g["adverts"], "transitions": g["transitions"]}
                                     for g in election.status(trio.current_time())["groups"]},
                        "rejected": dict(election.rejected)}
                if d.sync is not None:
                    data["sync"] = await d.handle_control({"cmd": "stats"})
                if leases is not None:
                    data["address_leases"] = {"renewals": leases.renewals, "errors": leases.errors,
                                              "stalls": leases.stalls}
            path = await trio.to_thread.run_sync(write_dump, d.config.node.run_dir, name, data)
        except (OSError, ControlError) as e:
            d.log("dump_failed", level="error", signal=signal_name(signum),
                  error=getattr(e, "strerror", None) or str(e))
            return
        d.log("dump_written", signal=signal_name(signum), path=path)
