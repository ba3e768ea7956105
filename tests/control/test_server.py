"""The control server against a fake handler, over a real UNIX socket in a tmp dir.

Plain pytest functions driving trio.run (no pytest-trio).  Each test checks
that the connection (and the server) stays usable after the event under test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile

import pytest
import trio

from meshd.commands import ControlError, require
from meshd.control.protocol import MAX_DEPTH, MAX_LINE, decode_request
from meshd.control.server import ControlSocketError, serve_control


@pytest.fixture
def sock_path():
    # Short directory: sun_path is limited to 107 bytes, pytest's tmp_path can be long.
    d = tempfile.mkdtemp(prefix="mc-", dir="/tmp")
    yield os.path.join(d, "run", "meshd.sock")
    shutil.rmtree(d, ignore_errors=True)


class Log:
    def __init__(self):
        self.events = []

    def __call__(self, event, **fields):
        self.events.append((event, fields))

    def names(self):
        return [e for e, _ in self.events]


async def fake_handler(request):
    cmd = request["cmd"]
    if cmd == "echo":
        return {"echo": request.get("value")}
    if cmd == "fail":
        raise ControlError("fail: as requested")
    if cmd == "refuse":
        raise ControlError("refuse: 1 refused", refused=["a.toml: x: why"], ok=True, error="hidden")
    if cmd == "boom":
        raise RuntimeError("kaboom")
    if cmd == "demote":
        return {"name": require(request, "name", str), "value": require(request, "by", int)}
    if cmd == "notjson":
        return {"x": {1, 2}}
    if cmd == "none":
        return None
    if cmd == "stream":
        async def items():
            for i in range(require(request, "n", int)):
                yield {"i": i}
        return items()
    if cmd == "stream_fail":
        async def items():
            yield {"i": 0}
            raise ControlError("stream_fail: broke after one item")
        return items()
    raise ControlError(f"unknown command {cmd!r}")


class Client:
    """A trio line client for tests."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, path):
        return cls(await trio.open_unix_socket(path))

    async def send_raw(self, data: bytes):
        await self.stream.send_all(data)

    async def send(self, obj):
        await self.send_raw(json.dumps(obj).encode() + b"\n")

    async def recv(self, timeout=5):
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(self.buf)
                self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def ask(self, obj):
        await self.send(obj)
        return await self.recv()

    async def aclose(self):
        await self.stream.aclose()


def run_with_server(path, test, handler=fake_handler, **kw):
    """Run `await test(path)` with serve_control running; return what test returns."""
    log = kw.pop("log", None) or Log()

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_control(
                path, handler, log=log, task_status=task_status, **kw))
            result = await test(path)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


# ------------------------------------------------------------------ protocol


def test_require_messages():
    req = {"cmd": "demote", "name": "lan", "by": "x", "flag": True}
    assert require(req, "name", str) == "lan"
    with pytest.raises(ControlError, match=r'^demote: "by" must be an integer, found "x"$'):
        require(req, "by", int)
    with pytest.raises(ControlError, match=r'^demote: "flag" must be an integer, found true$'):
        require(req, "flag", int)
    with pytest.raises(ControlError, match=r'^demote: missing "count" \(an integer\)$'):
        require(req, "count", int)
    with pytest.raises(ControlError, match=r'"by" must be an integer from -5 to 5, found 9'):
        require({"cmd": "demote", "by": 9}, "by", int, lo=-5, hi=5)
    with pytest.raises(ControlError, match=r'"name" must be a non-empty string, found ""'):
        require({"cmd": "promote", "name": ""}, "name", str)
    assert require(req, "count", int, default=0) == 0


def test_decode_request_problems():
    assert decode_request(b'{"cmd":"status"}') == {"cmd": "status"}
    for line, text in [(b"nope", "not valid JSON"), (b"[1]", "must be a JSON object, found a list"),
                       (b"{}", 'no "cmd"'), (b'{"cmd":5}', '"cmd" must be a non-empty string'),
                       (b"\xff{}", "not valid UTF-8"), (b'{"cmd":NaN}', "not valid JSON")]:
        with pytest.raises(ControlError, match=text):
            decode_request(line)


# -------------------------------------------------------------------- server


def test_good_request_and_pipelining(sock_path):
    async def test(path):
        c = await Client.open(path)
        assert await c.ask({"cmd": "echo", "value": "hé"}) == {"ok": True, "echo": "hé"}
        # Two requests in one write: two answers, in order.
        await c.send_raw(b'{"cmd":"echo","value":1}\n{"cmd":"echo","value":2}\n')
        assert (await c.recv())["echo"] == 1
        assert (await c.recv())["echo"] == 2
        await c.aclose()
    run_with_server(sock_path, test)


@pytest.mark.parametrize("raw, text", [
    (b"this is not json\n", "not valid JSON"),
    (b"[1, 2]\n", "must be a JSON object, found a list"),
    (b'"status"\n', "must be a JSON object"),
    (b'{"name": "lan"}\n', 'no "cmd"'),
    (b'{"cmd": null}\n', '"cmd" must be a non-empty string, found null'),
    (b'{"cmd": "\xff"}\n', "not valid UTF-8"),
])
def test_bad_input_answered_and_connection_usable(sock_path, raw, text):
    async def test(path):
        c = await Client.open(path)
        await c.send_raw(raw)
        answer = await c.recv()
        assert answer["ok"] is False and text in answer["error"]
        assert set(answer) == {"ok", "error"}
        assert await c.ask({"cmd": "echo", "value": 7}) == {"ok": True, "echo": 7}
    run_with_server(sock_path, test)


def test_blank_lines_and_crlf(sock_path):
    async def test(path):
        c = await Client.open(path)
        await c.send_raw(b'\n  \r\n{"cmd":"echo","value":3}\r\n')
        assert await c.recv() == {"ok": True, "echo": 3}
    run_with_server(sock_path, test)


def test_over_long_line(sock_path):
    async def test(path):
        c = await Client.open(path)
        # Sent in pieces without a newline: detected before the newline arrives.
        await c.send_raw(b'{"cmd":"echo","value":"' + b"a" * (MAX_LINE + 10))
        answer = await c.recv()
        assert answer["ok"] is False and f"longer than {MAX_LINE} bytes" in answer["error"]
        await c.send_raw(b"a" * 200_000 + b'"}\n')  # rest of the same line is dropped
        assert await c.ask({"cmd": "echo", "value": "after"}) == {"ok": True, "echo": "after"}
        # A too-long line that arrives whole, newline included.
        await c.send_raw(b"x" * (MAX_LINE + 1) + b'\n{"cmd":"echo","value":2}\n')
        assert "longer than" in (await c.recv())["error"]
        assert await c.recv() == {"ok": True, "echo": 2}
        # A line of exactly MAX_LINE bytes is accepted, even when it arrives in pieces.
        body = b'{"cmd":"echo"}'
        line = b" " * (MAX_LINE - len(body)) + body
        assert len(line) == MAX_LINE
        await c.send_raw(line[:40000])
        await trio.sleep(0.05)
        await c.send_raw(line[40000:])
        await trio.sleep(0.05)
        await c.send_raw(b"\n")
        assert await c.recv() == {"ok": True, "echo": None}
    run_with_server(sock_path, test)


def test_control_error_and_unexpected_exception(sock_path):
    log = Log()

    async def test(path):
        c = await Client.open(path)
        assert await c.ask({"cmd": "fail"}) == {"ok": False, "error": "fail: as requested"}
        # Extra members of an error answer (reload's "refused"); "ok" and "error" stay.
        assert await c.ask({"cmd": "refuse"}) == {"ok": False, "error": "refuse: 1 refused",
                                                  "refused": ["a.toml: x: why"]}
        answer = await c.ask({"cmd": "boom"})
        assert answer["ok"] is False
        assert "internal error" in answer["error"] and "RuntimeError: kaboom" in answer["error"]
        answer = await c.ask({"cmd": "demote", "name": "lan", "by": "x"})
        assert answer == {"ok": False, "error": 'demote: "by" must be an integer, found "x"'}
        assert "internal error" in (await c.ask({"cmd": "notjson"}))["error"]
        assert "handler returned NoneType" in (await c.ask({"cmd": "none"}))["error"]
        assert await c.ask({"cmd": "echo", "value": 1}) == {"ok": True, "echo": 1}
    run_with_server(sock_path, test, log=log)
    errors = [f for e, f in log.events if e == "control_handler_error"]
    assert errors[0]["cmd"] == "boom" and "RuntimeError: kaboom" in errors[0]["error"]
    assert "Traceback" in errors[0]["traceback"]
    assert len(errors) == 3


def test_broken_log_callable_does_not_kill_server(sock_path):
    def bad_log(event, **fields):
        raise OSError("log disk full")

    async def test(path):
        c = await Client.open(path)
        assert "internal error" in (await c.ask({"cmd": "boom"}))["error"]
        assert (await c.ask({"cmd": "echo"}))["ok"] is True
    run_with_server(sock_path, test, log=bad_log)


def test_result_cannot_override_ok(sock_path):
    async def handler(request):
        return {"ok": False, "more": True, "x": 1}

    async def test(path):
        c = await Client.open(path)
        assert await c.ask({"cmd": "any"}) == {"ok": True, "x": 1}
    run_with_server(sock_path, test, handler=handler)


def test_streaming(sock_path):
    async def test(path):
        c = await Client.open(path)
        await c.send({"cmd": "stream", "n": 3})
        got = [await c.recv() for _ in range(4)]
        assert got == [{"ok": True, "more": True, "i": 0}, {"ok": True, "more": True, "i": 1},
                       {"ok": True, "more": True, "i": 2}, {"ok": True, "more": False}]
        await c.send({"cmd": "stream", "n": 0})
        assert await c.recv() == {"ok": True, "more": False}
        await c.send({"cmd": "stream_fail"})
        assert await c.recv() == {"ok": True, "more": True, "i": 0}
        assert await c.recv() == {"ok": False, "error": "stream_fail: broke after one item"}
        assert await c.ask({"cmd": "echo", "value": 1}) == {"ok": True, "echo": 1}
    run_with_server(sock_path, test)


def test_client_disconnects_mid_stream(sock_path):
    state = {"closed": False, "sent": 0}

    async def handler(request):
        if request["cmd"] != "dump":
            return {"alive": True}

        async def items():
            try:
                while True:  # endless: only the client going away stops it
                    state["sent"] += 1
                    yield {"blob": "x" * 4096}
            finally:
                state["closed"] = True
        return items()

    async def test(path):
        c = await Client.open(path)
        await c.send({"cmd": "dump"})
        assert (await c.recv())["more"] is True
        await c.aclose()
        with trio.fail_after(5):
            while not state["closed"]:
                await trio.sleep(0.01)
        c2 = await Client.open(path)
        assert await c2.ask({"cmd": "x"}) == {"ok": True, "alive": True}
    run_with_server(sock_path, test, handler=handler)
    assert state["closed"]


def test_last_request_without_newline_at_eof(sock_path):
    async def test(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(b'{"cmd":"echo","value":5}')
        s.shutdown(socket.SHUT_WR)
        data = await trio.to_thread.run_sync(lambda: s.makefile("rb").read())
        s.close()
        return data
    assert run_with_server(sock_path, test) == b'{"ok":true,"echo":5}\n'


def test_socket_and_directory_modes_and_removal_on_exit(sock_path):
    async def test(path):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    old = os.umask(0)  # the worst case: without the chmod the socket would be 0777
    try:
        run_with_server(sock_path, test)
    finally:
        os.umask(old)
    assert not os.path.exists(sock_path)


def test_concurrent_clients(sock_path):
    n = 40
    arrived = {"count": 0}
    all_here = trio.Event()

    async def handler(request):
        # Answers only once all n requests are in progress at the same time:
        # a server handling clients one by one would deadlock (and time out).
        arrived["count"] += 1
        if arrived["count"] == n:
            all_here.set()
        await all_here.wait()
        return {"i": request["i"]}

    async def test(path):
        results = {}

        async def one(i):
            c = await Client.open(path)
            results[i] = await c.ask({"cmd": "x", "i": i})
            await c.aclose()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
        return results
    results = run_with_server(sock_path, test, handler=handler)
    assert results == {i: {"ok": True, "i": i} for i in range(n)}


def test_idle_client_is_dropped(sock_path):
    log = Log()

    async def test(path):
        c = await Client.open(path)
        assert (await c.ask({"cmd": "echo"}))["ok"]
        with trio.fail_after(5):
            assert await c.stream.receive_some(100) == b""  # server hung up
        c2 = await Client.open(path)
        assert (await c2.ask({"cmd": "echo"}))["ok"]
    run_with_server(sock_path, test, log=log, idle_timeout=0.2)
    assert "control_client_timeout" in log.names()


def test_client_that_never_reads_is_dropped(sock_path):
    log = Log()

    async def handler(request):
        async def items():
            while True:
                yield {"blob": "y" * 65536}
        return items()

    async def test(path):
        c = await Client.open(path)
        await c.send({"cmd": "dump"})
        with trio.fail_after(5):
            while "control_client_timeout" not in log.names():
                await trio.sleep(0.05)
        await c.aclose()
    run_with_server(sock_path, test, handler=handler, log=log, idle_timeout=0.3)
    assert any(f.get("doing") == "writing" for e, f in log.events if e == "control_client_timeout")


def test_stale_socket_file_is_replaced(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)  # a socket file nobody listens on, as a crashed daemon leaves
    dead.close()
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)

    async def test(path):
        c = await Client.open(path)
        return await c.ask({"cmd": "echo", "value": "fresh"})
    assert run_with_server(sock_path, test) == {"ok": True, "echo": "fresh"}


def test_live_socket_is_refused(sock_path):
    async def test(path):
        with pytest.raises(ControlSocketError, match="another meshd is already listening") as e:
            await serve_control(path, fake_handler, log=Log())
        assert isinstance(e.value, OSError)  # the daemon's startup catches OSError
        # The first server is untouched and still answers.
        c = await Client.open(path)
        return await c.ask({"cmd": "echo", "value": 1})
    assert run_with_server(sock_path, test) == {"ok": True, "echo": 1}


def test_non_socket_file_is_not_removed(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    with open(sock_path, "w") as f:
        f.write("precious")

    async def main():
        with pytest.raises(ControlSocketError, match="not a socket"):
            await serve_control(sock_path, fake_handler, log=Log())
    trio.run(main)
    with open(sock_path) as f:
        assert f.read() == "precious"


def test_path_too_long():
    async def main():
        with pytest.raises(ControlSocketError, match="longer than 107 bytes"):
            await serve_control("/tmp/" + "x" * 200, fake_handler, log=Log())
    trio.run(main)


# ------------------------------------------------------------ request bounds


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    """A request whose "value" member is `depth` containers deep (the request object is one more)."""
    return b'{"cmd":"echo","value":' + open_ * depth + close * depth + b"}"


def test_decode_request_refuses_deep_nesting_with_a_control_error():
    # A few thousand levels: json.loads alone raises RecursionError, not a ControlError.
    for line in (nested(5000), nested(5000, b'{"a":', b"}"), b"[" * 30000 + b"]" * 30000,
                 b'{"cmd":"echo","value":' + b"[" * 3000):          # unbalanced, still too deep
        assert len(line) <= MAX_LINE
        with pytest.raises(ControlError, match=rf"^request nested deeper than {MAX_DEPTH} levels"):
            decode_request(line)
    # The bound itself is accepted: the request object plus MAX_DEPTH - 1 levels inside it.
    assert decode_request(nested(MAX_DEPTH - 1))["cmd"] == "echo"
    with pytest.raises(ControlError, match="nested deeper than"):
        decode_request(nested(MAX_DEPTH))
    # Brackets inside strings (escaped quotes included) are text, not nesting.
    text = '[{\\"[' * 4000
    req = decode_request(('{"cmd":"echo","value":"' + text + '"}').encode())
    assert req["value"] == json.loads('"' + text + '"')
    # A string that is not closed is still a JSON error, not a nesting one.
    with pytest.raises(ControlError, match="not valid JSON"):
        decode_request(b'{"cmd":"echo","value":"' + b"[" * 3000)


def test_deeply_nested_request_is_answered_and_the_server_keeps_serving(sock_path):
    log = Log()

    async def test(path):
        other = await Client.open(path)           # connected before, asks after
        c = await Client.open(path)
        for line in (nested(5000), nested(3000, b'{"k":', b"}"), b"[" * 30000 + b"]" * 30000):
            await c.send_raw(line + b"\n")
            answer = await c.recv()
            assert answer == {"ok": False,
                              "error": f"request nested deeper than {MAX_DEPTH} levels"}, answer
            # The same connection goes on: the next request is answered.
            assert await c.ask({"cmd": "echo", "value": "after"}) == {"ok": True, "echo": "after"}
        assert await other.ask({"cmd": "echo", "value": 1}) == {"ok": True, "echo": 1}
        fresh = await Client.open(path)
        assert await fresh.ask({"cmd": "echo", "value": [[["ok"]]]}) == {"ok": True, "echo": [[["ok"]]]}
        for client in (c, other, fresh):
            await client.aclose()

    run_with_server(sock_path, test, log=log)
    assert "control_connection_error" not in log.names(), log.events


def test_over_long_deeply_nested_line_gets_one_error_then_service(sock_path):
    async def test(path):
        c = await Client.open(path)
        # Longer than MAX_LINE and deeply nested: the length is what is reported,
        # once, and nothing of the line reaches the parser.
        await c.send_raw(b"[" * (MAX_LINE + 5000) + b"\n" + b'{"cmd":"echo","value":9}\n')
        answer = await c.recv()
        assert answer == {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"}
        assert await c.recv() == {"ok": True, "echo": 9}
        await c.aclose()
    run_with_server(sock_path, test)
