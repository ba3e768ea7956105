"""Lab tests: real namespaces, veths, bridges and nftables; root only.

Every test under tests/lab is skipped (with the reason) unless running as root
with `ip` and `nft` available.  The `lab` / `lab3` fixtures build the
netns-lab topology with a session-unique prefix and ALWAYS tear it down, with
every process started through them, whatever the test's outcome.  On failure
the daemons' log tails are attached to the report.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NETNS_LAB = REPO / "netns-lab"
for p in (str(NETNS_LAB), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

from meshlab import meshd_node as md  # noqa: E402
from meshlab.procs import Procs  # noqa: E402
from meshlab.topology import Lab, down, lab_namespaces  # noqa: E402

# Session-unique: namespaces of a crashed earlier run with another pid are not
# touched; interface names inside the namespaces do not carry the prefix.
PREFIX = f"mt{os.getpid() % 10000}-"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, veth pairs, nftables); run pytest as root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"lab tests need the `{tool}` command"
    return None


@pytest.fixture(autouse=True)
def _lab_requires_root():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _lab_session_cleanup():
    yield
    if _skip_reason() is None and lab_namespaces(PREFIX):
        down(PREFIX)


class LabRun:
    """A lab topology plus the processes started in it and a run directory."""

    def __init__(self, nodes: int):
        self.topo = Lab(PREFIX, nodes)
        self.up_seconds = self.topo.up()       # removes what it built if it fails
        # Short path: control sockets live under it (sun_path is 108 bytes).
        self.run_dir = tempfile.mkdtemp(prefix=f"mlab-{PREFIX}")
        # Hooks and scripts run as [node] script_user ("nobody"): it may pass
        # through (not list) the directory to the scripts the tests put there.
        os.chmod(self.run_dir, 0o711)
        self.procs = Procs(self.run_dir, env=md.child_env())

    # names
    @property
    def client(self) -> str:
        return self.topo.client

    @property
    def server(self) -> str:
        return self.topo.server

    def fw(self, n: int) -> str:
        return self.topo.fw(n)

    # meshd
    def start_meshd(self, n: int, groups=None, advbase_ms: int = 100):
        return md.start_meshd(self.procs, self.topo, n, groups, advbase_ms)

    def status(self, n: int) -> dict:
        return md.status(self.run_dir, n)

    def statuses(self, nodes) -> dict:
        return md.statuses(self.run_dir, list(nodes))

    def wait_states(self, want: dict, group_names, timeout: float = 10.0) -> dict:
        return md.wait_states(self.run_dir, want, list(group_names), timeout=timeout, procs=self.procs)

    def logs(self, lines: int = 60) -> str:
        return self.procs.logs(lines)

    def close(self, keep_run_dir: bool) -> None:
        try:
            self.procs.kill_all()
        finally:
            self.topo.down()
            if not keep_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)


def _lab_fixture(request, nodes: int):
    run = LabRun(nodes)
    request.node._lab_run = run
    failed = False
    try:
        yield run
    finally:
        rep = getattr(request.node, "rep_call", None)
        failed = rep is not None and rep.failed
        run.close(keep_run_dir=failed)
        if failed:
            print(f"lab run dir kept for inspection: {run.run_dir}")


@pytest.fixture
def lab(request):
    """A two-firewall lab, torn down (with all its processes) after the test."""
    yield from _lab_fixture(request, 2)


@pytest.fixture
def lab3(request):
    """A three-firewall lab, torn down (with all its processes) after the test."""
    yield from _lab_fixture(request, 3)


@pytest.fixture
def meshd_ready():
    """Skip when the daemon cannot run from this checkout yet."""
    ok, why = md.meshd_available()
    if not ok:
        pytest.skip(f"meshd not runnable yet: {why}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
    run = getattr(item, "_lab_run", None)
    if rep.failed and run is not None and rep.when in ("call", "setup"):
        rep.sections.append(("lab daemon logs", run.logs(60) or "(no process was started)"))
