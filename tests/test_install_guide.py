"""docs/install.md stays true: its configuration passes `meshd --check` on both nodes.

(tests/lab/test_install_guide_lab.py loads its nftables ruleset and sysctls
into a real kernel.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from meshd.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "install.md"


def guide_block(language: str, after: str) -> str:
    """The first ```language block of the guide that follows the line starting with `after`."""
    text = GUIDE.read_text()
    start = text.index("\n" + after)
    m = re.compile(rf"^```{language}\n(.*?)^```$", re.DOTALL | re.MULTILINE).search(text, start)
    assert m, f"{GUIDE}: no ```{language} block after {after!r}"
    return m.group(1)


def for_fw2(fw1: str) -> str:
    """fw2's file: every value commented `# fw2: VALUE` replaced by VALUE."""
    return re.sub(r"^(\s*[\w.]+\s*=\s*).*?#\s*fw2:\s*(.+)$", r"\1\2", fw1, flags=re.MULTILINE)


@pytest.mark.parametrize("node", ["fw1", "fw2"])
def test_guide_configuration_passes_check(tmp_path, capsys, node):
    fw1 = guide_block("toml", "## 4. The configuration")
    text = fw1 if node == "fw1" else for_fw2(fw1)
    if node == "fw2":
        assert 'name = "fw2"' in text and "advskew = 100" in text and '"198.51.100.1"' in text
    key = tmp_path / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    conf = tmp_path / "meshd.toml"
    conf.write_text(text)
    assert main(["--config", str(conf), "--check"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    n = 1 if node == "fw1" else 2
    # The line the guide quotes in "8. Check, then start".
    assert f"OK: node {node} (id {n}), groups: lan (id 10, eth1), wan (id 20, eth0)" in out
