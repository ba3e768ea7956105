"""The timer task every sans-I/O core needs in its trio shell."""

from __future__ import annotations

import math

import trio


class CoreTimer:
    """Sleeps until a core's next deadline, or until an input may have moved it.

    The shell calls `kick()` after feeding the core anything (a datagram, an
    event, a command): the deadline may now be earlier than the one slept on.
    """

    def __init__(self, core, dispatch):
        self.core = core
        self.dispatch = dispatch
        self._kicked = trio.Event()

    def kick(self) -> None:
        self._kicked.set()

    async def run(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            if deadline is not None and deadline <= trio.current_time():
                # A step of work is due at once (a resync, an adoption): let the
                # other tasks run first, without the cost of a cancelled wait.
                await trio.lowlevel.checkpoint()
            else:
                self._kicked = trio.Event()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._kicked.wait()
            now = trio.current_time()
            deadline = self.core.next_deadline()
            if deadline is not None and deadline <= now:
                self.dispatch(self.core.handle_timer(now))
