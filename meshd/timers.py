"""CoreTimer: the timer task every sans-I/O core needs in its trio shell.

The daemon runs one, for the node core (through election/shell.py's
ReadFirst): it sleeps until `core.next_deadline()`, or until `kick()` says an
input may have moved it, and hands `core.handle_timer(now)` to `dispatch`.  A
deadline already due (a step of a kernel resync or an adoption) yields with a
plain checkpoint, so a long run of steps never holds the event loop.

Must not: decide what is due (the core does), or read any clock but trio's:
`now` is trio.current_time(), the clock the shells pass the core too.
"""

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
