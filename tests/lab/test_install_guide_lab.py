"""docs/install.md in a real kernel: its nftables ruleset and sysctls load on a lab firewall.

The ruleset must load twice in a row (reloads) and leave meshd's own table
alone, which is why the guide replaces Debian's `flush ruleset`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from meshlab.topology import nsexec

pytestmark = pytest.mark.lab

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "install.md"


def guide_block(after: str, language: str = "") -> str:
    text = GUIDE.read_text()
    m = re.compile(rf"^```{language}\n(.*?)^```$", re.DOTALL | re.MULTILINE).search(text, text.index("\n" + after))
    assert m, f"{GUIDE}: no code block after {after!r}"
    return m.group(1)


def run_in(ns: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(nsexec(ns, *argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)


def test_guide_ruleset_loads_again_and_again_and_keeps_meshds_table(lab):
    ns = lab.fw(1)
    ruleset = guide_block("`/etc/nftables.conf` on fw1")
    assert "flush ruleset\n" not in ruleset.replace('"flush ruleset"', "")
    assert run_in(ns, "nft", "flush", "ruleset").returncode == 0
    assert run_in(ns, "nft", "add", "table", "inet", "meshd").returncode == 0
    for attempt in (1, 2):
        p = run_in(ns, "nft", "-f", "-", stdin=ruleset)
        assert p.returncode == 0, f"load {attempt}: {p.stderr}"
    tables = run_in(ns, "nft", "list", "tables").stdout.split("\n")
    assert {"table inet filter", "table ip nat", "table inet meshd"} <= {t.strip() for t in tables}
    nat = run_in(ns, "nft", "list", "table", "ip", "nat").stdout
    assert "snat to 203.0.113.10 fully-random" in nat


def test_guide_sysctls_apply(lab):
    ns = lab.fw(1)
    settings = []
    for line in guide_block("`/etc/sysctl.d/90-meshd.conf`").splitlines():
        line = line.split("#")[0].strip()
        if line:
            key, value = (part.strip() for part in line.split("="))
            settings.append((key, value))
    assert ("net.netfilter.nf_conntrack_tcp_loose", "0") in settings
    for key, value in settings:
        p = run_in(ns, "sysctl", "-q", "-w", f"{key}={value}")
        assert p.returncode == 0, f"{key}: {p.stderr}"
        assert run_in(ns, "sysctl", "-n", key).stdout.strip() == value
