"""The control socket: a trio UNIX-socket server speaking JSON Lines.

The server knows nothing about commands.  It frames requests, hands each one
to `handler` and frames the answer, so that the daemon's command code is a
plain `async def handler(request) -> dict` that can be tested without sockets.

Robustness rules, because this socket is how an operator reaches a daemon
that may be in trouble:

* nothing a client sends or does (garbage, huge lines, deep nesting,
  vanishing, never reading) and nothing a handler raises stops the server or
  other clients; what is parsed is bounded first (MAX_LINE bytes, MAX_DEPTH
  levels: meshd/control/protocol.py), and answered with an error past that;
* each connection is served by its own task; requests on one connection are
  answered in order, one answer line each (pipelining is allowed);
* a client that is silent, or does not read its answer, for `idle_timeout`
  seconds is dropped, so a stuck script cannot pin a task and a descriptor
  forever.

Streaming: a handler may return an async iterator instead of a dict.  Each
yielded dict goes out as {"ok": true, "more": true, ...item}; the end is
{"ok": true, "more": false}.  If the iterator raises, the stream ends with an
ordinary error answer {"ok": false, "error": ...} instead (no "more" key).

Must not: know a command or check its arguments (the handler does), import the
daemon (the handler is passed in), or let anything a client or a handler does
stop the server or another client.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from ..commands import ControlError
from .protocol import (
    END_OF_STREAM,
    MAX_LINE,
    decode_request,
    encode,
    error_answer,
    ok_answer,
)

Handler = Callable[[dict], Awaitable["dict | AsyncIterator[dict]"]]
Log = Callable[..., None]

IDLE_TIMEOUT = 60.0
SOCKET_MODE = 0o600
DIR_MODE = 0o755
# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_PATH = 107
# accept() errors that mean "out of descriptors/memory for now": wait and retry.
_ACCEPT_CAPACITY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class ControlSocketError(OSError):
    """The control socket cannot be set up (another daemon owns it, bad path...).

    An OSError so that callers treating "cannot set up a socket" generically
    (the daemon's startup) catch it with the rest; str() is the whole message.
    """


def _stderr_log(event: str, **fields: Any) -> None:
    extra = " ".join(f"{k}={v!r}" for k, v in fields.items() if k != "traceback")
    print(f"meshd: {event} {extra}".rstrip(), file=sys.stderr)
    if "traceback" in fields:
        print(fields["traceback"], file=sys.stderr, end="")


async def serve_control(path: str, handler: Handler, *, log: Log | None = None,
                        idle_timeout: float = IDLE_TIMEOUT,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket at `path` until cancelled; remove it on exit.

    Calls task_status.started() once the socket accepts connections, so
    `await nursery.start(serve_control, ...)` returns when meshctl can connect.
    Raises ControlSocketError before started() if the socket cannot be set up,
    notably when another live daemon answers on `path`.

    `log(event, **fields)` receives: control_listening, control_handler_error
    (cmd, error, traceback), control_connection_error, control_accept_error,
    control_client_timeout (waited_s, doing).  Problems carry level="error"
    or "warning" as a field, which meshd.log.EventLog understands; the
    default prints to stderr.
    """
    log = _safe(log or _stderr_log)
    sock = await _bind(path)
    ident = os.lstat(path)
    try:
        listener = trio.SocketListener(sock)
        async with listener, trio.open_nursery() as nursery:
            log("control_listening", path=path)
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if e.errno not in _ACCEPT_CAPACITY:
                        raise
                    log("control_accept_error", level="warning", error=os.strerror(e.errno))
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_serve_connection, stream, handler, log, idle_timeout)
    finally:
        sock.close()
        _remove_if_ours(path, ident)


def _safe(log: Log) -> Log:
    """A broken log callable must not take the control socket down with it."""
    def call(event: str, **fields: Any) -> None:
        try:
            log(event, **fields)
        except Exception:  # noqa: BLE001, S110 (nowhere left to report it)
            pass
    return call


# -------------------------------------------------------------------- setup


async def _bind(path: str) -> trio.socket.SocketType:
    """Create the directory, clear a stale socket, bind, chmod 0600, listen.

    Why chmod between bind() and listen(): bind() creates the file with mode
    0777 & ~umask, possibly world-connectable.  The permission check happens
    only at connect(), and a connection once made survives a later chmod; but
    connect() to a socket that is bound and not yet listening is refused.  So
    tightening the mode before listen() leaves no moment in which an
    unprivileged user could get a connection.  (fchmod() on the socket fd does
    not work for this on Linux -- it changes the socket inode, not the file --
    and the umask trick changes process-wide state under other threads.)
    """
    if len(os.fsencode(path)) > MAX_PATH:
        raise ControlSocketError(f"{path}: control socket path longer than {MAX_PATH} bytes")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=DIR_MODE)
            os.chmod(parent, DIR_MODE)  # makedirs honours the umask; we want exactly 0755
        except OSError as e:
            raise ControlSocketError(f"{parent}: cannot create directory: {e.strerror}") from None
    await _clear_stale(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, SOCKET_MODE)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            # Someone bound the path between our check and our bind.
            raise ControlSocketError(f"{path}: another process created the socket "
                                     "while meshd was starting") from None
        raise ControlSocketError(f"{path}: cannot set up control socket: "
                                 f"{e.strerror or e}") from None
    return sock


async def _clear_stale(path: str) -> None:
    """Remove a socket left by a dead daemon; refuse if a live one answers.

    A crashed daemon leaves its socket file behind and bind() would fail with
    EADDRINUSE, so the file must go -- but only after making sure nothing is
    listening, or a second meshd would silently steal the first one's socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ControlSocketError(f"{path}: cannot inspect: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path}: exists and is not a socket; refusing to remove it")
    probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        with trio.move_on_after(1.0):
            await probe.connect(path)
        live = True  # connected, or still waiting after 1 s (backlog full): someone listens
    except ConnectionRefusedError:
        live = False  # stale: the file exists but nobody listens
    except FileNotFoundError:
        return
    except OSError as e:
        raise ControlSocketError(f"{path}: cannot tell whether another meshd is using it: "
                                 f"{e.strerror or e}") from None
    finally:
        probe.close()
    if live:
        raise ControlSocketError(f"{path}: another meshd is already listening on this socket")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_if_ours(path: str, ident: os.stat_result) -> None:
    """Unlink the socket file unless another daemon has replaced it meanwhile."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (ident.st_dev, ident.st_ino):
            os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------- connection


class _Closed(Exception):
    """The client went away, or stopped reading; end the connection quietly."""


async def _serve_connection(stream: trio.SocketStream, handler: Handler, log: Log,
                            idle_timeout: float) -> None:
    async with stream:
        conn = _Connection(stream, log, idle_timeout)
        try:
            await conn.run(handler)
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as e:  # noqa: BLE001
            # A bug here must cost one connection, never the server.
            log("control_connection_error", level="error", error=f"{type(e).__name__}: {e}",
                traceback="".join(traceback.format_exception(e)))


class _Connection:
    def __init__(self, stream: trio.SocketStream, log: Log, idle_timeout: float):
        self.stream = stream
        self.log = log
        self.idle_timeout = idle_timeout
        self.buf = bytearray()
        self.scanned = 0        # bytes of buf known to hold no newline
        self.discarding = False  # inside an over-long line: drop until its newline
        self.eof = False

    async def run(self, handler: Handler) -> None:
        while True:
            line = await self._next_line()
            if line is None:
                return
            if line is _TOO_LONG:
                await self._send(error_answer(f"request line longer than {MAX_LINE} bytes"))
                continue
            if not line.strip():
                continue  # blank lines are not requests (handy with socat)
            try:
                request = decode_request(line)
            except ControlError as e:
                await self._send(error_answer(e.message))
                continue
            await self._answer(handler, request)

    # ---- reading

    async def _next_line(self):
        """The next line without its newline, _TOO_LONG, or None at end of input."""
        while True:
            nl = self.buf.find(b"\n", self.scanned)
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                self.scanned = 0
                if self.discarding:
                    self.discarding = False
                    continue
                if len(line) > MAX_LINE:
                    return _TOO_LONG
                return line.rstrip(b"\r")
            if self.discarding:
                self.buf.clear()
                self.scanned = 0
            elif len(self.buf) > MAX_LINE:
                self.buf.clear()
                self.scanned = 0
                self.discarding = True
                return _TOO_LONG
            else:
                self.scanned = len(self.buf)
            if self.eof:
                # A last request without its newline is still answered.
                if self.buf and not self.discarding:
                    line = bytes(self.buf)
                    self.buf.clear()
                    return line
                return None
            with trio.move_on_after(self.idle_timeout) as cs:
                data = await self.stream.receive_some(MAX_LINE)
            if cs.cancelled_caught:
                self.log("control_client_timeout", waited_s=self.idle_timeout, doing="reading")
                raise _Closed
            if not data:
                self.eof = True
            self.buf += data

    # ---- answering

    async def _answer(self, handler: Handler, request: dict) -> None:
        cmd = request["cmd"]
        try:
            result = await handler(request)
        except ControlError as e:
            await self._send(error_answer(e.message, e.fields))
            return
        except Exception as e:  # noqa: BLE001 (a handler's bug is answered, not raised)
            await self._send(self._internal(cmd, e))
            return
        if isinstance(result, dict):
            await self._send(ok_answer(result), cmd)
        elif hasattr(result, "__aiter__"):
            await self._stream(cmd, result)
        else:
            err = TypeError(f"handler returned {type(result).__name__}, "
                            "expected a dict or an async iterator")
            await self._send(self._internal(cmd, err))

    async def _stream(self, cmd: str, result: Any) -> None:
        items = result.__aiter__()
        try:
            while True:
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    break
                except ControlError as e:
                    await self._send(error_answer(e.message, e.fields))
                    return
                except Exception as e:  # noqa: BLE001 (as in _answer)
                    await self._send(self._internal(cmd, e))
                    return
                if not isinstance(item, dict):
                    err = TypeError(f"stream yielded {type(item).__name__}, expected a dict")
                    await self._send(self._internal(cmd, err))
                    return
                if not await self._send(ok_answer(item, more=True), cmd):
                    return
            await self._send(END_OF_STREAM)
        finally:
            # Run the generator's cleanup even when the client vanished mid-stream.
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    def _internal(self, cmd: str, e: BaseException) -> dict:
        self.log("control_handler_error", level="error", cmd=cmd,
                 error=f"{type(e).__name__}: {e}", traceback="".join(traceback.format_exception(e)))
        return error_answer(f"internal error in {cmd}: {type(e).__name__}: {e} "
                            "(details in the meshd log)")

    async def _send(self, answer: dict, cmd: str | None = None) -> bool:
        """Write one answer line; False if it could not be encoded (an error went instead)."""
        try:
            data = encode(answer)
        except (TypeError, ValueError) as e:
            await self._send(self._internal(cmd or "?", e))
            return False
        with trio.move_on_after(self.idle_timeout) as cs:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Closed from None
        if cs.cancelled_caught:
            # A cancelled send_all leaves the stream unusable: drop the client.
            self.log("control_client_timeout", waited_s=self.idle_timeout, doing="writing")
            raise _Closed
        return True


_TOO_LONG: Any = object()
