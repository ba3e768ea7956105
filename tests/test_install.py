"""scripts/install into a temporary tree: a virtual environment with meshd from a wheel, the unit, /etc/meshd.

Why offline: CI has PyPI, but a test that downloads cryptography and trio on
every run is slow and fails with the network. So the environment is made with
--system-site-packages from the interpreter running the tests (which has
meshd's dependencies, installed by scripts/setup) and pip installs the wheel
with --no-index. The wheel is built the way production builds it (Debian's
python3 with its setuptools and wheel, no PyPI either). What the shortcut
could hide is checked instead:

* declared: every third-party module the meshd package imports belongs to a
  distribution listed in the wheel's Requires-Dist (an undeclared dependency
  would work here, seen through the system site, and fail in production);
* resolved: pip installed the wheel *with* its dependencies and --no-index,
  which fails if one is missing, and each requirement's installed version is
  within its specifier;
* not the source tree, not editable: meshd is imported from the
  environment's own site-packages although an editable meshd is visible
  through the system site;
* no test extras: pytest and hypothesis are not in the environment's own
  site-packages.

scripts/install with PyPI (no --system-site-packages, no --no-index) was
run by hand on this machine: 5.9 s, trio 0.35, cryptography 50, pyroute2 0.9.7.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install"


def _debian_build_tools() -> bool:
    """Whether Debian's python3 can build the wheel as scripts/install does it."""
    if not os.path.exists("/usr/bin/python3"):
        return False
    return subprocess.run(["/usr/bin/python3", "-c", "import setuptools, wheel, pip"],
                          capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(
    not _debian_build_tools(),
    reason="scripts/install builds the wheel with Debian's python3 (python3-setuptools, python3-wheel, python3-pip)")


# Run inside the environment: what it imports and what meshd's metadata declares.
PROBE = r"""
import importlib.metadata as md, json, sys, sysconfig
from pip._vendor.packaging.requirements import Requirement
import meshd, meshd.daemon, meshd.sync.shell, meshd.health.shell, meshd.node.core, meshd.kernel.nft, meshd.fastct
dist = md.distribution("meshd")
runtime = [r for r in map(Requirement, dist.requires or []) if r.marker is None or r.marker.evaluate({"extra": ""})]
versions = {}
for r in runtime:
    try:
        versions[r.name] = md.version(r.name)
    except md.PackageNotFoundError:
        versions[r.name] = None
print(json.dumps({
    "meshd_file": meshd.__file__,
    "purelib": sysconfig.get_paths()["purelib"],
    "direct_url": dist.read_text("direct_url.json"),
    "requires": {r.name: str(r.specifier) for r in runtime},
    "satisfied": {r.name: versions[r.name] is not None and r.specifier.contains(versions[r.name], prereleases=True)
                  for r in runtime},
    "extras": list(dist.metadata.get_all("Provides-Extra") or []),
    "module_dists": md.packages_distributions(),
    "hot_path": meshd.fastct.implementation(),
}))
"""


def third_party_imports() -> set[str]:
    """Top-level modules the meshd package imports that are neither stdlib nor meshd."""
    found = set()
    for path in (REPO / "meshd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "meshd"}


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: the installed meshd must not be found through the source tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run_install(tree: Path) -> subprocess.CompletedProcess:
    argv = ["bash", str(INSTALL), "--prefix", str(tree / "opt/meshd"), "--unit-dir", str(tree / "units"),
            "--config-dir", str(tree / "etc/meshd"), "--python", sys.executable,
            "--system-site-packages", "--no-index", "--no-apt"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tree, check=False)
    assert p.returncode == 0, f"scripts/install failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tree = tmp_path_factory.mktemp("install")
    before = {p.name for p in REPO.iterdir()} | {p.name for p in (REPO / "meshd").iterdir()}
    start = time.monotonic()
    output = run_install(tree)
    print(f"scripts/install into a new tree: {time.monotonic() - start:.1f} s")
    after = {p.name for p in REPO.iterdir()} | {p.name for p in (REPO / "meshd").iterdir()}
    assert after - before - {"__pycache__"} == set(), "the install left build files in the source tree"
    yield tree, output
    shutil.rmtree(tree, ignore_errors=True)


def venv_run(tree: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([str(tree / "opt/meshd/bin" / argv[0]), *argv[1:]], capture_output=True, text=True,
                       timeout=60, env=clean_env(), cwd=tree, check=False)
    if check:
        assert p.returncode == 0, f"{argv}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def probe(installed):
    tree, _ = installed
    return json.loads(venv_run(tree, "python", "-c", PROBE).stdout)


def test_the_wheel_carries_the_accelerator_where_it_can_be_built(probe):
    """scripts/install builds the wheel with Debian's python3: with gcc and that
    python's Python.h (python3-dev) the accelerator is compiled into it."""
    include = subprocess.run(["/usr/bin/python3", "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if shutil.which("gcc") is None or not (Path(include) / "Python.h").exists():
        pytest.skip("no gcc or no python3-dev: the wheel is pure Python here")
    assert probe["hot_path"] == "c"


def test_entry_points_run(installed):
    tree, _ = installed
    assert venv_run(tree, "meshd", "--version").stdout.strip() == "meshd 0.1.0"
    assert "Query and steer a running meshd" in venv_run(tree, "meshctl", "--help").stdout
    missing = venv_run(tree, "meshctl", "--socket", str(tree / "none.sock"), "status", check=False)
    assert missing.returncode != 0 and "cannot connect to" in missing.stderr
    for script in ("meshd", "meshctl"):
        first_line = (tree / "opt/meshd/bin" / script).read_text().splitlines()[0]
        assert first_line == f"#!{tree}/opt/meshd/bin/python", first_line


def test_meshd_comes_from_the_environment_not_the_source_tree(installed, probe):
    tree, _ = installed
    site = Path(probe["purelib"])
    assert site.is_relative_to(tree / "opt/meshd")
    assert Path(probe["meshd_file"]) == site / "meshd" / "__init__.py"
    # pip records the wheel it installed from; an editable install would say {"dir_info": {"editable": true}}.
    assert "editable" not in (probe["direct_url"] or "")
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.egg-link"))


def test_dependencies_are_declared_and_resolved(probe):
    imported = third_party_imports()
    assert {"trio", "cryptography"} <= imported       # the scan sees what meshd imports
    declared = {_normal(name) for name in probe["requires"]}
    for module in sorted(imported):
        dists = {_normal(d) for d in probe["module_dists"].get(module, [])}
        assert dists & declared, f"meshd imports {module} (from {dists or 'nowhere'}) but does not declare it"
    assert all(probe["satisfied"].values()), probe["satisfied"]


def _normal(name: str) -> str:
    """A distribution's name as PEP 503 compares them: prometheus_client is prometheus-client."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_no_test_extras_in_the_environment(installed, probe):
    site = Path(probe["purelib"])
    own = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "meshd" in own
    assert not own & {"pytest", "hypothesis", "pytest_timeout"}, own
    assert "pytest" not in probe["requires"] and "hypothesis" not in probe["requires"]
    assert probe["extras"] == ["test"]          # declared as an extra, and not installed


def test_configuration_directory_and_example(installed):
    tree, _ = installed
    conf_dir = tree / "etc/meshd"
    assert stat.S_IMODE(conf_dir.stat().st_mode) == 0o750
    example = conf_dir / "meshd.toml"
    assert stat.S_IMODE(example.stat().st_mode) == 0o640
    assert example.read_text() == (REPO / "scripts/meshd.toml.example").read_text()


def test_check_refuses_the_example_until_node_id_is_set_then_accepts_it(installed, tmp_path):
    tree, _ = installed
    example = (tree / "etc/meshd/meshd.toml").read_text()
    conf = tmp_path / "meshd.toml"
    conf.write_text(example)
    key = tmp_path / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    refused = venv_run(tree, "meshd", "--config", str(conf), "--check", check=False)
    assert refused.returncode == 2 and "node.id: missing" in refused.stderr, refused.stderr
    conf.write_text(example.replace("# id = 1 ", "id = 1   ", 1))
    accepted = venv_run(tree, "meshd", "--config", str(conf), "--check", check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert "OK: node" in accepted.stdout and "lan (id 1, eth1)" in accepted.stdout


def test_installed_unit_points_at_the_environment_and_verifies(installed):
    tree, _ = installed
    unit = (tree / "units/meshd.service").read_text()
    meshd = f"{tree}/opt/meshd/bin/meshd --config {tree}/etc/meshd/meshd.toml"
    assert f"\nExecStart={meshd}\n" in unit
    assert f"\nExecStartPre={meshd} --check\n" in unit
    shipped = (REPO / "systemd/meshd.service").read_text()
    assert unit.count("\n") == shipped.count("\n")        # only paths changed
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing (Debian package systemd)")
    # The real meshd of the environment is behind ExecStart: verify needs no --root.
    p = subprocess.run(["systemd-analyze", "verify", str(tree / "units/meshd.service")], capture_output=True,
                       text=True, timeout=60, cwd=tree, check=False)
    assert p.returncode == 0 and "meshd.service" not in p.stdout + p.stderr, p.stdout + p.stderr


def test_second_run_keeps_the_configuration_and_replaces_meshd(installed):
    tree, _ = installed
    conf = tree / "etc/meshd/meshd.toml"
    conf.write_text(conf.read_text() + "# edited by the administrator\n")
    site = tree / "opt/meshd/lib"
    installed_log = next(site.glob("python3*/site-packages/meshd/log.py"))
    installed_log.write_text("# meshd of an older install\n")
    start = time.monotonic()
    output = run_install(tree)
    print(f"scripts/install again: {time.monotonic() - start:.1f} s")
    assert conf.read_text().endswith("# edited by the administrator\n")
    assert "exists, left as it is" in output.stdout
    assert installed_log.read_text() == (REPO / "meshd/log.py").read_text(), "meshd was not replaced"
    assert len(list(site.glob("python3*/site-packages/meshd-*.dist-info"))) == 1
    assert venv_run(tree, "meshd", "--version").stdout.strip() == "meshd 0.1.0"
