"""meshctl against a real serve_control running in a background thread."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading

import pytest
import trio

from meshd.commands import ControlError, require
from meshd.config import ConfigError
from meshd.control import meshctl
from meshd.control.meshctl import (
    ClientError,
    ConnectError,
    main,
    request,
    request_stream,
)
from meshd.control.server import serve_control

STATUS = {
    "node_id": 2, "epoch": 7,
    "groups": [
        {"name": "lan", "id": 1, "interface": "eth1", "addresses": ["192.0.2.1/24"],
         "state": "MASTER", "advbase_ms": 100, "advskew": 0, "demotion": 20, "preempt": True,
         "master": 2, "last_change_ago_s": 12.345,
         "last_reason": "no advert for 300 ms (master down)", "transitions": 3, "faults": [],
         "adverts": {"sent": 120, "received": 118, "rejected": {"bad ttl": 3}},
         "peers": {"1": {"demotion": 0, "advskew": 0, "last_seen_ago_s": 12.4}}},
        {"name": "wan", "id": 2, "interface": "eth0", "addresses": ["198.51.100.1/24"],
         "state": "FAULT", "advbase_ms": 1000, "advskew": 10, "demotion": 100, "preempt": True,
         "master": None, "last_change_ago_s": None, "last_reason": "startup",
         "transitions": 0, "faults": ["interface down"],
         "adverts": {"sent": 0, "received": 0, "rejected": {}}, "peers": {}},
    ],
    "demotions": {"all": 0, "lan": 20},
    "rejected": {"bad ttl": 3, "unknown group": 5},
}


class FakeDaemon:
    """serve_control in a thread with a canned handler; records requests."""

    def __init__(self, path):
        self.path = path
        self.requests = []
        self.counters = {"lan": 0}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def handler(self, request):
        self.requests.append(request)
        cmd = request["cmd"]
        if cmd == "status":
            return STATUS
        if cmd == "demote":
            name, by = require(request, "name", str), require(request, "by", int)
            if name not in self.counters:
                raise ControlError(f'demote: no demotion counter "{name}"')
            self.counters[name] += by
            return {"name": name, "value": self.counters[name]}
        if cmd == "promote":
            name = require(request, "name", str)
            self.counters[name] = 0
            return {"name": name, "value": 0}
        if cmd in ("enable", "disable"):
            group = require(request, "group", str)
            return {"group": group, "state": "BACKUP" if cmd == "enable" else "DISABLED"}
        if cmd in ("host", "table", "redirect"):
            return {"kind": cmd, "name": request["name"], "enabled": request["action"] == "enable"}
        if cmd == "show":
            rows = [{"id": 0, "type": "redirect", "name": "www", "availability": None, "status": "active"},
                    {"id": 0, "type": "host", "name": "web1", "availability": 99.5, "status": "up"}]
            return {"what": request.get("what"), "rows": rows}
        if cmd == "hang":
            await trio.sleep_forever()
        if cmd == "dump":
            async def items():
                for i in range(3):
                    yield {"flow": i}
            return items()
        raise ControlError(f"unknown command {cmd!r}")

    async def _main(self):
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            await nursery.start(lambda task_status: serve_control(
                self.path, self.handler, log=lambda *a, **k: None, task_status=task_status))
            self._ready.set()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)


@pytest.fixture
def tmpdir_short():
    d = tempfile.mkdtemp(prefix="mctl-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(tmpdir_short):
    with FakeDaemon(os.path.join(tmpdir_short, "meshd.sock")) as d:
        yield d


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_table(daemon, capsys):
    code, out, err = run(capsys, "--socket", daemon.path, "status")
    assert code == 0, err
    assert daemon.requests == [{"cmd": "status"}]
    lines = out.splitlines()
    assert lines[0] == "node 2, epoch 7"
    header = lines[1]
    for col in ("GROUP", "STATE", "SKEW/DEMOTE", "MASTER", "LAST CHANGE", "ADVERTS"):
        assert col in header
    assert header.index("GROUP") < header.index("STATE") < header.index("SKEW/DEMOTE") \
        < header.index("MASTER") < header.index("LAST CHANGE") < header.index("ADVERTS")
    lan = next(line for line in lines if line.startswith("lan "))
    for text in ("MASTER", "0/20", " 2 (self) ", "12.3s ago: no advert for 300 ms (master down)",
                 "120/118/3"):
        assert text in lan
    wan = next(line for line in lines if line.startswith("wan "))
    for text in ("FAULT (interface down)", "10/100", " - ", "never: startup", "0/0/0"):
        assert text in wan
    assert "  bad ttl: 3 (lan 3)" in lines
    assert "  unknown group: 5" in lines
    assert "demotion counters: all=0, lan=20" in lines


def test_status_header_with_name_and_version():
    text = meshctl.format_status({**STATUS, "node": "fw2", "version": "0.1.0"})
    assert text.splitlines()[0] == "node fw2 (id 2), epoch 7, meshd 0.1.0"


def test_status_shows_the_check_engine_and_the_flood_guard():
    up = meshctl.format_status({**STATUS, "check_engine": {"up": True, "pid": 4242, "uid": 65534,
                                                           "since_s": 75.0, "starts": 2,
                                                           "checks_in_flight": 3}})
    assert "check engine: up for 1m15s, pid 4242, uid 65534, 3 checks in flight, started 2 times" in up
    down = meshctl.format_status({**STATUS, "check_engine": {"up": False, "since_s": 0.4,
                                                             "down_reason": "killed by SIGKILL (ended)"},
                                  "flood_guard": {"engaged": True, "engaged_s": 3.0, "rejects_per_s": 48000,
                                                  "admitted": ["192.0.2.2"], "engagements": 1}})
    assert "check engine: DOWN for 0.4s (killed by SIGKILL (ended)); the node is demoted" in down
    assert ("flood guard: ENGAGED for 3.0s, about 48000 rejected adverts/s; admitted: 192.0.2.2 "
            "and a sample of the rest") in down
    released = meshctl.format_status({**STATUS, "flood_guard": {"engaged": False, "engagements": 2}})
    assert "flood guard: released (engaged 2 times since start)" in released
    assert "check engine" not in meshctl.format_status(STATUS)


def test_status_shows_the_state_mesh_its_bulks_and_the_peers_out_of_sync():
    """The answer as the daemon gives it (SyncCore.progress), through JSON: peer ids as strings."""
    waiting = {"attempt": 2, "attempts": 3, "begun": True, "buckets_done": 120, "buckets": 256,
               "entries_received": 95000, "entries_announced": 200000, "elapsed_s": 3.25,
               "deadline_in_s": 14.75}
    text = meshctl.format_status({**STATUS, "state_mesh": json.loads(json.dumps({
        "in_sync": False, "reason": "startup: waiting for bulk resync from peers 2, 3",
        "waiting": {3: {**waiting, "begun": False, "entries_received": 0, "entries_announced": None,
                        "attempt": 1, "deadline_in_s": None},
                    2: waiting},
        "out_of_sync": {}}))})
    lines = text.splitlines()
    assert ("state mesh: NOT in sync (startup: waiting for bulk resync from peers 2, 3); every group "
            "is demoted until it is") in lines
    i = lines.index("  bulk from peer 2: attempt 2 of 3, 120/256 buckets, 95000 of 200000 entries, "
                    "3.2s so far, deadline in 14.8s")
    assert lines[i + 1] == ("  bulk from peer 3: attempt 1 of 3, not begun, 0 entries, 3.2s so far, "
                            "deadline held (peer absent)")
    done = meshctl.format_status({**STATUS, "state_mesh": {
        "in_sync": True, "reason": "bulk resync complete; out of sync (...): peers 2", "waiting": {},
        "out_of_sync": {"2": "its bulk resync did not complete in 3 attempts"}}})
    assert "state mesh: in sync (bulk resync complete; out of sync (...): peers 2)" in done
    assert ("  peer 2 OUT OF SYNC: its bulk resync did not complete in 3 attempts; its copy here may "
            "lack flows until a bulk completes (meshctl resync)") in done
    assert "state mesh" not in meshctl.format_status(STATUS)


def test_status_json(daemon, capsys):
    code, out, _err = run(capsys, "--socket", daemon.path, "status", "--json")
    assert code == 0
    assert json.loads(out) == {"ok": True, **STATUS}
    code, out2, _ = run(capsys, "--json", "--socket", daemon.path, "status")
    assert code == 0 and out2 == out


def test_demote_promote_enable_disable(daemon, capsys):
    p = daemon.path
    assert run(capsys, "--socket", p, "demote", "lan", "20")[:2] == \
        (0, "demotion counter lan is now 20\n")
    assert run(capsys, "demote", "lan", "-5", "--socket", p)[:2] == \
        (0, "demotion counter lan is now 15\n")
    assert run(capsys, "--socket", p, "promote", "lan")[:2] == (0, "demotion counter lan is now 0\n")
    assert run(capsys, "--socket", p, "disable", "lan")[:2] == (0, "group lan is now DISABLED\n")
    assert run(capsys, "--socket", p, "enable", "lan")[:2] == (0, "group lan is now BACKUP\n")
    assert daemon.requests == [
        {"cmd": "demote", "name": "lan", "by": 20}, {"cmd": "demote", "name": "lan", "by": -5},
        {"cmd": "promote", "name": "lan"}, {"cmd": "disable", "group": "lan"},
        {"cmd": "enable", "group": "lan"}]


def test_error_answer_exits_1(daemon, capsys):
    code, out, err = run(capsys, "--socket", daemon.path, "demote", "nope", "3")
    assert code == 1 and out == ""
    assert err == 'meshctl: demote: demote: no demotion counter "nope"\n'
    code, out, err = run(capsys, "--socket", daemon.path, "--json", "demote", "nope", "3")
    assert code == 1
    assert json.loads(out) == {"ok": False, "error": 'demote: no demotion counter "nope"'}


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["demote", "lan"], ["demote", "lan", "x"],
                                  ["enable"], ["status", "--timeout", "soon"]])
def test_usage_errors_exit_2(daemon, capsys, argv):
    code, _out, err = run(capsys, "--socket", daemon.path, *argv)
    assert code == 2
    assert "usage: meshctl" in err
    assert daemon.requests == []


def test_cannot_connect_exits_3(tmpdir_short, capsys):
    path = os.path.join(tmpdir_short, "missing.sock")
    code, _out, err = run(capsys, "--socket", path, "status")
    assert code == 3
    assert err == (f"meshctl: cannot connect to {path}: No such file or directory "
                   "(is meshd running?)\n")


def test_timeout_exits_3(daemon, capsys, monkeypatch):
    # No CLI command hangs, so send one through the client the CLI uses.
    with pytest.raises(ClientError, match="no answer from .* within 0.3 s"):
        request(daemon.path, {"cmd": "hang"}, timeout=0.3)
    real = meshctl.request_stream
    monkeypatch.setattr(meshctl, "request_stream",
                        lambda path, obj, timeout: real(path, {"cmd": "hang"}, timeout))
    code, _out, err = run(capsys, "--socket", daemon.path, "--timeout", "0.3", "status")
    assert code == 3 and "no answer" in err


def test_socket_from_config(daemon, tmpdir_short, capsys):
    cfg = os.path.join(tmpdir_short, "meshd.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[node]
id = 2
control_socket = "{daemon.path}"

[cluster]
keys = [{{ id = 1, secret_file = "does-not-exist.key" }}]

[[group]]
id = 1
name = "lan"
interface = "eth1"
addresses = ["192.0.2.1/24"]
""")
    code, out, err = run(capsys, "--config", cfg, "status", "--json")
    assert code == 0, err
    assert json.loads(out)["node_id"] == 2
    # --socket wins over --config.
    code, out, err = run(capsys, "--config", cfg, "--socket", daemon.path + ".x", "status")
    assert code == 3
    # Another part of the file does not validate: meshctl still finds the socket.
    with open(cfg, "w") as f:
        f.write(f'[node]\nid = 0\ncontrol_socket = "{daemon.path}"\n[[group]]\nadvbase_ms = "fast"\n')
    code, out, err = run(capsys, "--config", cfg, "status", "--json")
    assert code == 0, err
    # The socket's own keys are still checked, as meshd checks them.
    with open(cfg, "w") as f:
        f.write('[node]\ncontrol_socket = "meshd.sock"\n')
    code, out, err = run(capsys, "--config", cfg, "status")
    assert (code, out) == (2, "")
    assert err == f'meshctl: {cfg}: node.control_socket: expected an absolute path, found "meshd.sock"\n'


@pytest.mark.parametrize("text, where, problem", [
    ("", None, None),
    ('[node]\nid = 1\n', None, None),
    ('[node]\nrun_dir = "/run/fw"\n', "/run/fw/meshd.sock", None),
    ('[node]\nrun_dir = "/run/fw"\ncontrol_socket = "/run/x.sock"\n', "/run/x.sock", None),
    ('node = 3\n', None, "node: expected a table, found 3"),
    ('[node]\ncontrol_socket = 7\n', None, "node.control_socket: expected a non-empty string, found 7"),
    ('[node]\nrun_dir = "run"\n', None, 'node.run_dir: expected an absolute path, found "run"'),
    ('[node\n', None, "TOML syntax: "),
])
def test_socket_from_config_reads_only_the_node_paths(tmp_path, text, where, problem):
    cfg = tmp_path / "meshd.toml"
    cfg.write_text(text)
    if problem is None:
        assert meshctl.socket_from_config(str(cfg)) == (where or "/run/meshd/meshd.sock")
        return
    with pytest.raises(ConfigError) as e:
        meshctl.socket_from_config(str(cfg))
    assert e.value.problems[0].startswith(f"{cfg}: {problem}")


def test_unreadable_or_binary_config_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert run(capsys, "--config", str(missing), "status") == \
        (2, "", f"meshctl: {missing}: cannot read: No such file or directory\n")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[node]")
    code, _out, err = run(capsys, "--config", str(binary), "status")
    assert code == 2 and err.startswith(f"meshctl: {binary}: not UTF-8 text")


def test_version(capsys):
    from meshd import __version__
    with pytest.raises(SystemExit) as e:
        meshctl._parser().parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"meshctl {__version__}\n"
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"meshctl {__version__}\n")


def test_default_socket_path():
    ns = meshctl._parser().parse_args(["status"])
    assert meshctl._socket_path(ns) == "/run/meshd/meshd.sock"


def test_client_api(daemon):
    assert request(daemon.path, {"cmd": "status"})["node_id"] == 2
    assert request(daemon.path, {"cmd": "bogus"}) == \
        {"ok": False, "error": "unknown command 'bogus'"}
    assert list(request_stream(daemon.path, {"cmd": "dump"})) == [
        {"ok": True, "more": True, "flow": 0}, {"ok": True, "more": True, "flow": 1},
        {"ok": True, "more": True, "flow": 2}, {"ok": True, "more": False}]
    assert next(iter(request_stream(daemon.path, {"cmd": "status"})))["epoch"] == 7
    with pytest.raises(ClientError, match="streaming answer"):
        request(daemon.path, {"cmd": "dump"})
    with pytest.raises(ConnectError):
        request(daemon.path + ".missing", {"cmd": "status"})


def test_streaming_command_human_and_json(daemon, capsys, monkeypatch):
    # Future dump commands: the CLI prints each item and stops at more=false.
    real = meshctl.request_stream
    monkeypatch.setattr(meshctl, "request_stream",
                        lambda path, obj, timeout: real(path, {"cmd": "dump"}, timeout))
    code, out, _err = run(capsys, "--socket", daemon.path, "--json", "status")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()][-1] == {"ok": True, "more": False}
    assert len(out.splitlines()) == 4


def test_health_commands(daemon, capsys):
    p = daemon.path
    assert run(capsys, "--socket", p, "host", "disable", "web3")[:2] == (0, "host web3 is now disabled\n")
    assert run(capsys, "--socket", p, "redirect", "enable", "www")[:2] == (0, "redirect www is now enabled\n")
    code, out, _ = run(capsys, "--socket", p, "show", "summary")
    assert code == 0
    assert out.splitlines()[0].split() == ["Id", "Type", "Name", "Avlblty", "Status"]
    assert out.splitlines()[2].split() == ["0", "host", "web1", "99.50%", "up"]
    assert run(capsys, "--socket", p, "host", "pause", "web3")[0] == 2      # enable|disable only
    assert daemon.requests == [
        {"cmd": "host", "action": "disable", "name": "web3"},
        {"cmd": "redirect", "action": "enable", "name": "www"},
        {"cmd": "show", "what": "summary"}]


# ------------------------------------------------------------------- reload


class CannedServer:
    """A plain Unix socket server answering each request line with the next canned answer.

    Written by hand (no serve_control): a refused reload answers "ok": false
    with a "refused" list, which the daemon side builds itself.
    """

    def __init__(self, path, answers):
        self.path = path
        self.answers = list(answers)
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        for answer in self.answers:
            conn, _ = self.sock.accept()
            with conn, conn.makefile("rwb") as f:
                self.requests.append(json.loads(f.readline()))
                f.write(json.dumps(answer).encode() + b"\n")
                f.flush()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(5)
        self.sock.close()


RELOAD_APPLIED = {"ok": True, "applied": ["cluster.send_key: 1 -> 2", "sync.peers: added node 3"]}
RELOAD_NOTHING = {"ok": True, "applied": []}
RELOAD_REFUSED = {"ok": False, "error": "reload refused: 2 key(s) need a restart",
                  "refused": ["meshd.toml: node.id: 1 -> 2: needs a restart",
                              "meshd.toml: cluster.port: 7112 -> 7000: needs a restart"]}
RELOAD_BROKEN = {"ok": False, "error": "meshd.toml: TOML syntax: Expected '=' (at line 3, column 5)"}


def test_reload_prints_what_was_applied(tmpdir_short, capsys):
    path = os.path.join(tmpdir_short, "r.sock")
    with CannedServer(path, [RELOAD_APPLIED, RELOAD_NOTHING]) as server:
        assert run(capsys, "--socket", path, "reload") == \
            (0, "applied: cluster.send_key: 1 -> 2\napplied: sync.peers: added node 3\n", "")
        assert run(capsys, "--socket", path, "reload") == (0, "nothing changed\n", "")
    assert server.requests == [{"cmd": "reload"}, {"cmd": "reload"}]


def test_reload_refused_prints_the_error_and_every_refused_key(tmpdir_short, capsys):
    path = os.path.join(tmpdir_short, "r.sock")
    with CannedServer(path, [RELOAD_REFUSED, RELOAD_BROKEN]):
        code, out, err = run(capsys, "--socket", path, "reload")
        assert (code, out) == (1, "")
        assert err == ("meshctl: reload: reload refused: 2 key(s) need a restart\n"
                       "  refused: meshd.toml: node.id: 1 -> 2: needs a restart\n"
                       "  refused: meshd.toml: cluster.port: 7112 -> 7000: needs a restart\n")
        code, out, err = run(capsys, "--socket", path, "reload")
        assert (code, out) == (1, "")
        assert err == f"meshctl: reload: {RELOAD_BROKEN['error']}\n"


@pytest.mark.parametrize("answer, code", [(RELOAD_APPLIED, 0), (RELOAD_NOTHING, 0),
                                          (RELOAD_REFUSED, 1), (RELOAD_BROKEN, 1)])
def test_reload_json_prints_the_answer_as_is(tmpdir_short, capsys, answer, code):
    path = os.path.join(tmpdir_short, "r.sock")
    with CannedServer(path, [answer]):
        got, out, _ = run(capsys, "--socket", path, "reload", "--json")
    assert got == code
    assert json.loads(out) == answer


def test_reload_waits_longer_than_other_commands(daemon, capsys, monkeypatch):
    seen = []
    real = meshctl.request_stream

    def spy(path, obj, timeout):
        seen.append((obj["cmd"], timeout))
        return real(path, {"cmd": "status"}, timeout)
    monkeypatch.setattr(meshctl, "request_stream", spy)
    run(capsys, "--socket", daemon.path, "reload")
    run(capsys, "--socket", daemon.path, "status")
    run(capsys, "--socket", daemon.path, "reload", "--timeout", "2")
    assert seen == [("reload", 30.0), ("status", 5.0), ("reload", 2.0)]


def test_cluster_view_in_words():
    answer = {"node": {"id": 1, "name": "fw1", "epoch": 7, "in_sync": True,
                       "groups": [{"name": "lan", "id": 1, "state": "MASTER", "demotion": 0}]},
              "nodes": [{"id": 2, "name": "fw2", "version": "0.1.0", "epoch": 9,
                         "groups": [{"name": "lan", "id": 1, "state": "MASTER", "demotion": 0}],
                         "adverts": {"lan": {"last_heard_ago_s": 0.05}},
                         "sync": {"absent": False, "last_frame_ago_s": 0.1, "lag_in_frames": 0,
                                  "lag_out_frames": 2, "external_entries": 12,
                                  "rejected": {"unknown key": 3},
                                  "last_reject": {"reason": "unknown key", "detail": "key id 2", "ago_s": 1.0}},
                         "settings": {"agree": False, "complete": True,
                                      "differences": ["group lan: advbase_ms: 100 here, 200 on fw2"]}},
                        {"id": 3, "adverts": {}, "sync": None, "settings": None, "groups": []}],
              "masters": {"lan": [1, 2]}, "split_brain": {"lan": [1, 2]}, "split_brains_seen": 1}
    lines = meshctl.format_cluster(answer).splitlines()
    assert lines[0] == "this node: fw1 (id 1), epoch 7, in sync"
    assert "node fw2 (id 2), meshd 0.1.0, epoch 9" in lines
    assert "  sync: present, last frame 0.1s ago, lag in 0 / out 2 frames, 12 flows cached" in lines
    assert "  frames rejected: unknown key 3 (last 1.0s ago: unknown key, key id 2)" in lines
    assert "    group lan: advbase_ms: 100 here, 200 on fw2" in lines
    assert "  adverts: none heard (a backup sends none)" in lines
    assert "  settings: not known (no state mesh)" in lines
    assert "SPLIT BRAIN: group lan has 2 masters: nodes 1, 2" in lines


def test_format_discover_names_each_node_and_its_reason():
    from meshd.control.meshctl import format_answer
    answer = {"ok": True, "discover": True, "node": 1, "candidates": [9], "announcements_refused": 0,
              "announcer": {"address": "203.0.113.1", "interface": "sync0", "announced_as": "fw1 (meshd 1)._meshd-sync._udp.local.",
                            "fingerprint": "0123456789abcdef", "error": None, "dropped": 0, "ignored": 2},
              "heard": [
                  {"node": 2, "name": "fw2", "address": "203.0.113.2", "port": 7113, "fingerprint": "0123456789abcdef",
                   "reason": "taken as peer since 3.2 s ago", "peer": True, "last_heard_ago_s": 0.4},
                  {"node": 4, "name": "fw4", "address": "203.0.113.4", "port": 7113, "fingerprint": "fedcba9876543210",
                   "reason": "other cluster: fingerprint differs", "peer": False, "last_heard_ago_s": 1.0},
              ]}
    text = format_answer("discover", answer)
    assert "announced as fw1 (meshd 1)._meshd-sync._udp.local. at 203.0.113.1 on sync0" in text
    assert "node 2 (fw2) at 203.0.113.2 port 7113" in text and "PEER: taken as peer since 3.2 s ago" in text
    assert "node 4 (fw4) at 203.0.113.4" in text and "not a peer: other cluster: fingerprint differs" in text
    assert "candidates (heartbeats sent, not proven): 9" in text and "2 ignored" in text
    assert format_answer("discover", {"ok": True, "discover": False, "heard": []}).startswith("discovery is off")


def test_dump_shows_an_expectation_like_conntrack_does():
    import json as _json
    from pathlib import Path

    from meshd.control.meshctl import format_answer
    from meshd.kernel import ctnetlink as ct
    data = _json.loads((Path(__file__).resolve().parents[2] / "proto/vectors/ctnetlink.json").read_text())
    v = next(v for v in data["expect_vectors"] if v["name"] == "expect_passive_nat")
    entry = ct.parse_expect(bytes.fromhex(v["hex"])[16:])
    line = format_answer("dump", {"ok": True, "more": True, "origin": 1, "entry": entry})
    x = v["expect"]
    assert line.startswith("[node 1] expect tcp 300 ")
    assert f"dport={x['tuple']['dport']}" in line and "mask-dport=65535" in line
    assert f"master-sport={x['master']['sport']} master-dport=21" in line
    assert "helper=ftp" in line and "nat-dir=orig" in line and "fn=nat-follow-master" in line


def test_commit_answer_names_the_expectations():
    from meshd.control.meshctl import format_answer
    text = format_answer("commit", {"ok": True, "committed": 3, "failed": 0, "seconds": 0.01, "errors": {},
                                    "expectations": 1, "expectations_failed": 1,
                                    "expectation_errors": {"ENOENT": 1}})
    assert text == "committed 3 entries in 0.010 s, 0 failed; then 1 expectations, 1 failed (ENOENT 1)"


# ------------------------------------------------------------------- relays

RELAYS = {"ok": True, "what": "relays", "rows": [
    {"name": "www", "address": "192.0.2.80", "port": 443, "protocol": "tcp", "tls": True,
     "status": "active", "enabled": True, "listening": True, "sessions": 2, "total": 9,
     "refused": 1, "errors": 0, "counters": [],
     "backends": [{"host": "web1", "address": "10.1.0.11", "port": 80, "live": True,
                   "open": 2, "total": 9, "failed": 0},
                  {"host": "web2", "address": "10.1.0.12", "port": 80, "live": False,
                   "open": 0, "total": 0, "failed": 4}]},
    {"name": "dns", "address": "2001:db8::53", "port": 53, "protocol": "dns", "status": "not running",
     "listening": False, "why": "Address already in use"}]}
SESSIONS = {"ok": True, "what": "sessions", "truncated": 3, "rows": [
    {"id": 7, "relay": "www", "client": "203.0.113.9:51234", "backend": "10.1.0.11:80",
     "age_s": 12.44, "bytes_in": 2311, "bytes_out": 181220}]}


def test_relay_commands_and_their_text(tmpdir_short, capsys):
    path = os.path.join(tmpdir_short, "relay.sock")
    drained = {"ok": True, "kind": "relay", "name": "www", "enabled": False}
    with CannedServer(path, [RELAYS, SESSIONS, drained]) as server:
        code, out, _ = run(capsys, "--socket", path, "show", "relays")
        assert code == 0
        lines = [line.split() for line in out.splitlines()]
        assert lines[0] == ["Type", "Name", "Listener", "Status", "Now", "Total", "Refused", "Errors"]
        assert lines[1] == ["relay", "www", "tcp+tls", "192.0.2.80:443", "active", "2", "9", "1", "0"]
        assert lines[3][:4] == ["backend", "web2", "10.1.0.12:80", "not"]
        assert "not running (not listening: Address already in use)" in out
        assert "[2001:db8::53]:53" in out
        code, out, _ = run(capsys, "--socket", path, "show", "sessions")
        assert out.splitlines()[1].split() == ["7", "www", "203.0.113.9:51234", "10.1.0.11:80", "12.4s",
                                               "2311", "181220"]
        assert out.splitlines()[-1] == "... and 3 more sessions"
        assert run(capsys, "--socket", path, "relay", "disable", "www")[:2] == (0, "relay www is now disabled\n")
    assert server.requests == [{"cmd": "show", "what": "relays"}, {"cmd": "show", "what": "sessions"},
                               {"cmd": "relay", "action": "disable", "name": "www"}]


def test_status_shows_the_relay_engine():
    base = {"node": "fw1", "node_id": 1, "groups": [], "demotions": {}}
    up = meshctl.format_status({**base, "relay_engine": {"up": True, "pid": 42, "uid": 65534, "since_s": 5,
                                                         "starts": 2, "not_listening": {"dns": "Address in use"}}})
    assert "relay engine: up for" in up and "uid 65534, started 2 times, not listening: dns (Address in use)" in up
    down = meshctl.format_status({**base, "relay_engine": {"up": False, "since_s": 1,
                                                           "down_reason": "killed by SIGKILL"}})
    assert "relay engine: DOWN for" in down and "(killed by SIGKILL); relays refuse clients" in down
