"""`meshd --check` and the event log format."""

import io
import json
import subprocess
import sys

import pytest

from meshd import logsinks
from meshd.cli import main
from meshd.log import EventLog, RateLimiter


def write_config(tmp_path, extra=""):
    key = tmp_path / "k.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    path = tmp_path / "meshd.toml"
    path.write_text(f"""
[node]
id = 1
name = "fw1"
state_dir = "{tmp_path}/state"
[cluster]
keys = [{{ id = 1, secret_file = "k.key" }}]
[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24"]
{extra}
""")
    return path


def test_check_valid_config_exits_0_and_touches_nothing(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["--config", str(path), "--check"]) == 0
    assert "OK: node fw1 (id 1), groups: lan (id 1, eth0)" in capsys.readouterr().out
    assert not (tmp_path / "state").exists()


def test_check_invalid_config_exits_2_listing_every_problem(tmp_path, capsys):
    path = write_config(tmp_path, "advbase_ms = 5\nadvskew = 300\nbogus = 1\n")
    assert main(["--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: group[0].advbase_ms: expected an integer from 10 to 60000, found 5" in err
    assert "group[0].advskew: expected an integer from 0 to 254, found 300" in err
    assert "group[0].bogus: unknown key" in err
    assert "3 problem(s)" in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.toml"), "--check"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_console_entry_point_runs_as_module(tmp_path):
    path = write_config(tmp_path)
    r = subprocess.run([sys.executable, "-m", "meshd", "--config", str(path), "--check"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_text_log_quotes_values_that_need_it():
    buf = io.StringIO()
    EventLog(buf)("state", group="lan", old="BACKUP", new="MASTER", reason='no advert for 300 ms', n=None)
    line = buf.getvalue().strip()
    assert ' event=state group=lan old=BACKUP new=MASTER reason="no advert for 300 ms"' in line
    assert " n=" not in line


def test_json_log_is_one_object_per_line():
    buf = io.StringIO()
    log = EventLog(buf, fmt="json")
    log("state", group="lan", errors=["a", "b"])
    log("debugging", level="debug")  # below threshold: dropped
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["event"] == "state" and obj["errors"] == ["a", "b"] and obj["level"] == "info"


def test_rate_limiter_lets_one_line_through_per_period_and_counts_the_rest():
    rl = RateLimiter(period=10)
    assert rl.allow("k", 0.0) == (True, 0)
    assert rl.allow("k", 1.0) == (False, 0)
    assert rl.allow("k", 2.0) == (False, 0)
    assert rl.allow("other", 2.0) == (True, 0)
    assert rl.allow("k", 10.5) == (True, 2)


# ------------------------------------------------- --check and preflight


def notify_script(script_dir, mode):
    d = script_dir / "hooks"            # script_user ("nobody") can enter it, unlike tmp_path
    d.mkdir(mode=0o755, exist_ok=True)
    d.chmod(0o755)
    hook = d / "notify.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(mode)
    return hook


def test_check_reports_what_a_start_would_trip_on_and_exits_2(tmp_path, script_dir, capsys):
    hook = notify_script(script_dir, 0o777)
    path = write_config(tmp_path, f'notify = ["{hook}"]\n')
    assert main(["--config", str(path), "--check"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: group[0].notify[0]: {hook} is writable by group and others (mode 777); " \
           "chmod go-w it\n" in err
    assert err.endswith(f"meshd: 1 problem(s) a start of {path} would trip on\n")


def test_check_with_warnings_only_exits_0_and_says_ok(tmp_path, capsys):
    path = write_config(tmp_path).read_text().replace('interface = "eth0"', 'interface = "nosuch0"')
    (tmp_path / "meshd.toml").write_text(path)
    assert main(["--config", str(tmp_path / "meshd.toml"), "--check"]) == 0
    out, err = capsys.readouterr()
    assert err == (f'warning: {tmp_path}/meshd.toml: group[0].interface: no interface "nosuch0" '
                   "on this machine; the group would stay in FAULT until it appears\n")
    assert "OK: node fw1 (id 1), groups: lan (id 1, nosuch0)" in out


def test_check_names_a_script_user_that_does_not_exist(tmp_path, capsys):
    path = write_config(tmp_path).read_text().replace('name = "fw1"\n', 'name = "fw1"\nscript_user = "nosuchuser"\n')
    (tmp_path / "meshd.toml").write_text(path)
    assert main(["--config", str(tmp_path / "meshd.toml"), "--check"]) == 2
    _, err = capsys.readouterr()
    assert f'{tmp_path}/meshd.toml: node.script_user: no user "nosuchuser" on this machine' in err


def test_start_logs_preflight_findings_at_their_level_and_goes_on(tmp_path, script_dir):
    from meshd.cli import _load
    hook = notify_script(script_dir, 0o644)
    text = write_config(tmp_path, f'notify = ["{hook}"]\n').read_text()
    (tmp_path / "meshd.toml").write_text(text.replace('interface = "eth0"', 'interface = "nosuch0"'))
    buf = io.StringIO()
    config = _load(str(tmp_path / "meshd.toml"), EventLog(buf, fmt="json"))
    assert config is not None and config.groups[0].notify == (str(hook),)
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(e["event"], e["level"], e["key"]) for e in events] == [
        ("preflight", "error", "group[0].notify[0]"), ("preflight", "warning", "group[0].interface")]
    assert events[0]["message"] == f"{hook} is not executable (mode 644); chmod +x it"
    assert events[0]["config"] == str(tmp_path / "meshd.toml")


# ---------------------------------------------------------- --log-target


def test_log_target_is_checked_by_the_parser(tmp_path, capsys):
    path = write_config(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["--config", str(path), "--log-target", "journal"])
    assert e.value.code == 2
    assert "--log-target: expected stderr, syslog or file:PATH, found 'journal'" in capsys.readouterr().err


def test_absent_syslog_socket_is_a_clear_start_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logsinks, "DEV_LOG", str(tmp_path / "dev-log"))
    path = write_config(tmp_path)
    assert main(["--config", str(path), "--log-target", "syslog"]) == 1
    assert capsys.readouterr().err == (
        f"meshd: --log-target syslog: syslog: cannot connect to {tmp_path}/dev-log: No such file or "
        "directory (is a syslog daemon or journald running?); not starting\n")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_invalid_configuration_at_start_goes_to_the_log_target(tmp_path, capsys, fmt):
    path = write_config(tmp_path, "advbase_ms = 5\n")
    logfile = tmp_path / "meshd.log"
    assert main(["--config", str(path), "--log-target", f"file:{logfile}", "--log-format", fmt]) == 2
    assert capsys.readouterr().err == ""
    lines = logfile.read_text().splitlines()
    if fmt == "json":
        events = [json.loads(line) for line in lines]
        assert [(e["event"], e["level"]) for e in events] == [("config_invalid", "error"),
                                                             ("start_failed", "error")]
        assert events[0]["problem"].endswith("group[0].advbase_ms: expected an integer from 10 to 60000, found 5")
        assert events[1]["error"] == f"1 problem(s) in {path}; not starting"
    else:
        assert "level=error event=config_invalid problem=" in lines[0]
        assert "level=error event=start_failed" in lines[1]


def test_a_crash_is_one_error_event_with_its_traceback(tmp_path, capsys, monkeypatch):
    import meshd.daemon

    class CrashingDaemon:
        def __init__(self, config, log):
            pass

        async def run(self):
            raise RuntimeError("invariant broken")
    monkeypatch.setattr(meshd.daemon, "Daemon", CrashingDaemon)
    monkeypatch.setattr(sys, "setswitchinterval", lambda s: None)   # leave pytest's alone
    path = write_config(tmp_path)
    logfile = tmp_path / "meshd.log"
    assert main(["--config", str(path), "--log-target", f"file:{logfile}", "--log-format", "json"]) == 1
    assert capsys.readouterr().err == ""
    crash = json.loads(logfile.read_text().splitlines()[-1])
    assert (crash["event"], crash["level"], crash["error"]) == \
        ("crashed", "error", "RuntimeError: invariant broken")
    assert "Traceback" in crash["traceback"] and "in run" in crash["traceback"]


def test_library_records_reach_the_log_target_while_running(tmp_path, monkeypatch):
    """cli.main installs the bridge for as long as the daemon runs, and removes it after."""
    import logging

    import meshd.daemon

    class LoggingDaemon:
        def __init__(self, config, log):
            pass

        async def run(self):
            logging.getLogger("pyroute2.iproute").warning("netlink socket busy")
    monkeypatch.setattr(meshd.daemon, "Daemon", LoggingDaemon)
    monkeypatch.setattr(sys, "setswitchinterval", lambda s: None)
    path = write_config(tmp_path)
    logfile = tmp_path / "meshd.log"
    handlers = list(logging.getLogger().handlers)
    assert main(["--config", str(path), "--log-target", f"file:{logfile}"]) == 0
    assert logging.getLogger().handlers == handlers
    assert ("level=warning event=library logger=pyroute2.iproute "
            'message="netlink socket busy"') in logfile.read_text()
