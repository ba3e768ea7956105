"""meshd.lifecycle: the signal table, the status line, readiness and the dumps."""

import json
import os
import signal

from meshd.lifecycle import (DUMP_SIGNALS, HANDLED_SIGNALS, IGNORED_SIGNALS, READY_WAIT_LIMIT,
                             STOP_SIGNALS, Readiness, signal_name, status_line, write_dump)

# Signals whose default action ends the process (signal(7)).
TERMINATING = {signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
               signal.SIGUSR2, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO,
               signal.SIGPWR, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGSTKFLT,
               *range(signal.SIGRTMIN, signal.SIGRTMAX + 1)}
# Left to their default, and documented: not catchable, or faults and abort().
UNCAUGHT = {signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL,
            signal.SIGFPE, signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP}


def test_every_catchable_terminating_signal_is_handled():
    assert TERMINATING <= set(HANDLED_SIGNALS)
    assert not UNCAUGHT & set(HANDLED_SIGNALS)
    assert set(DUMP_SIGNALS) == {signal.SIGUSR1, signal.SIGUSR2}
    assert not set(DUMP_SIGNALS) & set(STOP_SIGNALS)
    assert signal.SIGHUP not in STOP_SIGNALS
    assert set(IGNORED_SIGNALS) == {signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


def test_signal_names():
    assert signal_name(signal.SIGALRM) == "SIGALRM"
    assert signal_name(signal.SIGRTMIN + 3) == "SIGRTMIN+3"


def test_status_line():
    groups = [{"name": "lan", "state": "MASTER", "demotion": 0},
              {"name": "srv", "state": "BACKUP", "demotion": 200}]
    assert status_line(groups, None) == "lan MASTER, srv BACKUP (demoted 200)"
    assert status_line(groups, False) == "lan MASTER, srv BACKUP (demoted 200); state mesh NOT in sync"
    assert status_line([], True) == "no groups; state mesh in sync"


def test_readiness_waits_for_groups_and_the_state_mesh():
    r = Readiness(with_sync=True)
    assert not r.check(0.0, ["BACKUP"])              # groups not started yet
    r.groups_started(10.0)
    assert not r.check(10.0, ["INIT", "BACKUP"])
    assert not r.check(11.0, ["BACKUP"])             # no verdict from the state mesh yet
    r.sync_verdict(False)
    assert not r.check(12.0, ["BACKUP"])
    r.sync_verdict(True)
    assert r.check(12.0, ["MASTER"])
    assert not r.check(13.0, ["MASTER"])             # once only


def test_readiness_without_verdict_after_the_limit():
    r = Readiness(with_sync=True)
    r.groups_started(0.0)
    assert not r.check(READY_WAIT_LIMIT - 0.1, ["BACKUP"])
    assert r.check(READY_WAIT_LIMIT, ["BACKUP"])
    alone = Readiness(with_sync=False)
    alone.groups_started(0.0)
    assert alone.check(0.0, ["BACKUP", "FAULT"])


def test_write_dump_is_atomic_json(tmp_path):
    path = write_dump(str(tmp_path), "meshd.state.json", {"a": 1, "b": {"c": [1, 2]}})
    assert json.load(open(path)) == {"a": 1, "b": {"c": [1, 2]}}
    assert os.listdir(tmp_path) == ["meshd.state.json"]      # no temporary file left
    assert os.stat(path).st_mode & 0o777 == 0o640
