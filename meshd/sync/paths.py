"""Which path to each peer the state mesh sends on (sans-I/O, time passed in).

A peer may be reached by several paths ([sync] peers' `addresses`, in order
of preference: the dedicated link first, the LAN as a backup).  A path is
judged by what already arrives over it: every authentic frame of the peer
from that path's address (its heartbeats go out on every path, its DATA and
acknowledgements on the one it prefers) counts as *heard*.  A path is up
while it was heard within `timeout_s`.

The rule, per peer:
- the active path is down and another is up: switch at once to the most
  preferred one that is up (frames meanwhile are repaired by the reliability
  layer: the peer NACKs what it missed, over the new path); when none is up
  but the kernel has no route for the active one, to the most preferred
  one it has not refused;
- the active path is up and a more preferred one has been up without a gap
  for `return_s`: switch back to it (hysteresis: a flapping link is not used
  until it holds);
- the peer's own frames (all but its heartbeats: they go over the one path
  it uses) have come over a less preferred path than ours for `timeout_s`
  since our last switch: it does not hear us over ours (a loss in one
  direction only, which our heartbeats from it cannot show): follow it, and
  do not go back to the path left until the peer's frames come over it
  again, or RETRY_LEFT_S later (should the frame that said so be lost: a
  peer that switches sends its ABOUT at once over its new path,
  SyncCore.about_soon);
- nothing is up: stay (no path is known to be better, and the peer's
  timeout, not this table, says when it is absent).

A path is given `timeout_s` of grace after it is configured, so that the
first frames of a start do not look like a failure of the preferred path.

Must not: read a clock, touch a socket, log, or look inside a frame: the
shell (sync/shell.py) says what was heard where and carries out the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

# A path left to follow the peer (a loss in one direction) is tried again
# after this long even if the peer's frames never came back over it: that
# costs one path timeout of frames (resent) per try, and no two nodes can
# each wait for the other forever.
RETRY_LEFT_S = 30.0


@dataclass(frozen=True, slots=True)
class PathSwitch:
    """The frames to `peer` go over path `new` (index into its addresses) now."""
    peer: int
    old: int
    new: int
    old_address: str
    new_address: str
    reason: str


class _Path:
    __slots__ = ("address", "heard", "up_since", "added", "refused", "frames")

    def __init__(self, address: str, now: float | None):
        self.address = address
        self.heard: float | None = None       # last authentic frame over it
        self.up_since: float | None = None    # first frame of the current run without a gap
        self.added = now                      # None: from the peer's first frame
        self.refused: float | None = None     # the kernel refused to send over it (no route)
        self.frames = 0                       # authentic frames heard over it


class _PeerPaths:
    __slots__ = ("paths", "active", "switches", "last_switch", "last_switch_at",
                 "theirs", "theirs_since", "theirs_at", "shunned", "shunned_at")

    def __init__(self, addresses, now: float | None):
        self.paths = [_Path(a, now) for a in addresses]
        self.active = 0
        self.switches = 0
        self.last_switch: PathSwitch | None = None
        self.last_switch_at: float | None = None
        # The path the peer's own frames come over (all but heartbeats), since
        # when, and the last one; the path we left to follow it (not used again
        # until the peer's frames come over it, or a more preferred one).
        self.theirs: int | None = None
        self.theirs_since = 0.0
        self.theirs_at = 0.0
        self.shunned: int | None = None
        self.shunned_at = 0.0


class PathTable:
    """The paths to every peer and the one in use for each.

    Args:
        timeout_s: a path not heard for this long is down.
        return_s: how long a more preferred path must have been up before the
            frames go back to it.
    Raises ValueError for a non-positive timeout or a negative return_s.
    """

    def __init__(self, timeout_s: float, return_s: float):
        self.set_timers(timeout_s, return_s)
        self.peers: dict[int, _PeerPaths] = {}

    def set_timers(self, timeout_s: float, return_s: float) -> None:
        if timeout_s <= 0 or return_s < 0:
            raise ValueError("path timeout must be positive and return time not negative")
        self.timeout_s = timeout_s
        self.return_s = return_s

    def configure(self, peers: dict[int, tuple[str, ...]], now: float | None) -> None:
        """The peers and their addresses (in order of preference), at start and
        reload; `now` None (at start, before any clock runs): the grace of a
        path counts from the first frame of its peer.  What is known of an
        address that stays is kept; the active path follows its address, or
        goes back to the first one if it was removed."""
        table = {}
        for pid, addresses in peers.items():
            if not addresses:
                continue
            old = self.peers.get(pid)
            pp = _PeerPaths(addresses, now)
            if old is not None:
                known = {p.address: p for p in old.paths}
                pp.paths = [known.get(a) or _Path(a, now) for a in addresses]
                current = old.paths[old.active].address
                pp.active = next((i for i, a in enumerate(addresses) if a == current), 0)
                pp.switches, pp.last_switch = old.switches, old.last_switch
                pp.last_switch_at = old.last_switch_at
                if [p.address for p in old.paths] == list(addresses):
                    pp.theirs, pp.theirs_since, pp.theirs_at = old.theirs, old.theirs_since, old.theirs_at
                    pp.shunned, pp.shunned_at = old.shunned, old.shunned_at
            table[pid] = pp
        self.peers = table

    def index_of(self, peer: int, address: str) -> int | None:
        """Which of `peer`'s paths `address` is (None: none of them)."""
        pp = self.peers.get(peer)
        if pp is not None:
            for i, p in enumerate(pp.paths):
                if p.address == address:
                    return i
        return None

    def heard(self, peer: int, index: int, now: float, own: bool = False) -> PathSwitch | None:
        """An authentic frame of `peer` arrived over path `index`: judge its
        paths again; the switch, if one is due now.  `own`: a frame the peer
        sends over the one path it uses (anything but a heartbeat)."""
        pp = self.peers.get(peer)
        if pp is None or not 0 <= index < len(pp.paths):
            return None
        if pp.paths[0].added is None:           # the peer's first frame: the grace starts
            for q in pp.paths:
                q.added = now
        p = pp.paths[index]
        if not self._up(p, now):
            p.up_since = now                    # up again (or for the first time)
        p.heard = now
        p.frames += 1
        if own:
            if pp.theirs != index:
                pp.theirs, pp.theirs_since = index, now
            pp.theirs_at = now
            if pp.shunned is not None and index <= pp.shunned:
                pp.shunned = None               # it hears us there again
        return self._judge(peer, pp, now)

    def unreachable(self, peer: int, index: int, now: float) -> PathSwitch | None:
        """The kernel refused to send to `peer` over path `index` (no route: its
        link is down here): down at once, without waiting for the timeout; the
        switch, if one is due now.  Up again when the peer is heard over it."""
        pp = self.peers.get(peer)
        if pp is None or not 0 <= index < len(pp.paths):
            return None
        p = pp.paths[index]
        if self._no_route(p):
            return None                         # known already: one judgement per failure
        p.refused = now
        return self._judge(peer, pp, now)

    def _up(self, p: _Path, now: float) -> bool:
        return p.heard is not None and now - p.heard <= self.timeout_s and \
            (p.refused is None or p.heard > p.refused)

    @staticmethod
    def _no_route(p: _Path) -> bool:
        """The kernel refused to send over it, and nothing came over it since."""
        return p.refused is not None and (p.heard is None or p.refused >= p.heard)

    def _usable(self, pp: _PeerPaths, i: int, now: float) -> bool:
        if i == pp.shunned and now - pp.shunned_at < RETRY_LEFT_S:
            return False
        return self._up(pp.paths[i], now)

    def _judge(self, peer: int, pp: _PeerPaths, now: float) -> PathSwitch | None:
        cur = pp.paths[pp.active]
        cur_alive = self._up(cur, now) or \
            (cur.heard is None and cur.refused is None and
             (cur.added is None or now - cur.added <= self.timeout_s))     # its grace
        if not cur_alive:
            new = next((i for i, p in enumerate(pp.paths) if self._usable(pp, i, now)), None)
            if new is None:
                new = next((i for i, p in enumerate(pp.paths) if self._up(p, now)), None)
            if new is None and self._no_route(cur):
                # Certainly futile where it is: any path not known to be down.
                new = next((i for i, p in enumerate(pp.paths)
                            if i != pp.active and not self._no_route(p)), None)
            if new is None:
                return None
            why = ("unreachable (no route)" if self._no_route(cur) else
                   "never heard" if cur.heard is None else f"not heard for {now - cur.heard:.3g} s")
            return self._switch(peer, pp, new, f"{cur.address} {why}", now)
        k = pp.theirs
        if k is not None and k > pp.active and now - pp.theirs_at <= self.timeout_s and \
                now - max(pp.theirs_since, pp.last_switch_at or pp.theirs_since) >= self.timeout_s \
                and self._up(pp.paths[k], now):
            left = pp.active
            switch = self._switch(peer, pp, k, f"the peer's frames come over {pp.paths[k].address}: "
                                               f"it does not hear us over {cur.address}", now)
            pp.shunned, pp.shunned_at = left, now
            return switch
        for i in range(pp.active):
            p = pp.paths[i]
            if self._usable(pp, i, now) and now - p.up_since >= self.return_s:
                return self._switch(peer, pp, i, f"{p.address} up for {now - p.up_since:.3g} s", now)
        return None

    def _switch(self, peer: int, pp: _PeerPaths, new: int, reason: str, now: float) -> PathSwitch:
        s = PathSwitch(peer, pp.active, new, pp.paths[pp.active].address, pp.paths[new].address, reason)
        pp.active = new
        pp.switches += 1
        pp.last_switch, pp.last_switch_at = s, now
        return s

    def address(self, peer: int) -> str | None:
        """The address frames to `peer` go to now (None: not a peer with paths)."""
        pp = self.peers.get(peer)
        return pp.paths[pp.active].address if pp is not None else None

    def active(self, peer: int) -> int | None:
        pp = self.peers.get(peer)
        return pp.active if pp is not None else None

    def others(self, peer: int) -> list[str]:
        """The addresses of `peer`'s paths not in use (heartbeats probe them)."""
        pp = self.peers.get(peer)
        if pp is None:
            return []
        return [p.address for i, p in enumerate(pp.paths) if i != pp.active]

    def switches(self) -> dict[int, int]:
        """Path switches per peer since start (reloads keep them)."""
        return {pid: pp.switches for pid, pp in self.peers.items()}

    def status(self, now: float) -> dict[int, dict]:
        """Per peer: the active path, the switches and the last one, each path's
        address, whether it is up and how long ago it was heard."""
        out = {}
        for pid, pp in self.peers.items():
            last = pp.last_switch
            out[pid] = {
                "active": pp.active,
                "address": pp.paths[pp.active].address,
                "switches": pp.switches,
                "peer_uses": None if pp.theirs is None else pp.paths[pp.theirs].address,
                "last_switch": None if last is None else
                {"from": last.old_address, "to": last.new_address, "reason": last.reason,
                 "ago_s": round(now - pp.last_switch_at, 3)},
                "paths": [{"address": p.address, "up": self._up(p, now), "frames": p.frames,
                           "heard_ago_s": None if p.heard is None else round(now - p.heard, 3)}
                          for p in pp.paths],
            }
        return out
