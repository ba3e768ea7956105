"""The health core: which check runs when, what each host's health is, and
which hosts each redirect forwards to.  Sans-I/O: `now` is passed in (seconds,
any monotonic origin), actions (meshd.health.actions) are returned; it never
reads a clock, touches a socket or logs.

API:

* `HealthCore(config, rng)`: config is a `HealthConfig`; rng a
  `random.Random` (seed it in tests) used for jitter only.
* `start(now)`: schedules the first checks and returns the initial
  SetBackends of every redirect (and Demote of the counters they raise).
  `poll` calls it if the shell did not.
* `poll(now)` (alias `handle_timer`, for CoreTimer): starts the checks that
  are due, within `max_in_flight`, and gives up on runs the runner has not
  reported within their timeout plus OVERDUE_GRACE_S (counted as failures).
* `check_done(check_id, outcome, now)`: a run's result.  Unknown or late ids
  are ignored (counted in `stale_results`).
* `check_refused(check_id, now)`: the runner could not start the run (its
  own cap): the slot is freed and the check runs again an interval later;
  the host's health is not touched, a local overload is not its fault.
* `next_deadline()`: when `poll` has work next, or None.
* `rst_seen(address, port, now)`: one TCP reset a backend sent (passive
  evidence, l4ip's RST watcher).
* `set_enabled(kind, name, enabled, now)`: operator enable/disable of a
  "host", "table" or "redirect"; raises UnknownName.
* `reload(config, now)`: a new HealthConfig.  A host that stays in a table
  with the same address and port keeps its health (status, counts, history);
  a check whose target is unchanged keeps its schedule, a new or changed one
  runs at once.  Runs of checks that are gone are cancelled (CancelCheck).

Rules, all in this file (the counting is in model.py, timing in schedule.py):

* One check per distinct CheckTarget (address, port, CheckSpec): tables with
  the same port and an equal check share it, and its result counts for the
  host in every such table.  It runs at the shortest interval any of those
  hosts asks for (the faster table wins), with that table's jitter.
* The next run waits its interval from the end of the previous one, so a
  slow or timing-out host is never checked twice at once.
* A host is checked only while it and its table are enabled.  Enabling one
  again makes its health unknown and checks it at once.
* A redirect forwards to the hosts of its table that are up; when none is,
  to those of its backup table (using_backup); else to nothing, and its
  `demote` counter is raised until a host is up again.  An unknown host is
  not up, so at start a redirect demotes until its first checks answer: a
  node does not take a virtual address over before it knows a backend.
  A disabled redirect forwards to nothing and raises no demotion (the
  operator chose it).  SetBackends is emitted only when the list changes.
* With delete_dead_states, a host that left a redirect's list because it is
  down gets a DeleteStates after the SetBackends; a host that left because
  it or its table was disabled drains (its connections are kept).
* A burst of `rst_burst` resets within `rst_window_ms` from one backend
  moves its check to the fast interval and runs it now (or a fast interval
  after the previous run, so a reset flood cannot make checks run faster).
  It never marks the host down itself: a client must not be able to fail a
  backend on purpose.
* Operator overrides survive a reload unless the file changed that item's
  `disabled` key (the file is then the newer word).
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from dataclasses import dataclass

from ..config.health import HealthConfig, HealthHost, HealthRedirect, HealthTable
from .actions import (
    Action,
    Backend,
    CancelCheck,
    DeleteStates,
    Demote,
    Log,
    SetBackends,
    StartCheck,
)
from .checkspec import CheckOutcome, CheckTarget
from .model import HostHealth, Pace, Status
from .schedule import DueQueue, InFlight, Run, first_delay, jittered

OVERDUE_GRACE_S = 2.0       # beyond the check's timeout, before the core stops waiting
KINDS = ("host", "table", "redirect")

STATUS_ACTIVE = "active"
STATUS_BACKUP = "active (using backup table)"
STATUS_DOWN = "down"
STATUS_DISABLED = "disabled"


class UnknownName(LookupError):
    """An operator command named a host, table or redirect the configuration lacks."""


@dataclass
class Member:
    """One host in one table (relayd's host entry): the unit of health."""
    id: int
    table: str
    host: str
    address: str
    port: int                # the table's port: where redirects forward to
    weight: int
    target: CheckTarget
    health: HostHealth

    @property
    def endpoint(self) -> str:
        return endpoint(self.address, self.port)


@dataclass
class Check:
    target: CheckTarget
    members: list[Member]
    last_started: float | None = None
    last_warning: str | None = None


@dataclass
class RedirectState:
    id: int
    config: HealthRedirect
    backends: tuple[Backend, ...] | None = None   # last emitted; None before the first
    using_backup: bool = False
    status: str | None = None
    reason: str = ""


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class HealthCore:
    """The health checks and redirects of one node; its inputs are listed in
    the module docstring ("API").

    Args:
        config: the [health] section.
        rng: the randomness of the jitter (seed it in tests); None: a fresh one.

    Every input returns the actions to carry out, in that order.

    Raises:
        UnknownName: from set_enabled, for a host, table or redirect not
            configured.
        ValueError: from set_enabled, for a kind other than "host", "table"
            or "redirect".
    """

    def __init__(self, config: HealthConfig, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        self.started = False
        self.queue = DueQueue()
        self.inflight = InFlight(config.max_in_flight)
        self.overrides: dict[tuple[str, str], tuple[bool, bool]] = {}  # -> (enabled, config's disabled)
        self.demoted: dict[str, str] = {}        # counter raised -> why
        self.rst: dict[tuple[str, int], deque] = {}
        self.stale_results = 0
        self.overdue_runs = 0
        self.rst_bursts = 0
        self._install(config)

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[Action]:
        self.started = True
        for check in self.checks.values():
            self._schedule_first(check, now)
        return self._evaluate(now) + self._start_due(now)

    def poll(self, now: float) -> list[Action]:
        if not self.started:
            return self.start(now)
        out: list[Action] = []
        for run in self.inflight.overdue(now):
            self.overdue_runs += 1
            error = f"no result within {run.overdue_at - run.started:g} s (check runner overdue)"
            out += self._apply(run, CheckOutcome(False, None, error), now)
        return out + self._start_due(now)

    handle_timer = poll

    def check_done(self, check_id: int, outcome: CheckOutcome, now: float) -> list[Action]:
        run = self.inflight.finish(check_id)
        if run is None:
            self.stale_results += 1
            return []
        return self._apply(run, outcome, now) + self._start_due(now)

    def check_refused(self, check_id: int, now: float) -> list[Action]:
        run = self.inflight.finish(check_id)
        if run is None:
            self.stale_results += 1
            return []
        check = self.checks.get(run.target)
        if check is not None:
            self._reschedule_from(check, now, now)
        return self._start_due(now)

    def next_deadline(self) -> float | None:
        times = [self.inflight.next_overdue()]
        if not self.inflight.full():
            # While full, due checks wait for check_done, not for a time.
            times.append(self.queue.next_due())
        return min((t for t in times if t is not None), default=None)

    def rst_seen(self, address: str, port: int, now: float) -> list[Action]:
        burst = self.config.rst_burst
        members = self.by_endpoint.get((address, port))
        if members is None:
            try:
                address = ipaddress.ip_address(address).compressed
            except ValueError:
                return []
            members = self.by_endpoint.get((address, port))
        active = [m for m in members or () if self._active(m)]
        if not burst or not active:
            return []
        if any(m.health.suspect_since is not None for m in active):
            return []     # a burst is already being checked; a flood changes nothing more
        seen = self.rst.setdefault((address, port), deque())
        seen.append(now)
        horizon = now - self.config.rst_window_ms / 1000
        while seen and seen[0] <= horizon:
            seen.popleft()
        if len(seen) < burst:
            return []
        seen.clear()
        self.rst_bursts += 1
        for m in active:
            m.health.suspect_since = now
        when = now
        for check in {m.target: self.checks[m.target] for m in active}.values():
            if self.inflight.running(check.target):
                continue     # began before the burst: the suspect pace applies after it
            fast = min(self.tables[m.table].fast_interval_ms for m in active
                       if m.target == check.target) / 1000
            due = now if check.last_started is None else max(now, check.last_started + fast)
            self.queue.set_earlier(check.target, due)
            when = max(when, self.queue.due(check.target) or now)
        ep = endpoint(address, port)
        plan = "checking it now" if when <= now else f"checking it in {when - now:.1f} s"
        out: list[Action] = [Log("health_rst_burst", {"address": address, "port": port,
                                                      "resets": burst},
                                 f"host {ep}: {burst} resets within {self.config.rst_window_ms} ms, "
                                 f"{plan}", "warning")]
        return out + self._start_due(now)

    def set_enabled(self, kind: str, name: str, enabled: bool, now: float) -> list[Action]:
        item = self._item(kind, name)
        before = {key: self._active(m) for key, m in self.members.items()}
        was = self.enabled(kind, name)
        if enabled == (not item.disabled):
            self.overrides.pop((kind, name), None)
        else:
            self.overrides[(kind, name)] = (enabled, item.disabled)
        if was == enabled:
            return []
        word = "enabled" if enabled else "disabled"
        out: list[Action] = [Log(f"health_{kind}", {kind: name, "enabled": enabled},
                                 f"{kind} {name} {word} by operator")]
        touched: dict[CheckTarget, Check] = {}
        for key, m in self.members.items():
            now_active = self._active(m)
            if now_active == before[key]:
                continue
            touched[m.target] = self.checks[m.target]
            if now_active:
                m.health.reset(now)
        for check in touched.values():
            if self._wanted(check) and any(self._active(m) and m.health.status is Status.UNKNOWN
                                           for m in check.members):
                if not self.inflight.running(check.target):
                    self.queue.set_earlier(check.target, now)
            else:
                self._reschedule_from(check, now, check.last_started)
        return out + self._evaluate(now) + self._start_due(now)

    def reload(self, config: HealthConfig, now: float) -> list[Action]:
        old_members, old_checks = self.members, self.checks
        self._install(config)
        self.inflight.limit = config.max_in_flight
        for key in list(self.overrides):
            kind, name = key
            item = self._find(kind, name)
            if item is None or item.disabled != self.overrides[key][1]:
                del self.overrides[key]
        fresh: set[CheckTarget] = set()
        for key, m in self.members.items():
            old = old_members.get(key)
            if old is not None and (old.address, old.port) == (m.address, m.port):
                # The same service: keep its health, so a reload that only edits the
                # check (a new path, say) does not take working hosts out of service.
                m.health = old.health
                m.health.retune(self.tables[m.table].rise, self.tables[m.table].fall)
            if old is None or old.target != m.target:
                fresh.add(m.target)
        for target in old_checks.keys() - self.checks.keys():
            self.queue.cancel(target)
        out: list[Action] = []
        for run in self.inflight.runs():
            if run.target not in self.checks:
                self.inflight.finish(run.check_id)
                out.append(CancelCheck(run.check_id))
        self.rst = {k: v for k, v in self.rst.items() if k in self.by_endpoint}
        if not self.started:
            return out
        for target, check in self.checks.items():
            old = old_checks.get(target)
            if old is not None:
                check.last_started, check.last_warning = old.last_started, old.last_warning
            if self.inflight.running(target):
                continue
            if old is None or target in fresh or self.queue.due(target) is None:
                self._schedule_first(check, now)
            else:
                self._reschedule_from(check, now, None, keep_earlier=True)
        return out + self._evaluate(now) + self._start_due(now)

    # ------------------------------------------------------------------ queries

    def enabled(self, kind: str, name: str) -> bool:
        override = self.overrides.get((kind, name))
        if override is not None:
            return override[0]
        item = self._find(kind, name)
        return item is not None and not item.disabled

    def members_of(self, table: str) -> list[Member]:
        return self.table_members.get(table, [])

    def host_status(self, m: Member) -> str:
        """As `show summary` says it: disabled, or the health status."""
        if not self.enabled("host", m.host):
            return STATUS_DISABLED
        return m.health.status.value

    def table_status(self, name: str) -> str:
        if not self.enabled("table", name):
            return STATUS_DISABLED
        up = len(self._live(name))
        return f"active ({up} hosts up)" if up else "empty"

    def live_hosts(self, table: str) -> tuple[tuple[str, str, int, int], ...]:
        """(host, address, port, weight) of the table's hosts that new connections
        may go to now (up, host and table enabled), in table order: the list a
        redirect on the table forwards to, which the relay engine follows too."""
        if not self.enabled("table", table):
            return ()
        return tuple((m.host, m.address, m.port, m.weight) for m in self.table_members.get(table, ())
                     if m.health.status is Status.UP and self.enabled("host", m.host))

    def pace_ms(self, m: Member) -> int | None:
        """The interval this host asks for now; None while it is not checked."""
        if not self._active(m):
            return None
        t = self.tables[m.table]
        return {Pace.INTER: t.interval_ms, Pace.FAST: t.fast_interval_ms,
                Pace.DOWN: t.down_interval_ms}[m.health.pace()]

    # ------------------------------------------------------------------ internals

    def _install(self, config: HealthConfig) -> None:
        self.config = config
        self.hosts: dict[str, HealthHost] = {h.name: h for h in config.hosts}
        self.tables: dict[str, HealthTable] = {t.name: t for t in config.tables}
        self.members: dict[tuple[str, str], Member] = {}
        self.table_members: dict[str, list[Member]] = {}
        self.checks: dict[CheckTarget, Check] = {}
        self.by_endpoint: dict[tuple[str, int], list[Member]] = {}
        for table in config.tables:
            for name in table.hosts:
                host = self.hosts[name]
                target = table.target(host)
                m = Member(len(self.members), table.name, name, host.address, table.port,
                           host.weight, target, HostHealth(table.rise, table.fall))
                self.members[(table.name, name)] = m
                self.table_members.setdefault(table.name, []).append(m)
                self.checks.setdefault(target, Check(target, [])).members.append(m)
                self.by_endpoint.setdefault((host.address, table.port), []).append(m)
        old = getattr(self, "redirects", {})
        self.redirects: dict[str, RedirectState] = {}
        for i, r in enumerate(config.redirects):
            state = RedirectState(i, r)
            if r.name in old:
                prev = old[r.name]
                state.backends, state.using_backup = prev.backends, prev.using_backup
                state.status, state.reason = prev.status, prev.reason
            self.redirects[r.name] = state
        self._items = {"host": self.hosts, "table": self.tables,
                       "redirect": {r.name: r for r in config.redirects}}

    def _find(self, kind: str, name: str):
        items = self._items.get(kind)
        if items is None:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        return items.get(name)

    def _item(self, kind: str, name: str):
        item = self._find(kind, name)
        if item is None:
            known = ", ".join(self._items[kind]) or "none"
            raise UnknownName(f"no {kind} named \"{name}\" ({kind}s: {known})")
        return item

    def _active(self, m: Member) -> bool:
        return self.enabled("host", m.host) and self.enabled("table", m.table)

    def _wanted(self, check: Check) -> tuple[float, int] | None:
        """(interval in s, jitter %) of the fastest active host of the check; None: not checked."""
        best: tuple[int, int] | None = None
        for m in check.members:
            ms = self.pace_ms(m)
            if ms is not None and (best is None or ms < best[0]):
                best = (ms, self.tables[m.table].jitter_percent)
        return None if best is None else (best[0] / 1000, best[1])

    def _schedule_first(self, check: Check, now: float) -> None:
        if self.inflight.running(check.target):
            return     # scheduled when the run ends
        wanted = self._wanted(check)
        if wanted is None:
            self.queue.cancel(check.target)
        else:
            self.queue.set(check.target, now + first_delay(*wanted, self.rng))

    def _reschedule_from(self, check: Check, now: float, since: float | None,
                         keep_earlier: bool = False) -> None:
        """Next run one (jittered) interval after `since` (default now), never in the past;
        with keep_earlier an existing earlier time stands."""
        if self.inflight.running(check.target):
            return     # scheduled when the run ends
        wanted = self._wanted(check)
        if wanted is None:
            self.queue.cancel(check.target)
            return
        due = max(now, (now if since is None else since) + jittered(*wanted, self.rng))
        if keep_earlier:
            self.queue.set_earlier(check.target, due)
        else:
            self.queue.set(check.target, due)

    def _start_due(self, now: float) -> list[Action]:
        out: list[Action] = []
        while not self.inflight.full():
            target = self.queue.pop_due(now)
            if target is None:
                break
            check = self.checks[target]
            run = self.inflight.start(target, now, self._overdue_after(target))
            check.last_started = now
            out.append(StartCheck(run.check_id, target))
        return out

    def _overdue_after(self, target: CheckTarget) -> float:
        """How long a run may take before the core stops waiting for it.

        The runner bounds every check by its timeout, but a script may first
        wait for a place in the runner's script pool; at most max_in_flight
        runs exist, so it waits for fewer than that many scripts.
        """
        timeout = target.spec.timeout_s
        if target.spec.method == "script":
            timeout *= self.inflight.limit
        return timeout + OVERDUE_GRACE_S

    def _apply(self, run: Run, outcome: CheckOutcome, now: float) -> list[Action]:
        check = self.checks.get(run.target)
        if check is None:
            return []          # the check left the configuration while it ran
        out: list[Action] = []
        changed = False
        for m in check.members:
            if not self._active(m):
                continue
            m.health.last_warning = outcome.warning
            previous = m.health.status
            new = m.health.record(outcome, run.started, now)
            if new is not None:
                changed = True
                out.append(self._host_log(m, previous, new, outcome))
        if outcome.warning != check.last_warning:
            check.last_warning = outcome.warning
            if outcome.warning:
                out.append(Log("health_warning", {"address": run.target.address,
                                                  "port": run.target.port,
                                                  "method": run.target.spec.method},
                               f"check {run.target.spec.method} of "
                               f"{endpoint(run.target.address, run.target.port)}: {outcome.warning}",
                               "warning"))
        self._reschedule_from(check, now, now)
        if changed:
            out += self._evaluate(now)
        return out

    def _host_log(self, m: Member, previous: Status, status: Status, outcome: CheckOutcome) -> Log:
        if status is Status.DOWN:
            reason = outcome.error or "check failed"
        elif previous is Status.UNKNOWN:
            reason = "first check ok"
        elif m.health.rise == 1:
            reason = "check ok"
        else:
            reason = f"{m.health.rise} checks ok in a row"
        fields = {"table": m.table, "host": m.host, "address": m.address, "port": m.port,
                  "status": status.value, "reason": reason}
        if outcome.latency_s is not None:
            fields["latency_ms"] = round(outcome.latency_s * 1000, 1)
        level = "warning" if status is Status.DOWN else "info"
        return Log("health_host", fields, f"host {m.endpoint} {status.value}: {reason}", level)

    def _live(self, table: str) -> tuple[Backend, ...]:
        if not self.enabled("table", table):
            return ()
        return tuple((m.address, m.port, m.weight) for m in self.table_members.get(table, ())
                     if m.health.status is Status.UP and self.enabled("host", m.host))

    def _why_empty(self, table: str, label: str = "table") -> str:
        if not self.enabled("table", table):
            return f"{label} {table} is disabled"
        unknown = sum(1 for m in self.table_members[table]
                      if self._active(m) and m.health.status is Status.UNKNOWN)
        return f"no host up in {label} {table}" + (f" ({unknown} not checked yet)" if unknown else "")

    def _choose(self, r: HealthRedirect) -> tuple[tuple[Backend, ...], bool, str, str]:
        """(backends, using_backup, status, reason) of a redirect now."""
        if not self.enabled("redirect", r.name):
            return (), False, STATUS_DISABLED, "disabled"
        main = self._live(r.table)
        if main:
            total = len(self.table_members[r.table])
            return main, False, STATUS_ACTIVE, f"{len(main)} of {total} hosts up in table {r.table}"
        why = self._why_empty(r.table)
        if r.backup_table is not None:
            backup = self._live(r.backup_table)
            if backup:
                return backup, True, STATUS_BACKUP, \
                    f"{why}; {len(backup)} up in backup table {r.backup_table}"
            why += "; " + self._why_empty(r.backup_table, "backup table")
        return (), False, STATUS_DOWN, why

    def _evaluate(self, now: float) -> list[Action]:
        out: list[Action] = []
        dead: set[tuple[str, int]] | None = None
        for rs in self.redirects.values():
            backends, using_backup, status, reason = self._choose(rs.config)
            if (backends, using_backup) != (rs.backends, rs.using_backup):
                out.append(SetBackends(rs.config.name, backends, using_backup))
                if rs.config.delete_dead_states and rs.backends:
                    if dead is None:
                        dead = {(m.address, m.port) for m in self.members.values()
                                if self._active(m) and m.health.status is Status.DOWN}
                    for address, port, _ in rs.backends:
                        if (address, port) in dead and not any(b[:2] == (address, port) for b in backends):
                            out.append(DeleteStates(rs.config.name, address, port))
                rs.backends, rs.using_backup = backends, using_backup
            if status != rs.status:
                rs.status, rs.reason = status, reason
                level = "warning" if status == STATUS_DOWN else "info"
                out.append(Log("health_redirect", {"redirect": rs.config.name, "status": status,
                                                   "reason": reason},
                               f"redirect {rs.config.name} {status}: {reason}", level))
        return out + self._demotions()

    def _demotions(self) -> list[Action]:
        wanted: dict[str, str] = {}
        for rs in self.redirects.values():
            if rs.config.demote and rs.status == STATUS_DOWN:
                wanted.setdefault(rs.config.demote, f"redirect {rs.config.name} down: {rs.reason}")
        out: list[Action] = []
        for counter in sorted(wanted.keys() - self.demoted.keys()):
            out.append(Demote(counter, True, wanted[counter]))
        for counter in sorted(self.demoted.keys() - wanted.keys()):
            out.append(Demote(counter, False, f"no redirect demoting {counter} is down any more"))
        self.demoted = wanted
        return out
