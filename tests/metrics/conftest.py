"""The `exported` fixture: one scrape of a node core that lived a little (metrics_helpers)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics_helpers import MeshdCollector, run_a_node, scrape, take  # noqa: E402


@pytest.fixture(scope="module")
def exported():
    node, now = run_a_node()
    return node, scrape(MeshdCollector(lambda: take(node, now)))
