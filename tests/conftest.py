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
