"""Discovery's I/O shell: DNS-SD on the sync link with the `zeroconf` package.

With `[sync] discover = true` the state mesh's shell runs one `Announcer`:

* it announces this node as `SERVICE_TYPE` on the sync interface's address
  alone (`Zeroconf(interfaces=[address])`: nothing is announced, and
  nothing heard, on any other link), its TXT record carrying the node id,
  name, sync port, the keyed fingerprint of the send key and the version
  (proto/sync.md, 3.2; `txt_record`);
* it browses the same type; each announcement heard is decoded and bounded
  here (`parse_announcement`: names, TXT sizes, counts, addresses of the
  sync family) and handed to the node core (`NodeCore.announced` /
  `withdrawn`), whose DiscoveryTable (meshd/sync/discovery.py) decides what
  it is.

Threads.  zeroconf runs its own threads (an asyncio loop, and the
browser's thread that calls our handler and resolves the service there).
That thread only decodes what it resolved into plain values and hands them
to the trio loop with `TrioToken.run_sync_soon` onto a bounded memory
channel (full: dropped and counted; zeroconf announces again); it never
touches the cores, the dispatcher or the log.  The trio task reads the
channel, passes the time in and dispatches.  Registration, update and
close are blocking zeroconf calls made from worker threads.

An announcement is unauthenticated: nothing here trusts it.  What it can
make this node do is bounded by the DiscoveryTable and the sync core
(docs/security.md, "Discovery").

Must not: decide anything about peers (discovery.py and the sync core do),
send a sync frame, or block the event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .discovery import MAX_ADDRESSES, MAX_HEARD, SERVICE_TYPE

MAX_TXT_BYTES = 512          # a larger TXT record is ignored whole
MAX_NAME = 64                # node name in the TXT record
MAX_VERSION = 32
MAX_INSTANCE = 63            # a DNS label
MAX_NAMES = 2 * MAX_HEARD    # service names followed at a time
QUEUE = 256                  # announcements between zeroconf's thread and the loop
RESOLVE_TIMEOUT_MS = 1500
CLOSE_TIMEOUT_S = 2.0
TXT_VERSION = "1"


@dataclass(frozen=True)
class Announcement:
    """One service as resolved, decoded and bounded (plain values only)."""
    name: str                      # the service instance name (the key)
    node: int | None
    node_name: str
    port: int | None
    fingerprint: str
    version: str
    addresses: tuple[str, ...]


def txt_record(node_id: int, name: str, port: int, fingerprint: str, version: str) -> dict[str, str]:
    """The TXT keys of proto/sync.md, 3.2."""
    return {"txtvers": TXT_VERSION, "id": str(node_id), "name": name[:MAX_NAME], "port": str(port),
            "fp": fingerprint, "v": version[:MAX_VERSION]}


def instance_name(node_id: int, name: str) -> str:
    """`fw1 (meshd 1)`, at most one DNS label (63 bytes)."""
    label = f"{name} (meshd {node_id})"
    while len(label.encode()) > MAX_INSTANCE:
        name = name[:-1]
        label = f"{name} (meshd {node_id})"
    return label


def _text(value, limit: int) -> str:
    if not isinstance(value, (bytes, bytearray)):
        return ""
    s = bytes(value[:limit * 4]).decode("utf-8", "replace")[:limit]
    return "".join(c if c.isprintable() else "?" for c in s)


def _int(value, lo: int, hi: int) -> int | None:
    if not isinstance(value, (bytes, bytearray)) or not 0 < len(value) <= 10 or not value.isdigit():
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def parse_announcement(name: str, properties: dict, text_len: int, srv_port: int | None,
                       addresses, family: int) -> Announcement | None:
    """What a resolved ServiceInfo says, bounded; None when it is not one of ours
    (too large, or not the service type).  Missing or malformed fields become
    None / "" and the DiscoveryTable says so ("malformed announcement")."""
    if not name.endswith("." + SERVICE_TYPE) or len(name) > 255 or text_len > MAX_TXT_BYTES:
        return None
    props = {k: v for k, v in (properties or {}).items() if isinstance(k, bytes)}
    fp = _text(props.get(b"fp"), 16)
    if len(fp) != 16 or any(c not in "0123456789abcdef" for c in fp):
        fp = ""
    port = _int(props.get(b"port"), 1, 65535)
    if port is None and srv_port and 1 <= srv_port <= 65535:
        port = srv_port
    kept: list[str] = []
    for a in addresses or ():
        try:
            ip = ipaddress.ip_address(a.split("%", 1)[0])
        except ValueError:
            continue
        if ip.version == family and not ip.is_multicast and not ip.is_unspecified \
                and str(ip) not in kept:
            kept.append(str(ip))
        if len(kept) >= MAX_ADDRESSES:
            break
    return Announcement(name[:-len(SERVICE_TYPE) - 1][:MAX_INSTANCE * 4], _int(props.get(b"id"), 1, 2**32 - 1),
                        _text(props.get(b"name"), MAX_NAME), port, fp,
                        _text(props.get(b"v"), MAX_VERSION), tuple(kept))


def interface_address(interface: str, family: int, exclude: set[str] = frozenset()) -> str | None:
    """This node's address on the sync interface (the first of the family that
    is not a virtual address; a global IPv6 one before a link-local one)."""
    from pyroute2 import IPRoute       # rtnetlink, as meshd/kernel/addresses.py
    found: list[str] = []
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=interface)
        if not index:
            return None
        for msg in ipr.addr("dump", index=index[0]):
            a = msg.get("local") or msg.get("address")
            try:
                parsed = ipaddress.ip_address(a)
            except (TypeError, ValueError):
                continue
            if parsed.version == family and str(parsed) not in exclude:
                found.append(str(parsed))
    found.sort(key=lambda a: ipaddress.ip_address(a).is_link_local)
    return found[0] if found else None


class Announcer:
    """The DNS-SD announcer and browser of one node (the sync shell runs it).

    Args:
        node: the NodeCore (announced, withdrawn).
        dispatch: the daemon's router for the actions those return.
        log: the event logger (from the trio loop only).
        node_id, name, port, fingerprint, version: what is announced.
        interface, family: the sync interface and address family.
        exclude: addresses never announced (the node's virtual addresses).
        on_change: called (on the loop) after the node core took an announcement in.
    """

    def __init__(self, node, dispatch, log, *, node_id: int, name: str, port: int, fingerprint: str,
                 version: str, interface: str, family: int, exclude: set[str] = frozenset(),
                 on_change: Callable[[], None] = lambda: None):
        self.node, self.dispatch, self.log = node, dispatch, log
        self.node_id, self.name, self.port = node_id, name, port
        self.fingerprint, self.version = fingerprint, version
        self.interface, self.family, self.exclude = interface, family, set(exclude)
        self.on_change = on_change
        self.address: str | None = None
        self.registered: str | None = None     # the instance name zeroconf registered
        self.error: str | None = None
        self.dropped = 0                       # announcements lost between the threads
        self.ignored = 0                       # too large, or names beyond MAX_NAMES
        self.keys: dict[str, set[str]] = {}    # service name -> the table's keys (one per address)
        self._zc = None
        self._info = None
        self._browser = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._send, self._receive = trio.open_memory_channel(QUEUE)
        self._names: set[str] = set()          # touched by zeroconf's thread only

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Announce, browse, feed the node core; on cancellation say goodbye."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            await self._start()
        except Exception as e:              # no discovery, but the node runs on with its peers
            self.error = f"{type(e).__name__}: {e}"
            self.log("discovery_failed", level="error", interface=self.interface, error=self.error)
            await self._close()
            return
        try:
            async for item in self._receive:
                self._take(item)
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def _start(self) -> None:
        from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, Zeroconf
        self.address = await trio.to_thread.run_sync(interface_address, self.interface, self.family,
                                                     self.exclude)
        if self.address is None:
            raise OSError(f"no IPv{self.family} address on {self.interface} to announce")
        version = IPVersion.V6Only if self.family == 6 else IPVersion.V4Only
        self._zc = await trio.to_thread.run_sync(
            lambda: Zeroconf(interfaces=[self.address], ip_version=version))
        host = f"meshd-{self.node_id}-{self.fingerprint[:8]}.local."
        self._info = ServiceInfo(
            SERVICE_TYPE, f"{instance_name(self.node_id, self.name)}.{SERVICE_TYPE}",
            port=self.port, server=host, parsed_addresses=[self.address],
            properties=txt_record(self.node_id, self.name, self.port, self.fingerprint, self.version))
        await trio.to_thread.run_sync(lambda: self._zc.register_service(self._info, allow_name_change=True))
        self.registered = self._info.name
        self.log("discovery_announced", name=self._info.name, address=self.address, port=self.port,
                 fingerprint=self.fingerprint)
        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_state_change])

    async def set_fingerprint(self, fingerprint: str) -> None:
        """A reload changed the send key: the TXT record follows."""
        self.fingerprint = fingerprint
        if self._zc is None or self._info is None or self.registered is None:
            return
        self._info.properties = txt_record(self.node_id, self.name, self.port, fingerprint, self.version)
        await trio.to_thread.run_sync(self._zc.update_service, self._info)

    async def _close(self) -> None:
        zc, self._zc = self._zc, None
        if zc is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT_S):       # goodbyes, then the sockets
            await trio.to_thread.run_sync(zc.close, abandon_on_cancel=True)

    def status(self) -> dict:
        return {"address": self.address, "interface": self.interface, "announced_as": self.registered,
                "fingerprint": self.fingerprint, "error": self.error,
                "dropped": self.dropped, "ignored": self.ignored}

    # ------------------------------------------------------------------ zeroconf's thread

    def _on_state_change(self, zeroconf, service_type: str, name: str, state_change) -> None:
        """Called by zeroconf's browser thread: resolve, decode, hand over."""
        try:
            removed = state_change.name == "Removed"
            if removed:
                self._names.discard(name)
                self._hand_over(("removed", name))
                return
            if name not in self._names and len(self._names) >= MAX_NAMES:
                self._hand_over(("ignored", name))
                return
            self._names.add(name)
            info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
            if info is None:
                return
            text = info.text or b""
            a = parse_announcement(name, info.properties, len(text), info.port,
                                   info.parsed_scoped_addresses(), self.family)
            self._hand_over(("heard", a) if a is not None else ("ignored", name))
        except Exception:                   # never let a bad record kill zeroconf's thread
            self._hand_over(("ignored", name))

    def _hand_over(self, item) -> None:
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._put, item)
        except trio.RunFinishedError:
            pass

    # ------------------------------------------------------------------ the loop

    def _put(self, item) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _take(self, item) -> None:
        kind, what = item
        now = trio.current_time()
        if kind == "ignored":
            self.ignored += 1
            return
        if kind == "removed":
            for key in self.keys.pop(what, ()):
                self.dispatch(self.node.withdrawn(key, now))
            self.on_change()
            return
        a: Announcement = what
        full = a.name + "." + SERVICE_TYPE
        keys = {f"{a.name}@{address}" for address in a.addresses}
        if not keys:
            self.ignored += 1               # nowhere to send a heartbeat: nothing to try
        for key in self.keys.get(full, set()) - keys:
            self.dispatch(self.node.withdrawn(key, now))
        self.keys[full] = keys
        for address in a.addresses:
            self.dispatch(self.node.announced(f"{a.name}@{address}", a.node, a.node_name, address,
                                              a.port, a.fingerprint, now))
        self.on_change()


__all__ = ["Announcement", "Announcer", "instance_name", "interface_address", "parse_announcement",
           "txt_record"]
