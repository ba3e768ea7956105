"""`meshd --check` and the event log format."""

import io
import json
import subprocess
import sys

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
                       capture_output=True, text=True)
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
