"""`meshd`: run the daemon in the foreground, or `--check` a configuration.

Exit codes: 0 clean stop or valid config, 1 runtime failure at start-up
(socket busy, state directory unwritable, log target unusable) or a crash
(logged as event=crashed), 2 invalid configuration (with --check: also a
finding of preflight at level error).

Owns the command line: its options, `--check` (the file, then preflight), the
event log and the library log bridge opened before the daemon, the GIL switch
interval (SWITCH_INTERVAL_S) and the exit code of whatever ended trio.run.

Must not: hold a rule of the daemon or the cores (it builds the Daemon and
runs it), or import meshd/daemon.py before the file is valid: `--check` and a
refused file never load the trio shells.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import trio

from . import __version__
from .config import Config, ConfigError, load_config
from .log import TARGETS, EventLog, LogTargetError, open_event_log, parse_log_target
from .logbridge import LibraryLogBridge
from .preflight import preflight

SWITCH_INTERVAL_S = 0.001     # s: see _run()


def _log_target(text: str) -> str:
    try:
        parse_log_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshd", description="High-availability daemon for Linux firewalls.")
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="configuration file (TOML)")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration, and what a start would trip on (scripts, "
                        "CA files, interfaces), then exit (0 valid, 2 invalid); touches nothing")
    p.add_argument("--peer", metavar="FILE",
                   help="with --check: compare with another node's configuration file: every "
                        "setting that must agree and does not, every one that must differ and collides")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="one line per event: key=value text (default) or JSON")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--log-target", type=_log_target, default="stderr", metavar="TARGET",
                   help=f"where lines go: {TARGETS} (appended; reopened on SIGHUP); "
                        "default stderr, with priorities for journald when it is the journal")
    p.add_argument("--version", action="version", version=f"meshd {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.peer and not args.check:
        parser.error("--peer compares two files and needs --check")
    if args.check:
        code = check(args.config)
        if args.peer and code != 2:
            code = max(code, check_peer(args.config, args.peer))
        return code
    try:
        log = open_event_log(args.log_target, args.log_format, args.log_level)
    except LogTargetError as e:
        print(f"meshd: --log-target {args.log_target}: {e}; not starting", file=sys.stderr)
        return 1
    try:
        with LibraryLogBridge(log, args.log_level):
            return _run(args.config, log)
    finally:
        log.close()


def check(path: str) -> int:
    """`meshd --check`: the file's problems, then the machine's (preflight)."""
    try:
        config = load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"meshd: {len(e.problems)} problem(s) in {path}; not starting", file=sys.stderr)
        return 2
    if _errors_printed(preflight(config), f"problem(s) a start of {path} would trip on"):
        return 2
    groups = ", ".join(f"{g.name} (id {g.id}, {g.interface})" for g in config.groups)
    print(f"{path}: OK: node {config.node.name} (id {config.node.id}), groups: {groups}")
    return 0


def _errors_printed(findings, what: str) -> bool:
    """Print every finding (each has a `level`); then, if any is an error, how many."""
    for finding in findings:
        print(finding, file=sys.stderr)
    errors = sum(f.level == "error" for f in findings)
    if errors:
        print(f"meshd: {errors} {what}", file=sys.stderr)
    return bool(errors)


def check_peer(path: str, peer_path: str) -> int:
    """`meshd --check --config FILE --peer FILE`: the two files side by side
    (meshd/config/compare.py).  The peer's secret files are read where this
    machine has them (the same path on both nodes, usually); else the secrets
    are not compared, and that is said."""
    from .config.compare import compare

    here = load_config(path)
    try:
        peer = load_config(peer_path)
        secrets_compared = True
    except ConfigError as first:
        try:
            peer = load_config(peer_path, read_secrets=False)
        except ConfigError as e:
            for problem in e.problems:
                print(problem, file=sys.stderr)
            print(f"meshd: {len(e.problems)} problem(s) in the peer's file {peer_path}", file=sys.stderr)
            return 2
        secrets_compared = False
        print(f"{peer_path}: its key files cannot be read here ({first.problems[0]}); "
              "the secrets are not compared, only the key ids", file=sys.stderr)
    who = peer.node.name or peer_path
    findings = compare(here, peer, who, secrets_compared=secrets_compared)
    if _errors_printed(findings, f"setting(s) of {path} and {peer_path} break the cluster"):
        return 2
    print(f"{path} and {peer_path}: agree ({len(findings)} warning(s)): node {here.node.name} "
          f"(id {here.node.id}) and {who} (id {peer.node.id})")
    return 0


def _load(path: str, log: EventLog) -> Config | None:
    try:
        config = load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            log("config_invalid", level="error", problem=problem)
        log("start_failed", level="error",
            error=f"{len(e.problems)} problem(s) in {path}; not starting")
        return None
    # Logged, not refused: a hook or interface fixed later works from then on.
    for finding in preflight(config):
        log("preflight", level=finding.level, key=finding.key, message=finding.message,
            config=finding.config)
    return config


def _run(path: str, log: EventLog) -> int:
    config = _load(path, log)
    if config is None:
        return 2
    # The daemon's trio-heavy modules are imported only when running.
    from .daemon import Daemon, StartupError
    try:
        # Worker threads (big commits, table dumps) hold the GIL for pure-Python
        # encoding; at the default 5 ms switch interval the commit's sender
        # thread and the event loop each wait up to 5 ms per hand-over (commit
        # of 100k measured 120k/s at 5 ms, 150k/s and more at 1 ms).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        trio.run(Daemon(config, log).run)
    except BaseException as e:  # trio wraps task errors in exception groups
        startup = _find(e, StartupError)
        if startup is not None:
            log("start_failed", level="error", error=str(startup))
            return 1
        if _find(e, KeyboardInterrupt) is not None:
            return 0
        if not isinstance(e, Exception):
            raise       # SystemExit and the like: not a crash of ours
        # Through the event log, so that the journal, syslog or the log file
        # get the traceback as one entry at level error.
        log("crashed", level="error", error=f"{type(e).__name__}: {e}",
            traceback="".join(traceback.format_exception(e)).rstrip())
        return 1
    return 0


def _find(error: BaseException, kind: type) -> BaseException | None:
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
