"""The systems the benchmark compares, behind one small interface.

`System` is what `meshlab.bench` drives: start daemons on some firewalls of a
lab, kill a node, read cache sizes, commit a cache into the kernel, stop.  Two
implementations exist:

  * `MeshdSystem` (here): meshd with its `[sync]` state mesh, through the lab's
    own helpers (scenarios.start_mesh / wait_mesh, meshd_node's control socket).
  * `ReferenceSystem` (meshlab/reference.py): keepalived + conntrackd.  It is
    imported lazily by `make_system`, so the harness works without it.

Every process is started under the caller's `Procs`, so it is tracked by pid and
its log lands in the run dir.
"""

from __future__ import annotations

import os
import signal
import time

from . import meshd_node as md
from . import scenarios as sc
from .procs import Procs
from .topology import VIRTUAL_ADDRESSES, Lab, LabError

SYSTEM_NAMES = ("meshd", "reference")


class System:
    """The interface both implementations offer (documented here, duck-typed in the harness).

    Attributes:
      name: "meshd" or "reference".
      sync_port: UDP port of replication on sync0 (the loss rule drops a share of it).
    """

    name: str = "?"
    sync_port: int = 0

    def __init__(self, procs: Procs, lab: Lab, advbase_ms: int = 100):
        self.procs = procs
        self.lab = lab
        self.advbase_ms = advbase_ms

    def start(self, nodes=(1, 2), commit: str | None = None) -> None:
        """Start the daemons on `nodes`; return when fw1 holds every virtual address, the
        others are backups and replication is connected and in sync.

        commit: meshd's [sync] commit mode ("continuous" by default, or "takeover");
        the reference ignores it (conntrackd commits on takeover only).
        """
        raise NotImplementedError

    def daemon_pids(self, n: int) -> list[int]:
        """Every daemon process of node n (for CPU and RSS from /proc)."""
        raise NotImplementedError

    def kill(self, n: int) -> float:
        """SIGKILL every daemon of node n; return time.monotonic() of the kill."""
        raise NotImplementedError

    def external_count(self, n: int, origin: int = 1) -> int:
        """Entries from `origin` in node n's external cache."""
        raise NotImplementedError

    def internal_count(self, n: int) -> int:
        raise NotImplementedError

    def commit(self, n: int) -> None:
        """Commit node n's external cache into its kernel table; return when done."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the daemons this object started (by pid); the lab stays up."""
        raise NotImplementedError


class MeshdSystem(System):
    """meshd on each node: the edge groups (lan, srv) and [sync] with unicast peers on sync0."""

    name = "meshd"
    sync_port = md.SYNC_PORT

    def __init__(self, procs: Procs, lab: Lab, advbase_ms: int = 100):
        super().__init__(procs, lab, advbase_ms)
        self.nodes: tuple[int, ...] = ()

    def _proc_name(self, n: int) -> str:
        return md.MESHD_LOG.format(n=n)

    def start(self, nodes=(1, 2), commit: str | None = None, timeout: float = 15.0) -> None:
        nodes = tuple(nodes)
        if 1 not in nodes or len(nodes) < 2:
            raise LabError(f"meshd: start needs node 1 and at least one backup, not {nodes}")
        ok, why = md.meshd_available()
        if not ok:
            raise LabError(f"cannot run meshd from this checkout: {why}")
        self.nodes = nodes
        names = sc.start_mesh(self.procs, self.lab, nodes, self.advbase_ms, sync=True,
                              sync_options={"commit": commit or "continuous"})
        sc.wait_mesh(self.procs, nodes, names, sync=True, timeout=timeout)
        # MASTER state is reported before the address changes are visible to everyone:
        # wait until fw1 really holds them, as the interface promises.
        _wait_addresses(self.lab, 1, timeout=5.0)

    def daemon_pids(self, n: int) -> list[int]:
        """The daemon and its children (the wire engine, the check engine): their
        CPU and memory are meshd's as much as the main process's."""
        from .reference import descendants
        proc = self.procs.procs.get(self._proc_name(n))
        return descendants([proc.pid]) if proc is not None and proc.alive() else []

    def kill(self, n: int) -> float:
        return self.procs.send_signal(self._proc_name(n), signal.SIGKILL)

    def _stats(self, n: int) -> dict:
        st = md.sync_stats(self.procs.run_dir, n)
        if not st.get("ok"):
            raise LabError(f"meshd fw{n}: stats: {st.get('error')}")
        return st

    def external_count(self, n: int, origin: int = 1) -> int:
        return md.external_count(self._stats(n), origin)

    def internal_count(self, n: int) -> int:
        return md.internal_count(self._stats(n))

    def commit(self, n: int, timeout: float = 120.0) -> None:
        answer = md.control(self.procs.run_dir, n, {"cmd": "commit"}, timeout=timeout)
        if not answer.get("ok"):
            raise LabError(f"meshd fw{n}: commit: {answer.get('error')}")
        if answer.get("failed"):
            raise LabError(f"meshd fw{n}: commit: {answer['failed']} of "
                           f"{answer['failed'] + answer.get('committed', 0)} entries failed: {answer.get('errors')}")

    def stop(self, wait: float = 5.0) -> None:
        """SIGTERM to every node at once (each shuts down in parallel), SIGKILL after `wait` s."""
        names = [self._proc_name(n) for n in self.nodes if self._proc_name(n) in self.procs.procs]
        for name in names:
            self.procs.send_signal(name, signal.SIGTERM)
        deadline = time.monotonic() + wait
        for name in names:
            if self.procs.wait(name, max(0.0, deadline - time.monotonic())) is None:
                self.procs.kill(name, signal.SIGKILL, wait=5.0)
        self.nodes = ()


def _wait_addresses(lab: Lab, n: int, timeout: float) -> None:
    want = {a.split("/")[0] for a in VIRTUAL_ADDRESSES}
    deadline = time.monotonic() + timeout
    while True:
        held = {a.split("/")[0] for addrs in lab.addresses(lab.fw(n)).values() for a in addrs}
        if want <= held:
            return
        if time.monotonic() >= deadline:
            raise LabError(f"fw{n} is MASTER but holds only {sorted(want & held)} of the virtual "
                           f"addresses {sorted(want)} after {timeout:g} s")
        time.sleep(0.05)


def make_system(name: str, procs: Procs, lab: Lab, advbase_ms: int = 100) -> System:
    """The system called `name`; the reference is imported only when asked for.

    Raises LabError when reference.py is missing or cannot be imported.
    """
    if name == "meshd":
        return MeshdSystem(procs, lab, advbase_ms)
    if name == "reference":
        return reference_module().ReferenceSystem(procs, lab, advbase_ms)
    raise LabError(f"unknown system {name!r}: expected one of {', '.join(SYSTEM_NAMES)}")


def reference_module():
    """meshlab.reference, or LabError saying why it is not usable."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.py")
    if not os.path.exists(path):
        raise LabError(f"the reference system is not available: {path} does not exist yet")
    try:
        from . import reference
    except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised further
        raise LabError(f"the reference system cannot be imported from {path}: {type(e).__name__}: {e}") from e
    return reference
