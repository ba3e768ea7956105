"""No import in meshd/ runs from a lower floor to a higher one.

The floors are written out here, lowest first, so that moving a rule across
them is a visible change of this table rather than a quiet new import.  Each
floor holds units (one engine's core, the kernel adapters, one shell...); a
module belongs to the unit whose prefix is the longest that matches its name.

The rule: a module may import its own unit and any unit of a lower floor.
It may not import a unit of a higher floor, nor another unit of its own floor
(the kernel adapters and the three cores know nothing of each other; the
shells do not call each other; the daemon composes them).  meshctl, a
separate program that speaks to the daemon over its socket, has a rule of its
own: it imports only what describes the daemon's answers.

The sources are read with `ast`, never imported, so a module that needs root
or a kernel is checked like the rest, and imports inside functions (the lazy
ones) count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshd

PACKAGE_DIR = Path(meshd.__file__).resolve().parent
ROOT = "meshd"

# Lowest first: (floor, {unit: module prefixes}).
FLOORS: list[tuple[str, dict[str, tuple[str, ...]]]] = [
    ("foundation", {
        # Everyone may use these; they import nothing above them.  commands is
        # the request validation the services and the control server share;
        # checkspec the value types the [health] section and the checks share.
        "foundation": ("meshd", "meshd.crypto", "meshd.replay", "meshd.state", "meshd.log",
                       "meshd.logsinks", "meshd.logbridge", "meshd.timers", "meshd.commands",
                       "meshd.health.checkspec", "meshd.runas", "meshd.histogram",
                       # when a flood of rejects closes a socket to all but known senders
                       "meshd.floodguard",
                       # privilege separation without I/O: messages, the drop, the back-off
                       "meshd.privsep", "meshd.privsep.imsg", "meshd.privsep.drop",
                       "meshd.privsep.backoff"),
        # What a relay's protocol handler and the relay engine code against,
        # and the HTTP relay's value types the configuration shares.
        "relay interface": ("meshd.relay.interface", "meshd.relay.httpspec"),
    }),
    ("configuration", {
        "config": ("meshd.config",),
    }),
    ("engines", {
        # meshd.fastct: which conntrack hot path runs, the accelerator's or kernel/'s Python.
        "kernel": ("meshd.kernel", "meshd.sdnotify", "meshd.fastct"),
        "election core": ("meshd.election",),
        "sync core": ("meshd.sync",),
        "health core": ("meshd.health",),
        # The relays' sans-I/O side: the handler contract, balancing, the engine's messages.
        "relay core": ("meshd.relay",),
        "health checks": ("meshd.health.checks", "meshd.health.icmp", "meshd.health.scriptpool",
                          "meshd.health.engineproto"),
        # Starts, watches and restarts a child process (trio, no rules of its own).
        "process supervisor": ("meshd.privsep.supervisor", "meshd.privsep.child"),
        "reload plan": ("meshd.reload",),
        "preflight": ("meshd.preflight",),
        "lifecycle": ("meshd.lifecycle",),      # the supervision's rules, without trio
        # The relays' protocols: sans-I/O cores (dns) and their trio handlers
        # (dnsrelay), coded against meshd/relay/interface.py.
        "relay protocols": ("meshd.relay.dns", "meshd.relay.dnsrelay"),
        # The HTTP relay: its actions (sans-I/O) and its trio handler.
        "http relay": ("meshd.relay.httpactions", "meshd.relay.httpheaders", "meshd.relay.http"),
    }),
    ("node", {
        # The rules between the engines: composes the three cores.
        "node core": ("meshd.node",),
        # What the wire engine lets through (the cores' decoders, before any history).
        "wire screen": ("meshd.wire", "meshd.wire.screen", "meshd.wire.proto"),
    }),
    ("shells", {
        # It runs the notify hooks and the track scripts.
        "election shell": ("meshd.election.transport", "meshd.election.shell", "meshd.hooks", "meshd.track"),
        "sync shell": ("meshd.sync.shell", "meshd.sync.mdns", "meshd.sync.sender"),
        # The daemon's side of the check engine: a runner like CheckRunner.
        "health shell": ("meshd.health.shell", "meshd.health.remote"),
        # The daemon's side of the wire engine: feeds the node core what it forwards.
        "wire shell": ("meshd.wire.remote",),
        # The daemon's side of the relay engine: its listeners, its table health.
        "relay shell": ("meshd.relay.remote", "meshd.relay.listeners"),
        "supervision": ("meshd.supervision",),
        "control server": ("meshd.control", "meshd.control.server", "meshd.control.protocol"),
        # The Prometheus endpoint: reads a snapshot of the node core and the shells' counts.
        "metrics": ("meshd.metrics",),
    }),
    ("daemon", {
        "daemon": ("meshd.daemon",),
    }),
    ("entry points", {
        "cli": ("meshd.cli", "meshd.__main__"),
        # The check engine child's own entry point (python -m meshd.health.engine).
        "check engine": ("meshd.health.engine",),
        # The wire engine child's (python -m meshd.wire.engine): the election's datagram parsing.
        "wire engine": ("meshd.wire.engine",),
        # The relay engine child's (python -m meshd.relay.engine): sessions, TLS, splicing.
        "relay engine": ("meshd.relay.engine", "meshd.relay.tcp", "meshd.relay.upstream",
                         "meshd.relay.tls"),
        "meshctl": ("meshd.control.meshctl",),
    }),
]

# What meshctl may import: the configuration (to find the socket), the
# command names and the wire format, and the formatter of health answers.
CLIENT = "meshd.control.meshctl"
CLIENT_MAY_IMPORT = ("meshd", "meshd.config", "meshd.commands", "meshd.control.protocol",
                     "meshd.health.report", "meshd.relay.report")


def _prefix_of(name: str, prefix: str) -> bool:
    """Whether `prefix` covers `name`: itself and every module below it, except
    the top package "meshd" (its __init__, which holds __version__), which
    covers only itself."""
    return name == prefix or (prefix != ROOT and name.startswith(prefix + "."))


def place(module: str) -> tuple[int, str, str] | None:
    """(floor index, floor, unit) of a module: the longest matching prefix wins."""
    best: tuple[int, int, str, str] | None = None
    for index, (floor, units) in enumerate(FLOORS):
        for unit, prefixes in units.items():
            for prefix in prefixes:
                if _prefix_of(module, prefix) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), index, floor, unit)
    return None if best is None else best[1:]


def modules(root: Path = PACKAGE_DIR) -> dict[str, tuple[str, bool]]:
    """Every module under root: name -> (source, is a package's __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path.read_text(), package)
    return found


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The meshd modules that `module` imports (relative imports resolved)."""
    here = module if is_package else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                # `from meshd.kernel import ctnetlink` imports a module, not a name.
                sub = f"{origin}.{alias.name}"
                targets.add(sub if sub in known else origin)
    return {t for t in targets if t == ROOT or t.startswith(ROOT + ".")}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the floors, as `importer -> imported: why`."""
    found = []
    for module, targets in sorted(graph.items()):
        where = place(module)
        if where is None:
            found.append(f"{module}: on no floor; place it in FLOORS (tests/test_layers.py)")
            continue
        if module == CLIENT:
            found += [f"{module} -> {t}: meshctl imports only {', '.join(CLIENT_MAY_IMPORT)}"
                      for t in sorted(targets)
                      if not any(_prefix_of(t, p) for p in CLIENT_MAY_IMPORT)]
            continue
        for target in sorted(targets):
            there = place(target)
            if there is None:
                found.append(f"{module} -> {target}: {target} is on no floor")
            elif there[0] > where[0]:
                found.append(f"{module} -> {target}: up from {where[1]} ({where[2]}) "
                             f"to {there[1]} ({there[2]})")
            elif there[0] == where[0] and there[2] != where[2]:
                found.append(f"{module} -> {target}: beside, from {where[2]} to {there[2]} "
                             f"on the {where[1]} floor")
    return found


def import_graph(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imports_of(name, source, package, known) - {name}
            for name, (source, package) in found.items()}


def test_no_import_runs_up_or_across_the_floors():
    problems = violations(import_graph())
    assert not problems, "\n".join(problems)


def test_every_prefix_names_a_module_that_exists():
    # A stale prefix would keep a table that no longer describes the code.
    known = set(modules())
    for _floor, units in FLOORS:
        for unit, prefixes in units.items():
            for prefix in prefixes:
                assert any(_prefix_of(m, prefix) for m in known), f"{unit}: no module {prefix}"


@pytest.mark.parametrize(("importer", "imported", "why"), [
    ("meshd.health.shell", "meshd.control.protocol", "beside, from health shell to control server"),
    ("meshd.sync.core", "meshd.kernel.conntrack", "beside, from sync core to kernel"),
    ("meshd.config.health", "meshd.health.core", "up from configuration (config) to engines"),
    ("meshd.commands", "meshd.control.server", "up from foundation (foundation) to shells"),
    ("meshd.daemon", "meshd.cli", "up from daemon (daemon) to entry points"),
    ("meshd.control.meshctl", "meshd.daemon", "meshctl imports only"),
    ("meshd.newthing", "meshd.log", "on no floor"),
])
def test_the_rule_catches_an_import_that_breaks_it(importer, imported, why):
    (problem,) = violations({importer: {imported}})
    assert why in problem


def test_the_rule_allows_imports_down_and_within_a_unit():
    assert violations({
        "meshd.daemon": {"meshd.control.server", "meshd.sync.shell", "meshd.kernel.nft"},
        "meshd.health.shell": {"meshd.commands", "meshd.health.core", "meshd.config.health"},
        "meshd.sync.core": {"meshd.sync.cache", "meshd.crypto"},
        "meshd.control.meshctl": {"meshd.config.reader", "meshd.control.protocol"},
    }) == []


def test_relative_imports_resolve_to_the_module_they_name():
    known = {"meshd", "meshd.commands", "meshd.control", "meshd.control.protocol",
             "meshd.kernel", "meshd.kernel.ctnetlink"}
    source = ("from ..commands import ControlError\nfrom .protocol import encode\n"
              "from .. import __version__\nfrom ..kernel import ctnetlink as ct\n"
              "def later():\n    import meshd.daemon\n")
    assert imports_of("meshd.control.server", source, False, known) == {
        "meshd.commands", "meshd.control.protocol", "meshd", "meshd.kernel.ctnetlink",
        "meshd.daemon"}
