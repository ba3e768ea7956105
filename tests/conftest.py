"""Fixtures for tests that start real programs (hooks, track scripts, script checks).

meshd starts them as `[node] script_user` ("nobody" by default), never as
itself: such a test needs a user to run them as, and a directory that user
can reach.  pytest's tmp_path lives under /tmp/pytest-of-USER (mode 700),
which "nobody" cannot enter, so the scripts and what they write go to
`script_dir` instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from meshd.runas import RunAs, default_run_as, resolve_run_as


@pytest.fixture
def script_user() -> RunAs:
    """"nobody" as root (the default of script_user); otherwise this user, the only
    identity an unprivileged test process can start a program as."""
    return default_run_as() if os.geteuid() == 0 else resolve_run_as(os.geteuid())


@pytest.fixture
def script_dir():
    """A fresh directory under /tmp that script_user can read and write (1777, like /tmp).

    The scripts written in it stay owned by the test's user, mode 755 (safe
    for preflight: the sticky bit keeps others from replacing them).
    """
    path = tempfile.mkdtemp(prefix="meshd-scripts-", dir="/tmp")
    os.chmod(path, 0o1777)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


LAB_DIR = Path(__file__).resolve().parent / "lab"


# Lab tests that load both cores for long (floods, 20k flows/s, 100k-200k
# entries) or that are known to be timing-sensitive under load: they run last
# in the lab group, when the other worker has finished the unit tests.
LAB_LAST = ("test_flood_lab.py", "test_churn_adverts_lab.py", "test_resync_lab.py",
            "test_sync_paths_lab.py", "test_health_lab.py", "test_state_mesh_lab.py")


@pytest.hookimpl(tryfirst=True)     # before xdist's loadgroup reads the marks
def pytest_collection_modifyitems(config, items):
    """Every lab test in one xdist group: they run one after another on one
    worker (each brings up daemons whose timers are the behaviour under test,
    and two labs at once would share the two cores), while the other worker
    runs the unit and simulation tests beside them (pyproject's addopts:
    `-n 2 --dist loadgroup`); the heaviest lab tests last (LAB_LAST)."""
    def is_lab(item) -> bool:
        return LAB_DIR in Path(str(item.fspath)).parents

    for item in items:
        if is_lab(item):
            item.add_marker(pytest.mark.xdist_group("lab"))
    last = [i for i in items if is_lab(i) and Path(str(i.fspath)).name in LAB_LAST]
    last.sort(key=lambda i: LAB_LAST.index(Path(str(i.fspath)).name), reverse=True)
    if last:
        rest = [i for i in items if not (is_lab(i) and Path(str(i.fspath)).name in LAB_LAST)]
        items[:] = rest + last
