"""The parent's side of a child process, under trio: start, watch, restart.

`ChildSupervisor.run()` loops for as long as the daemon runs:

1. a socketpair (AF_UNIX, SOCK_STREAM, close-on-exec in the parent) and the
   extra descriptors the child needs (`extra_fds()`, e.g. raw ICMP sockets
   only root may open);
2. fork+exec of ``python -m <module> --fd N --parent PID ...`` (never a bare
   fork of this trio process: the child starts a fresh interpreter, which
   then drops its privileges itself, meshd/privsep/drop.py), from the event
   loop's thread, which lives as long as the daemon (the parent-death
   signal follows the forking thread); the exit is watched through a pidfd;
3. the child's first message must be `hello` within `hello_timeout`: only
   then is it *up* (`on_up(channel, hello)`); each later message goes to
   `on_message`;
4. when the channel ends (end of file, a framing error, the process gone)
   the socket is closed, the child given EXIT_GRACE_S to leave, killed if
   still there (SIGKILL to another user's process: CAP_KILL) and reaped, its exit status or signal
   logged (`child_exited`), `on_down(reason)` called, and after the delay of
   `Backoff` it is started again.

`Channel` frames and checks both directions: what the child sends is
validated against the `incoming` schema (a bad message is logged with where
and what, and dropped); what we send is checked against `outgoing` before
it leaves.  Sends never block: a full queue refuses the message.

Must not: know what the child does, or decide anything about the node (the
callbacks do, through the node core).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from .backoff import Backoff
from .imsg import MAX_SIZE, Decoder, Message, Rejected, Schema

SEND_QUEUE = 4096           # messages waiting for the socket (a start burst)
COALESCE_BYTES = 256 << 10  # queued messages joined into one write, up to this much
READ_BYTES = 256 << 10      # one read of the channel
HELLO_TIMEOUT_S = 10.0      # a cold Python start on a loaded machine is well under 2 s
EXIT_GRACE_S = 0.5          # for a child to leave by itself once its socket is closed
REAP_TIMEOUT_S = 2.0
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])   # the directory holding meshd/


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


class Channel:
    """One end of a socketpair: checked messages in, checked messages out."""

    def __init__(self, sock: socket.socket, incoming: Schema, outgoing: Schema, log, peer: str,
                 max_size: int = MAX_SIZE, queue: int = SEND_QUEUE):
        sock.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.decoder = Decoder(incoming, max_size)
        self.outgoing = outgoing
        self.log = log
        self.peer = peer
        self._send, self._receive = trio.open_memory_channel(queue)
        self.closed = False
        self._broken_logged = False

    def send_nowait(self, mtype: str, **fields) -> bool:
        """Queue one message; False when the channel is closed or its queue full."""
        if self.closed:
            return False
        data = self.outgoing.encode(mtype, **fields)
        try:
            self._send.send_nowait(data)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def send(self, mtype: str, **fields) -> bool:
        """Queue one message, waiting while the queue is full (the wire engine's
        datagrams: a slow reader slows the engine, whose socket then drops, as
        one process would); False when the channel is closed."""
        if self.closed:
            return False
        data = self.outgoing.encode(mtype, **fields)
        try:
            try:
                self._send.send_nowait(data)        # no checkpoint while there is room
            except trio.WouldBlock:
                await self._send.send(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def sender(self) -> None:
        """Writes the queue to the socket until the channel closes; what is
        queued together leaves in one write (one syscall for a burst)."""
        try:
            async for first in self._receive:
                data = first
                if len(data) < COALESCE_BYTES:
                    parts = [first]
                    size = len(first)
                    while size < COALESCE_BYTES:
                        try:
                            more = self._receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        parts.append(more)
                        size += len(more)
                    if len(parts) > 1:
                        data = b"".join(parts)
                view = memoryview(data)
                while view:
                    n = await self.sock.send(view)
                    view = view[n:]
        except OSError:
            pass                    # the reader sees the end too
        finally:
            self.closed = True

    async def messages(self, on_message: Callable[[Message], None],
                       on_batch: Callable[[], None] | None = None) -> str:
        """Reads until the end; every valid message to on_message, then
        on_batch() after each read's messages (where a caller dispatches what
        they produced, once per read).  Returns why it ended."""
        try:
            while True:
                # Read and deliver with no checkpoint between: trio's `await
                # sock.recv()` yields after a read that succeeded at once, and
                # read_nowait (the election's ReadFirst, from the timer task)
                # could then deliver later bytes of the stream before these.
                # The checkpoint comes after the delivery instead.
                if self.closed:
                    return "closed here"
                try:
                    data = self.sock._sock.recv(READ_BYTES)
                except (BlockingIOError, InterruptedError):
                    await trio.lowlevel.wait_readable(self.sock)
                    continue
                if not data:
                    return "end of file"
                self._deliver(data, on_message)
                if on_batch is not None:
                    on_batch()
                if self.decoder.broken:
                    return self._broken()
                await trio.lowlevel.checkpoint()
        except OSError as e:
            return f"socket error: {e.strerror or e}"
        except trio.ClosedResourceError:
            # restart(), the daemon stopping, or read_nowait found the framing broken
            return self._broken() if self.decoder.broken else "closed here"
        finally:
            self.close()

    def _broken(self) -> str:
        """The framing is lost for good: logged once; why the channel ends."""
        if not self._broken_logged:
            self._broken_logged = True
            self.log("imsg_channel_broken", level="error", peer=self.peer, what=self.decoder.broken)
        return f"framing error: {self.decoder.broken}"

    def read_nowait(self, on_message: Callable[[Message], None], limit: int = READ_BYTES) -> int:
        """What the socket holds already, up to about `limit` bytes, without
        waiting (a timer that must not act on silence while messages wait
        unread); the reader task sees the rest, or the end.  Returns bytes read."""
        total = 0
        while total < limit and not self.closed and not self.decoder.broken:
            try:
                data = self.sock._sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break               # the reader task meets it too, and ends the channel
            if not data:
                break
            total += len(data)
            self._deliver(data, on_message)
        if self.decoder.broken and not self.closed:
            self._broken()
            self.close()            # the reader task wakes up and ends the channel
        return total

    def _deliver(self, data: bytes, on_message: Callable[[Message], None]) -> None:
        if self.decoder.broken:
            return                  # the reader task ends the channel (messages())
        for m in self.decoder.feed(data):
            if isinstance(m, Rejected):
                self.log("imsg_rejected", level="warning", peer=self.peer, where=m.where,
                         what=m.what)
            else:
                on_message(m)

    def close(self) -> None:
        self.closed = True
        self._send.close()
        self.sock.close()


class ChildSupervisor:
    """Keeps one child process running.

    Args:
        name: for the logs ("check engine").
        module: the child's module (``python -m module``).
        args: further arguments of the child.
        incoming, outgoing: the schemas of what it sends and what we send.
        log: the event logger.
        on_up(channel, hello): the child said hello; `channel` is how to talk to it.
        on_message(message): every later message.
        on_down(reason): it is gone (also when it never said hello).
        extra_fds(): descriptors to pass, as {option name: socket or list of sockets},
            opened anew for each start.
        backoff: the restart rule (a fresh `Backoff()` by default).
        on_batch(): after each read's messages (see Channel.messages).
        max_size: the largest message the child may send.
    """

    def __init__(self, name: str, module: str, args: list[str], incoming: Schema, outgoing: Schema,
                 *, log, on_up, on_message, on_down, extra_fds: Callable[[], dict] | None = None,
                 backoff: Backoff | None = None, hello_timeout: float = HELLO_TIMEOUT_S,
                 on_batch: Callable[[], None] | None = None, max_size: int = MAX_SIZE):
        self.name = name
        self.module = module
        self.args = args
        self.incoming = incoming
        self.outgoing = outgoing
        self.log = log
        self.on_up = on_up
        self.on_message = on_message
        self.on_down = on_down
        self.extra_fds = extra_fds or dict
        self.backoff = backoff or Backoff()
        self.hello_timeout = hello_timeout
        self.on_batch = on_batch
        self.max_size = max_size
        self.channel: Channel | None = None
        self._restart_now = False
        self.pid: int | None = None
        self.up = False
        self.starts = 0

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + path if path else "")
        return env

    async def run(self) -> None:
        while True:
            reason = await self._run_once()
            self.up = False
            self.on_down(reason)
            if self._restart_now:
                self._restart_now = False
                self.log("child_restart", child=self.name, delay_s=0, reason="asked")
                continue
            delay = self.backoff.died(trio.current_time())
            self.log("child_restart", level="warning", child=self.name, delay_s=round(delay, 3),
                     restarts=self.backoff.restarts)
            await trio.sleep(delay)

    def restart(self, why: str) -> None:
        """End the running child and start a new one at once, without counting
        it as a death (a reload that changes what the child is given at exec)."""
        if self.channel is not None and not self.channel.closed:
            self.log("child_restarting", child=self.name, reason=why)
            self._restart_now = True
            self.channel.close()

    async def _run_once(self) -> str:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            extra = self.extra_fds()
        except OSError as e:
            self.log("child_fds_failed", level="warning", child=self.name, error=e.strerror or str(e))
            extra = {}
        argv = [sys.executable, "-m", self.module, "--fd", str(child_sock.fileno()),
                "--parent", str(os.getpid()), *self.args]
        # An option may carry one socket or a list (one `--option FD` each: a relay's listeners).
        passed = [(option, s) for option, v in extra.items() for s in (v if isinstance(v, list) else [v])]
        for option, s in passed:
            argv += [f"--{option}", str(s.fileno())]
        fds = (child_sock.fileno(), *(s.fileno() for _, s in passed))
        try:
            # Popen here, in the event loop's own thread, not through
            # trio.lowlevel.open_process, which forks from a worker thread:
            # PR_SET_PDEATHSIG fires when the *thread* that forked the child
            # ends, and trio retires idle worker threads after 10 s.
            proc = subprocess.Popen(argv, pass_fds=fds, env=self._env(), stdin=subprocess.DEVNULL,  # noqa: ASYNC220
                                    close_fds=True)
        except OSError as e:
            parent_sock.close()
            return f"cannot start: {e.strerror or e}"
        finally:
            child_sock.close()
            for _, s in passed:
                s.close()
        pidfd = os.pidfd_open(proc.pid)
        self.pid = proc.pid
        self.starts += 1
        self.backoff.started(trio.current_time())
        self.log("child_started", child=self.name, pid=proc.pid)
        channel = self.channel = Channel(parent_sock, self.incoming, self.outgoing, self.log, self.name,
                                         max_size=self.max_size)
        reason = "ended"
        try:
            async with trio.open_nursery() as nursery:
                async def watch_process():
                    await trio.lowlevel.wait_readable(pidfd)
                    nursery.cancel_scope.cancel()
                nursery.start_soon(watch_process)
                nursery.start_soon(channel.sender)
                reason = await self._converse(channel)
                nursery.cancel_scope.cancel()
        finally:
            # The end of its socket ends a healthy child by itself; a hung one
            # is killed (which needs CAP_KILL: the child is another user's).
            channel.close()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(EXIT_GRACE_S):
                    await trio.lowlevel.wait_readable(pidfd)
                if proc.poll() is None:
                    try:
                        proc.kill()
                    except PermissionError:
                        self.log("child_kill_failed", level="error", child=self.name, pid=proc.pid,
                                 error="operation not permitted (no CAP_KILL)")
                    with trio.move_on_after(REAP_TIMEOUT_S):
                        await trio.lowlevel.wait_readable(pidfd)
                proc.poll()
                os.close(pidfd)
        status = describe_exit(proc.returncode)
        self.log("child_exited", level="error", child=self.name, pid=proc.pid, status=status,
                 reason=reason)
        self.pid = None
        return f"{status} ({reason})"

    async def _converse(self, channel: Channel) -> str:
        got_hello = trio.Event()
        timed_out = False
        result = "ended"

        def dispatch(m: Message) -> None:
            if got_hello.is_set():
                self.on_message(m)
            elif m.type == "hello":
                got_hello.set()
                self.up = True
                self.on_up(channel, m)
            else:
                self.log("imsg_rejected", level="warning", peer=self.name, where=m.type,
                         what="before hello")

        async with trio.open_nursery() as nursery:
            async def deadline() -> None:
                nonlocal timed_out
                with trio.move_on_after(self.hello_timeout):
                    await got_hello.wait()
                    return
                timed_out = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(deadline)
            result = await channel.messages(dispatch, self.on_batch)
            nursery.cancel_scope.cancel()
        return f"no hello within {self.hello_timeout:g} s" if timed_out else result
