"""The health checker's trio shell: runs the checks the node core asks for, keeps
meshd's nftables table in step with it, feeds it the resets the backends
send, and answers the operator's `show` / `host|table|redirect enable|disable`.

Every node of a cluster runs its own checks and keeps its own table, so the
node that holds a redirect's virtual address (whichever it is after a
failover) forwards only to hosts it has seen alive.  The health core lives in
the node core (meshd/node/core.py), which also turns its Demote into the
election's demotion.

Ordering: nftables changes go through one task, in the order the core asked
for them (SetBackends before the DeleteStates that follow it), each in a
worker thread (a netlink round trip must not stall the election's adverts).

Where checks run: by default in the check engine, an unprivileged child
process (meshd/health/remote.py's EngineRunner; scripts stay here); its
coming and going goes to the node core (`check_engine`), which demotes the
node while it is down.  Tests may pass `runner=` a factory of an in-process
`CheckRunner` instead.

Must not: decide when a host is up or down, or what a redirect forwards to
(the health core does).
"""

from __future__ import annotations

import trio

from ..commands import ControlError, require
from ..config import Config
from ..config.health import HealthConfig
from ..kernel.nft import Backend, LbRedirect, LoadBalancer, NftError
from . import report
from .actions import CancelCheck, DeleteStates, Log, SetBackends, StartCheck
from .checks import CheckRunner
from .core import UnknownName
from .remote import EngineRunner
from .scriptpool import ScriptPool

NFT_QUEUE = 1024            # nftables changes waiting for the worker (a burst of health changes)
SCRIPT_POOL = 8             # script checks running at once


def lb_redirects(cfg: HealthConfig) -> list[LbRedirect]:
    """The configuration's redirects as the load balancer's table describes them."""
    watch = cfg.rst_burst > 0
    return [LbRedirect(name=r.name, address=r.address, port=r.port, protocol=r.protocol, mode=r.mode,
                       slots=r.slots, sticky_timeout_s=r.sticky_timeout_s,
                       nflog_group=cfg.nflog_group if watch and r.protocol == "tcp" else None)
            for r in cfg.redirects]


class HealthShell:
    """The health checks of one node under trio.

    Args:
        config: the running configuration (replaced by `apply_reload`).
        node: the NodeCore (its `health` core answers `show`).
        dispatch: the daemon's router for actions the node returns.
        log: the event logger.
        lb: meshd's load balancer table (tests pass their own).
        runner: None for the check engine child; else runner(nursery, report,
            scripts) builds an in-process runner (CheckRunner, for tests).
    """

    def __init__(self, config: Config, node, dispatch, log, lb: LoadBalancer | None = None,
                 runner=None):
        self.cfg: HealthConfig = config.health
        self.node = node
        self.dispatch = dispatch
        self.log = log
        self.lb = lb if lb is not None else LoadBalancer(self.cfg.nft_table, log=self._log_fields)
        self.scripts = ScriptPool(SCRIPT_POOL, run_as=config.node.run_as)
        self.runner: CheckRunner | EngineRunner | None = None
        self._runner_factory = runner
        self._nft_send, self._nft_receive = trio.open_memory_channel(NFT_QUEUE)
        self.nflog = None

    def _log_fields(self, event: str, level: str = "info", **fields) -> None:
        self.log(event, level=level, **fields)

    # ------------------------------------------------------------------ start / stop

    def open(self) -> None:
        """Build meshd's table (blocking; before the daemon runs): every redirect
        refuses new connections until its first checks answer.  Raises NftError
        or OSError (the NFLOG group cannot be bound: NflogError); the daemon
        then refuses to start."""
        self.lb.reconcile(lb_redirects(self.cfg))
        if self.cfg.rst_burst > 0 and any(r.protocol == "tcp" for r in self.cfg.redirects):
            from ..kernel.nflog import NflogReader
            self.nflog = NflogReader(self.cfg.nflog_group, log=self._log_fields)

    async def run(self, nursery: trio.Nursery) -> None:
        """The check runner, the nftables task and the reset watcher, in `nursery`."""
        if self._runner_factory is not None:
            self.runner = self._runner_factory(nursery, self._on_result, self.scripts)
        else:
            # Demoted from the start until the engine says hello.
            self._on_engine(False, "check engine starting")
            self.runner = EngineRunner(nursery, self._on_result, self._on_refused, self._on_engine,
                                       uid=self.cfg.check_uid, gid=self.cfg.check_gid,
                                       log=self._log_fields, scripts=self.scripts)
        nursery.start_soon(self._nft_loop)
        if self.nflog is not None:
            nursery.start_soon(self._reset_loop)

    def engine_status(self, now: float) -> dict | None:
        """The check engine's state, or None where checks run in this process."""
        status = getattr(self.runner, "status", None)
        return status(now) if status is not None else None

    async def close(self) -> None:
        """On stop: remove meshd's table unless the configuration keeps it."""
        if self.nflog is not None:
            self.nflog.close()
        if self.cfg.keep_table_on_stop:
            self.log("lb_table_kept", table=self.cfg.nft_table)
            return
        try:
            await trio.to_thread.run_sync(self.lb.remove)
            self.log("lb_table_removed", table=self.cfg.nft_table)
        except NftError as e:
            self.log("lb_table_remove_failed", level="error", table=self.cfg.nft_table, error=str(e))

    async def prepare_reload(self, config: Config) -> None:
        """The part of a reload that can fail, done before anything else changes:
        meshd's table rebuilt for the new redirects, in one nftables transaction
        (on error the old table stays as it was).  Raises NftError."""
        new = lb_redirects(config.health)
        if new != lb_redirects(self.cfg):
            await trio.to_thread.run_sync(self.lb.reconcile, new)

    def set_script_user(self, config: Config) -> None:
        """Script checks started from now on run as the new `[node] script_user`."""
        self.scripts.run_as = config.node.run_as

    def apply_reload(self, config: Config) -> None:
        """The new configuration from now on (prepare_reload succeeded and the node
        core reloaded its health core)."""
        self.cfg = config.health

    # ------------------------------------------------------------------ the core's actions

    def carry_out(self, a) -> None:
        """An action of the health core: a check started (or refused back to the
        node core) or cancelled, an nftables change queued for the one task that
        applies them in order, a line logged.  Never blocks."""
        if isinstance(a, StartCheck):
            if not self.runner.start(a.check_id, a.target):
                self.dispatch(self.node.check_refused(a.check_id, trio.current_time()))
        elif isinstance(a, CancelCheck):
            self.runner.cancel(a.check_id)
        elif isinstance(a, (SetBackends, DeleteStates)):
            try:
                self._nft_send.send_nowait(a)
            except trio.WouldBlock:
                # Cannot happen unless nftables hangs: say so, the next change
                # of this redirect carries its whole backend list again.
                self.log("lb_queue_full", level="error", action=type(a).__name__)
        elif isinstance(a, Log):
            self.log(a.event, level=a.level, message=a.message, **a.fields)

    def _on_result(self, check_id, outcome) -> None:
        self.dispatch(self.node.check_done(check_id, outcome, trio.current_time()))

    def _on_refused(self, check_id) -> None:
        self.dispatch(self.node.check_refused(check_id, trio.current_time()))

    def _on_engine(self, up: bool, reason: str) -> None:
        self.dispatch(self.node.check_engine(up, reason, trio.current_time()))

    async def _nft_loop(self) -> None:
        async for a in self._nft_receive:
            try:
                if isinstance(a, SetBackends):
                    backends = [Backend(addr, port, weight) for addr, port, weight in a.backends]
                    await trio.to_thread.run_sync(self.lb.set_backends, a.redirect, backends)
                    self.log("lb_backends", redirect=a.redirect, using_backup=a.using_backup,
                             backends=",".join(b.text() for b in backends) or None)
                else:
                    n = await trio.to_thread.run_sync(self.lb.delete_states, a.address, a.port,
                                                      self._protocol(a.redirect))
                    self.log("lb_states_deleted", redirect=a.redirect, host=a.address, port=a.port,
                             deleted=n)
            except (NftError, OSError, ValueError, KeyError) as e:
                self.log("lb_update_failed", level="error", action=type(a).__name__,
                         redirect=a.redirect, error=str(e))

    def _protocol(self, redirect: str) -> str:
        for r in self.cfg.redirects:
            if r.name == redirect:
                return r.protocol
        return "tcp"

    async def _reset_loop(self) -> None:
        while True:
            try:
                resets = await self.nflog.receive()
            except trio.ClosedResourceError:
                # close() at stop closed the socket under this wait: the watcher
                # ends with it (raising here made a clean SIGTERM exit 1).
                return
            now = trio.current_time()
            actions = []
            for r in resets:
                actions += self.node.reset_seen(r.address, r.port, now)
            if actions:
                self.dispatch(actions)

    # ------------------------------------------------------------------ control

    async def handle_control(self, cmd: str, request: dict) -> dict:
        """Answer `show` or `host|table|redirect enable|disable`: the answer's dict.
        ControlError for a bad argument or a name not configured."""
        now = trio.current_time()
        if cmd == "show":
            what = request.get("what", "summary")
            if what == "summary":
                return {"what": "summary", "rows": report.summary(self.node.health)}
            if what == "hosts":
                return {"what": "hosts", "rows": report.hosts(self.node.health, now)}
            raise ControlError(f'show: "what" must be summary or hosts, found {what!r}')
        action = require(request, "action", str)
        if action not in ("enable", "disable"):
            raise ControlError(f'{cmd}: "action" must be enable or disable, found {action!r}')
        name = require(request, "name", str)
        try:
            self.dispatch(self.node.health_enable(cmd, name, action == "enable", now))
        except UnknownName as e:
            raise ControlError(f"{cmd} {action}: {e}") from None
        return {"kind": cmd, "name": name, "enabled": action == "enable"}

