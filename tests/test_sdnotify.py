"""meshd.sdnotify against a real AF_UNIX datagram socket named in NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from meshd.sdnotify import STATUS_MAX_BYTES, Notifier, monotonic_usec


class Manager:
    """The service manager's end: a datagram socket bound where NOTIFY_SOCKET points."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def receive(self) -> list[str]:
        return self.sock.recv(65536).decode().split("\n")

    def nothing_queued(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_manager(tmp_path):
    m = Manager(str(tmp_path / "notify.sock"))
    yield m, str(tmp_path / "notify.sock")
    m.close()


@pytest.fixture
def abstract_manager():
    name = f"meshd-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    m = Manager("\0" + name)
    yield m, "@" + name
    m.close()


@pytest.fixture
def clean_environ(monkeypatch):
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize("which", ["path_manager", "abstract_manager"])
def test_every_message_arrives_as_sd_notify_writes_it(which, request, clean_environ):
    manager, address = request.getfixturevalue(which)
    clean_environ.setenv("NOTIFY_SOCKET", address)
    n = Notifier.from_environment()
    assert n.enabled

    assert n.ready("lan MASTER")
    assert manager.receive() == ["READY=1", "STATUS=lan MASTER"]
    assert n.ready()
    assert manager.receive() == ["READY=1"]
    assert n.status("lan BACKUP,\nsrv MASTER\r\n")
    assert manager.receive() == ["STATUS=lan BACKUP, srv MASTER"]
    before = monotonic_usec()
    assert n.reloading()
    reloading, stamp = manager.receive()
    assert reloading == "RELOADING=1"
    assert stamp.startswith("MONOTONIC_USEC=")
    assert before <= int(stamp.split("=")[1]) <= monotonic_usec()
    assert n.stopping()
    assert manager.receive() == ["STOPPING=1"]
    assert (n.sent, n.failures, n.last_error) == (5, 0, None)
    n.close()


def test_status_is_one_line_cut_to_fit_one_notification(path_manager, clean_environ):
    manager, address = path_manager
    n = Notifier(address)
    n.status("é" * STATUS_MAX_BYTES)          # 2 bytes each: cut in the middle of the text
    (line,) = manager.receive()
    value = line.removeprefix("STATUS=")
    assert value == "é" * (STATUS_MAX_BYTES // 2)


def test_watchdog_for_this_process(path_manager, clean_environ):
    manager, address = path_manager
    clean_environ.setenv("NOTIFY_SOCKET", address)
    clean_environ.setenv("WATCHDOG_USEC", "10000000")
    clean_environ.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_environment()
    assert n.watchdog_interval == 5.0
    assert n.watchdog()
    assert manager.receive() == ["WATCHDOG=1"]


def test_watchdog_without_watchdog_pid_is_ours(path_manager, clean_environ):
    manager, address = path_manager
    clean_environ.setenv("NOTIFY_SOCKET", address)
    clean_environ.setenv("WATCHDOG_USEC", "3000000")
    n = Notifier.from_environment()
    assert n.watchdog_interval == 1.5
    assert n.watchdog()
    assert manager.receive() == ["WATCHDOG=1"]


def test_watchdog_meant_for_another_process_is_ignored(path_manager, clean_environ):
    manager, address = path_manager
    clean_environ.setenv("NOTIFY_SOCKET", address)
    clean_environ.setenv("WATCHDOG_USEC", "10000000")
    clean_environ.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    n = Notifier.from_environment()
    assert n.watchdog_interval is None
    assert not n.watchdog()
    assert n.ready()                           # the socket itself is still ours
    assert manager.receive() == ["READY=1"]    # and no WATCHDOG=1 came before it
    assert manager.nothing_queued()
    assert n.last_error is None


@pytest.mark.parametrize("usec, pid, problem", [
    ("soon", None, "WATCHDOG_USEC='soon'"),
    ("0", None, "WATCHDOG_USEC='0'"),
    ("1000000", "init", "WATCHDOG_PID='init'"),
])
def test_unusable_watchdog_variables_turn_the_watchdog_off_and_say_why(path_manager, clean_environ,
                                                                       usec, pid, problem):
    _, address = path_manager
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = pid
    n = Notifier.from_environment(env)
    assert n.watchdog_interval is None
    assert problem in n.last_error
    assert env == {}


def test_environment_is_scrubbed_so_children_cannot_speak_for_meshd(path_manager, clean_environ):
    _, address = path_manager
    clean_environ.setenv("NOTIFY_SOCKET", address)
    clean_environ.setenv("WATCHDOG_USEC", "10000000")
    clean_environ.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_environment()
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert key not in os.environ
    # What a hook or track script would inherit (unsetenv reached the C level).
    probe = ("import os; print(sorted(k for k in os.environ"
             " if k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID')))")
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "[]"
    assert n.enabled and n.watchdog_interval == 5.0     # read before being removed


def test_no_notify_socket_every_method_is_a_no_op(clean_environ):
    n = Notifier.from_environment()
    assert not n.enabled
    assert n.watchdog_interval is None
    assert [n.ready("x"), n.status("x"), n.watchdog(), n.reloading(), n.stopping()] == [False] * 5
    assert (n.sent, n.failures, n.last_error, n._sock) == (0, 0, None, None)


def test_watchdog_usec_without_notify_socket_has_no_interval(clean_environ):
    n = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert n.watchdog_interval is None


@pytest.mark.parametrize("address", ["relative/notify.sock", "vsock:2:1234", "@"])
def test_unusable_notify_socket_is_off_and_says_why(address):
    n = Notifier(address)
    assert not n.enabled
    assert not n.ready()
    assert f"NOTIFY_SOCKET={address!r}" in n.last_error
    assert n.failures == 0


def test_missing_socket_counts_a_failure_and_never_raises(tmp_path):
    gone = str(tmp_path / "no-such.sock")
    n = Notifier(gone)
    assert not n.ready("x")
    assert not n.stopping()
    assert n.failures == 2
    assert n.last_error == f"NOTIFY_SOCKET {gone}: cannot send STOPPING: No such file or directory"


def test_a_manager_that_does_not_read_never_blocks_the_sender(path_manager):
    manager, address = path_manager
    n = Notifier(address)
    start = time.monotonic()
    # An AF_UNIX datagram queue holds net.unix.max_dgram_qlen (default 10)
    # unread datagrams; a blocking sender would wait at the next one forever.
    results = [n.status(f"update {i}") for i in range(200)]
    assert time.monotonic() - start < 1.0
    assert not all(results)
    assert n.failures == results.count(False) > 0
    assert "Resource temporarily unavailable" in n.last_error
    assert manager.receive() == ["STATUS=update 0"]


def test_socket_is_close_on_exec(path_manager):
    _, address = path_manager
    n = Notifier(address)
    n.ready()
    assert n._sock is not None and not n._sock.get_inheritable()
    assert n._sock.getblocking() is False
    n.close()
    assert n._sock is None
