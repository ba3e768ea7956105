"""Secret files and the configuration file against local users.

A key file another user can read gives away the cluster key; one another
user owns or can replace (its directory writable) lets that user choose the
key; a configuration file another user can change lets that user run hooks
as root.  load_config refuses the first kinds (the key is read at start);
preflight names unsafe directories and configuration files (`meshd --check`
fails on them, the daemon logs them at start).
"""

from __future__ import annotations

import os
import pwd
import stat
import threading
from pathlib import Path

import pytest

from meshd.config import ConfigError, load_config
from meshd.preflight import preflight

MINIMAL = """\
[node]
id = 1

[[cluster.keys]]
id = 1
secret_file = "k1.key"

[[group]]
id = 1
name = "lan"
interface = "lo"
addresses = ["192.0.2.1/24"]
"""


def write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o700)
    write(tmp_path / "meshd.toml", MINIMAL.encode(), 0o600)
    write(tmp_path / "k1.key", os.urandom(32), 0o600)
    return tmp_path


def problems(confdir: Path) -> list[str]:
    try:
        load_config(confdir / "meshd.toml")
    except ConfigError as e:
        return e.problems
    return []


def nobody() -> int:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user nobody on this machine")


def test_safe_files_have_no_problem(confdir):
    assert problems(confdir) == []
    config = load_config(confdir / "meshd.toml")
    assert [f for f in preflight(config) if "k1.key" in f.message or "meshd.toml" in f.message] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_secret_owned_by_another_user_is_refused(confdir):
    key = confdir / "k1.key"
    os.chown(key, nobody(), -1)
    assert problems(confdir) == [
        (f"{confdir / 'meshd.toml'}: cluster.keys[0].secret_file: {key.resolve()} is owned by "
        f"nobody (uid {nobody()}), not by root or the user meshd runs as: that user can read "
        "and replace the key; chown root it")]


@pytest.mark.parametrize("mode, what", [(0o620, "writable"), (0o602, "writable"), (0o610, "accessible")])
def test_secret_writable_by_others_is_refused_and_said_so(confdir, mode, what):
    key = confdir / "k1.key"
    os.chmod(key, mode)
    assert problems(confdir) == [
        (f"{confdir / 'meshd.toml'}: cluster.keys[0].secret_file: {key.resolve()} is {what} "
        f"by group or others (mode {mode:o}); chmod 600 it")]


def test_secret_that_is_a_fifo_is_refused_without_blocking(confdir):
    key = confdir / "k1.key"
    key.unlink()
    os.mkfifo(key, 0o600)
    found: list = []
    t = threading.Thread(target=lambda: found.append(problems(confdir)), daemon=True)
    t.start()
    t.join(5)
    if not found:
        # Unblock the reader (it waits for a writer) so the thread ends.
        fd = os.open(key, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("reading a FIFO as a secret file blocked the configuration load")
    assert found[0] == [(f"{confdir / 'meshd.toml'}: cluster.keys[0].secret_file: "
                        f"{key.resolve()} is not a regular file")]


def test_secret_in_a_directory_others_can_write_is_a_preflight_error(confdir):
    keys = confdir / "keys"
    keys.mkdir()
    write(keys / "k1.key", os.urandom(32), 0o600)
    (confdir / "meshd.toml").write_text(MINIMAL.replace('"k1.key"', '"keys/k1.key"'))
    os.chmod(keys, 0o757)   # no sticky bit: anyone can rename another file over the key
    findings = [f for f in preflight(load_config(confdir / "meshd.toml"))
                if f.key == "cluster.keys[0].secret_file"]
    assert [(f.level, f.message) for f in findings] == [
        ("error", (f"directory {keys.resolve()} is writable by others (mode 757), so others could "
                  f"replace {keys.resolve() / 'k1.key'}; chmod o-w {keys.resolve()}"))]
    assert str(findings[0]).startswith(f"{confdir / 'meshd.toml'}: cluster.keys[0].secret_file: ")


def test_configuration_file_others_can_change_is_a_preflight_error(confdir):
    config_file = confdir / "meshd.toml"
    os.chmod(config_file, 0o646)
    findings = [f for f in preflight(load_config(config_file)) if f.key == "file"]
    assert [(f.level, f.message) for f in findings] == [
        ("error", (f"{config_file} is writable by others (mode 646); chmod o-w it "
                  "(whoever can change it chooses the programs meshd runs as root)"))]
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o646   # preflight never changes it


def test_control_socket_directory_others_can_write_is_a_preflight_error(confdir):
    run = confdir / "run"
    run.mkdir()
    os.chmod(run, 0o757)
    (confdir / "meshd.toml").write_text(MINIMAL.replace("id = 1\n", f'id = 1\ncontrol_socket = "{run}/meshd.sock"\n', 1))
    findings = [f for f in preflight(load_config(confdir / "meshd.toml")) if f.key == "node.control_socket"]
    assert [(f.level, f.message) for f in findings] == [
        ("error", (f"{run} is writable by others (mode 757); chmod o-w it (the control socket's "
                   "directory: others could put their own socket in place of meshd's, and meshctl "
                   "would talk to it)"))]
    os.chmod(run, 0o1777)   # sticky, as /tmp: others cannot replace what they do not own
    assert [f for f in preflight(load_config(confdir / "meshd.toml")) if f.key == "node.control_socket"] == []
