"""meshctl: the operator's client for the meshd control socket.

The client half is plain blocking sockets, no trio: meshctl is a short-lived
command, and tests, the lab harness and ad-hoc scripts can call request() /
request_stream() from any thread without an event loop.

Exit codes: 0 success, 1 meshd answered with an error, 2 usage or
configuration error, 3 could not talk to meshd (cannot connect, no answer
within --timeout, connection lost, malformed answer).

Must not: import the daemon, the shells or trio (tests/test_layers.py lets it
import the configuration, `commands`, the control protocol and the health
and relay report formatters only), or decide anything the daemon answers: it sends one
request and prints what comes back.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Iterator

from .. import __version__
from ..commands import COMMANDS
from ..config import (
    CONTROL_SOCKET_NAME,
    DEFAULT_RUN_DIR,
    ConfigError,
    parse_control_socket,
    read_toml,
)
from ..config.reader import Reader, describe
from .protocol import encode

DEFAULT_SOCKET = os.path.join(DEFAULT_RUN_DIR, CONTROL_SOCKET_NAME)
DEFAULT_TIMEOUT = 5.0
# Commands whose answer comes after real work: a reload re-reads the file and
# may restart sockets and checks.  Waiting less would report "no answer" for a
# reload that then completes anyway.
SLOW_COMMAND_TIMEOUTS = {"reload": 30.0}
# Longest answer line read; guards against a runaway peer, far above real answers.
MAX_ANSWER = 16 * 1024 * 1024


class ClientError(Exception):
    """meshd could not be talked to (exit code 3)."""


class ConnectError(ClientError):
    def __init__(self, path: str, error: OSError):
        self.path = path
        self.error = error
        super().__init__(f"cannot connect to {path}: {error.strerror or error} "
                         "(is meshd running?)")


# ------------------------------------------------------------------- client


def request_stream(path: str, obj: dict, timeout: float = DEFAULT_TIMEOUT) -> Iterator[dict]:
    """Send one request; yield every answer line as received, raw.

    The last line yielded is the one without "more": true -- a normal answer,
    an error answer, or the stream terminator {"ok": true, "more": false}.
    `timeout` bounds the connect and each wait for data, not the whole stream,
    so a long dump that keeps flowing is never cut short.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as e:
            raise ConnectError(path, e) from None
        try:
            sock.sendall(encode(obj))
            with sock.makefile("rb") as f:
                while True:
                    answer = _read_answer(f, path, timeout)
                    yield answer
                    if answer.get("more") is not True:
                        return
        except TimeoutError:
            raise ClientError(f"no answer from {path} within {timeout:g} s") from None
        except OSError as e:
            raise ClientError(f"connection to {path} failed: {e.strerror or e}") from None
    finally:
        sock.close()


def request(path: str, obj: dict, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Send one request and return its single answer, raw ({"ok": ..., ...}).

    Error answers are returned, not raised: the caller decides.  A streaming
    answer is a ClientError here; use request_stream() for those commands.
    """
    answers = request_stream(path, obj, timeout)
    try:
        answer = next(answers)
        if answer.get("more") is True:
            raise ClientError(f"{obj.get('cmd')}: meshd sent a streaming answer; "
                              "use request_stream()")
        return answer
    finally:
        answers.close()


def _read_answer(f, path: str, timeout: float) -> dict:
    line = f.readline(MAX_ANSWER + 1)
    if not line:
        raise ClientError(f"meshd closed the connection on {path} without answering")
    if not line.endswith(b"\n"):
        if len(line) > MAX_ANSWER:
            raise ClientError(f"answer from {path} longer than {MAX_ANSWER} bytes")
        raise ClientError(f"connection to {path} closed in the middle of an answer")
    try:
        answer = json.loads(line)
    except ValueError as e:
        raise ClientError(f"answer from {path} is not valid JSON: {e}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ClientError(f"answer from {path} lacks the \"ok\" field: {line[:200]!r}")
    return answer


# ------------------------------------------------------------------ printing


def _ago(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "never"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_status(answer: dict) -> str:
    """The human view of a status answer.  Tolerates missing fields (older/newer daemons)."""
    head = f"node {answer['node']} (id {answer.get('node_id', '?')})" if answer.get("node") \
        else f"node {answer.get('node_id', '?')}"
    head += f", epoch {answer.get('epoch', '?')}"
    if answer.get("version"):
        head += f", meshd {answer['version']}"
    out = [head]
    groups = answer.get("groups") or []
    rows = [["GROUP", "STATE", "SKEW/DEMOTE", "MASTER", "LAST CHANGE", "ADVERTS sent/recv/rej"]]
    for g in groups:
        adv = g.get("adverts") or {}
        rejected = sum((adv.get("rejected") or {}).values())
        change = g.get("last_change_ago_s")
        last = "never" if change is None else f"{_ago(change)} ago"
        if g.get("last_reason"):
            last += f": {g['last_reason']}"
        faults = g.get("faults") or []
        state = str(g.get("state", "?")) + (f" ({', '.join(faults)})" if faults else "")
        master = g.get("master")
        rows.append([str(g.get("name", "?")), state,
                     f"{g.get('advskew', '?')}/{g.get('demotion', '?')}",
                     "-" if master is None else
                     f"{master} (self)" if master == answer.get("node_id") else str(master), last,
                     f"{adv.get('sent', 0)}/{adv.get('received', 0)}/{rejected}"])
    out.append(_table(rows) if groups else "no groups")
    rejected = answer.get("rejected") or {}
    if rejected:
        out.append("rejected adverts:")
        for reason, count in sorted(rejected.items()):
            where = [f"{g.get('name')} {n}" for g in groups
                     if (n := ((g.get("adverts") or {}).get("rejected") or {}).get(reason))]
            out.append(f"  {reason}: {count}" + (f" ({', '.join(where)})" if where else ""))
        suppressed = sum(((answer.get("reject_log") or {}).get("suppressed") or {}).values())
        if suppressed:
            out.append(f"  (log lines suppressed by the per-reason rate limit: {suppressed})")
    out.extend(_state_mesh_lines(answer.get("state_mesh")))
    engine = answer.get("check_engine")
    if isinstance(engine, dict):
        if engine.get("up"):
            out.append(f"check engine: up for {_ago(engine.get('since_s'))}, pid {engine.get('pid')}, "
                       f"uid {engine.get('uid')}, {engine.get('checks_in_flight', 0)} checks in flight, "
                       f"started {engine.get('starts', '?')} times")
        else:
            out.append(f"check engine: DOWN for {_ago(engine.get('since_s'))} "
                       f"({engine.get('down_reason') or 'unknown'}); the node is demoted")
    wire = answer.get("wire_engine")
    if isinstance(wire, dict):
        if wire.get("up"):
            fwd, ref = wire.get("forwarded") or {}, wire.get("refused") or {}
            out.append(f"wire engine: up for {_ago(wire.get('since_s'))}, pid {wire.get('pid')}, "
                       f"uid {wire.get('uid')}, forwarded {fwd.get('advert', 0)} adverts and "
                       f"{fwd.get('frame', 0)} frames, refused {ref.get('election', 0)} and "
                       f"{ref.get('sync', 0)}, started {wire.get('starts', '?')} times")
        else:
            out.append(f"wire engine: DOWN for {_ago(wire.get('since_s'))} "
                       f"({wire.get('down_reason') or 'unknown'}); the node hears no advert, "
                       "and its backups hold (no takeover) until it is back")
    relay = answer.get("relay_engine")
    if isinstance(relay, dict):
        missing = relay.get("not_listening") or {}
        tail = (", not listening: " + ", ".join(f"{n} ({why})" for n, why in sorted(missing.items()))
                if missing else "")
        if relay.get("up"):
            out.append(f"relay engine: up for {_ago(relay.get('since_s'))}, pid {relay.get('pid')}, "
                       f"uid {relay.get('uid')}, started {relay.get('starts', '?')} times{tail}")
        else:
            out.append(f"relay engine: DOWN for {_ago(relay.get('since_s'))} "
                       f"({relay.get('down_reason') or 'unknown'}); relays refuse clients until it is "
                       f"back (no demotion){tail}")
    guard = answer.get("flood_guard") or {}
    if guard.get("engaged"):
        out.append(f"flood guard: ENGAGED for {_ago(guard.get('engaged_s'))}, about "
                   f"{guard.get('rejects_per_s', '?')} rejected adverts/s; admitted: "
                   f"{', '.join(guard.get('admitted') or []) or 'none known'} and a sample of the rest")
    elif guard.get("engagements"):
        out.append(f"flood guard: released (engaged {guard['engagements']} times since start)")
    demotions = answer.get("demotions") or {}
    if demotions:
        out.append("demotion counters: " + ", ".join(f"{n}={v}" for n, v in sorted(demotions.items())))
    else:
        out.append("demotion counters: none set")
    return "\n".join(out)


def _state_mesh_lines(mesh) -> list[str]:
    """In sync or not and why; each bulk waited for; the peers out of sync."""
    if not isinstance(mesh, dict):
        return []
    reason = mesh.get("reason") or "?"
    out = [f"state mesh: in sync ({reason})" if mesh.get("in_sync") else
           f"state mesh: NOT in sync ({reason}); every group is demoted until it is"]
    for pid, w in sorted((mesh.get("waiting") or {}).items(), key=lambda kv: int(kv[0])):
        entries = f"{w.get('entries_received', 0)}"
        if w.get("entries_announced") is not None:
            entries += f" of {w['entries_announced']}"
        progress = (f"{w.get('buckets_done', 0)}/{w.get('buckets', 256)} buckets" if w.get("begun")
                    else "not begun")
        deadline = w.get("deadline_in_s")
        out.append(f"  bulk from peer {pid}: attempt {w.get('attempt')} of {w.get('attempts')}, "
                   f"{progress}, {entries} entries, {_ago(w.get('elapsed_s'))} so far, "
                   + ("deadline held (peer absent)" if deadline is None
                      else f"deadline in {_ago(max(0.0, deadline))}"))
    for pid, why in sorted((mesh.get("out_of_sync") or {}).items(), key=lambda kv: int(kv[0])):
        out.append(f"  peer {pid} OUT OF SYNC: {why}; its copy here may lack flows until a "
                   "bulk completes (meshctl resync)")
    return out


def format_cluster(answer: dict) -> str:
    """The human view of a `cluster` answer (meshd/node/cluster.py)."""
    me = answer.get("node") or {}
    out = [f"this node: {me.get('name')} (id {me.get('id')}), epoch {me.get('epoch')}, "
           + ("in sync" if me.get("in_sync") else "not in sync" if me.get("in_sync") is False else "no state mesh")]
    out.append("  groups: " + ", ".join(f"{g['name']} {g['state']} (demotion {g['demotion']})"
                                        for g in me.get("groups") or []))
    for n in answer.get("nodes") or []:
        label = f"{n.get('name') or '?'} (id {n['id']})"
        out.append(f"node {label}, meshd {n.get('version') or '?'}, epoch {n.get('epoch') or '?'}")
        if n.get("groups"):
            out.append("  groups: " + ", ".join(f"{g['name']} {g['state']} (demotion {g['demotion']})"
                                                for g in n["groups"]))
        adverts = n.get("adverts") or {}
        if adverts:
            out.append("  adverts: " + ", ".join(f"{g} heard {_ago(a.get('last_heard_ago_s'))} ago"
                                                 for g, a in sorted(adverts.items())))
        else:
            out.append("  adverts: none heard (a backup sends none)")
        sync = n.get("sync")
        if sync:
            state = "ABSENT" if sync.get("absent") else "present"
            out.append(f"  sync: {state}, last frame {_ago(sync.get('last_frame_ago_s'))} ago, lag in "
                       f"{sync.get('lag_in_frames')} / out {sync.get('lag_out_frames')} frames, "
                       f"{sync.get('external_entries', 0)} flows cached")
            rejected = sync.get("rejected") or {}
            if rejected:
                last = sync.get("last_reject") or {}
                out.append("  frames rejected: " + ", ".join(f"{r} {c}" for r, c in sorted(rejected.items()))
                           + (f" (last {_ago(last.get('ago_s'))} ago: {last.get('reason')}, {last.get('detail')})"
                              if last else ""))
        settings = n.get("settings")
        if settings is None:
            out.append("  settings: not known (nothing heard in its ABOUT frames yet)" if sync else
                       "  settings: not known (no state mesh)")
        elif settings.get("agree"):
            out.append("  settings: agree")
        else:
            out.append("  settings that differ:")
            out += [f"    {d}" for d in settings.get("differences") or []]
    split = answer.get("split_brain") or {}
    for group, nodes in sorted(split.items()):
        out.append(f"SPLIT BRAIN: group {group} has {len(nodes)} masters: nodes {', '.join(map(str, nodes))}")
    if answer.get("split_brains_seen"):
        out.append(f"split brains seen since start: {answer['split_brains_seen']}")
    return "\n".join(out)


def format_discover(answer: dict) -> str:
    """The human view of a `discover` answer (NodeCore.discover_view, DiscoveryTable.view)."""
    if not answer.get("discover"):
        return "discovery is off ([sync] discover = false)"
    me = answer.get("announcer") or {}
    if me.get("error"):
        out = [f"this node: NOT announced ({me['error']})"]
    else:
        out = [f"this node: {answer.get('node')}, announced as {me.get('announced_as') or '?'} at "
               f"{me.get('address') or '?'} on {me.get('interface') or '?'}, fingerprint "
               f"{me.get('fingerprint') or '?'}"]
    heard = answer.get("heard") or []
    if not heard:
        out.append("heard: nothing yet")
    for h in heard:
        who = f"node {h.get('node') if h.get('node') is not None else '?'}"
        if h.get("name"):
            who += f" ({h['name']})"
        out.append(f"{who} at {h.get('address')} port {h.get('port')}, fingerprint "
                   f"{h.get('fingerprint') or '?'}, heard {_ago(h.get('last_heard_ago_s'))} ago: "
                   f"{'PEER' if h.get('peer') else 'not a peer'}: {h.get('reason')}")
    if answer.get("candidates"):
        out.append("candidates (heartbeats sent, not proven): "
                   + ", ".join(str(c) for c in answer["candidates"]))
    extra = [f"{n} {what}" for n, what in ((answer.get("announcements_refused"), "announcements refused (table full)"),
                                           (me.get("dropped"), "dropped between threads"),
                                           (me.get("ignored"), "ignored (too large or malformed)")) if n]
    if extra:
        out.append("; ".join(extra))
    return "\n".join(out)


def format_answer(cmd: str, answer: dict) -> str:
    if cmd == "discover":
        return format_discover(answer)
    if cmd == "status":
        return format_status(answer)
    if cmd == "cluster":
        return format_cluster(answer)
    if cmd in ("demote", "promote"):
        return f"demotion counter {answer.get('name')} is now {answer.get('value')}"
    if cmd in ("enable", "disable"):
        return f"group {answer.get('group')} is now {answer.get('state')}"
    if cmd == "dump":
        return format_entry(answer)
    if cmd == "commit":
        errors = ", ".join(f"{k} {v}" for k, v in (answer.get("errors") or {}).items())
        text = (f"committed {answer.get('committed', 0)} entries in {answer.get('seconds', 0):.3f} s"
                f", {answer.get('failed', 0)} failed" + (f" ({errors})" if errors else ""))
        if "expectations" in answer:
            exp_errors = ", ".join(f"{k} {v}" for k, v in (answer.get("expectation_errors") or {}).items())
            text += (f"; then {answer['expectations']} expectations, {answer.get('expectations_failed', 0)} failed"
                     + (f" ({exp_errors})" if exp_errors else ""))
        return text
    if cmd == "flush":
        return f"flushed {answer.get('what')}: {answer.get('removed', 0)} entries"
    if cmd == "resync":
        return "resync requested from peers " + ", ".join(str(p) for p in answer.get("peers", []))
    if cmd == "show" and answer.get("what") in ("relays", "sessions"):
        from ..relay.report import format_relays, format_sessions
        rows = answer.get("rows") or []
        if answer["what"] == "relays":
            return format_relays(rows)
        return format_sessions(rows, answer.get("truncated") or 0)
    if cmd == "show":
        from ..health.report import format_hosts, format_summary
        rows = answer.get("rows") or []
        return (format_hosts(rows) if answer.get("what") == "hosts" else format_summary(rows)).rstrip("\n")
    if cmd in ("host", "table", "redirect", "relay"):
        return f"{cmd} {answer.get('name')} is now {'enabled' if answer.get('enabled') else 'disabled'}"
    if cmd == "reload":
        applied = answer.get("applied") or []
        return "\n".join(f"applied: {item}" for item in applied) if applied else "nothing changed"
    rest = {k: v for k, v in answer.items() if k != "ok"}
    return json.dumps(rest, indent=2) if rest else "ok"


PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


def format_entry(answer: dict) -> str:
    """One cached flow, conntrack -L style: origin node, protocol, state, tuples, flags."""
    e = answer.get("entry") or {}
    if e.get("expectation"):
        return format_expectation(answer.get("origin", "?"), e)
    orig = e.get("orig") or {}
    proto = orig.get("proto")
    parts = [f"[node {answer.get('origin', '?')}]", PROTO_NAMES.get(proto, str(proto)),
             str(e.get("timeout", "-"))]
    if (e.get("tcp") or {}).get("state"):
        parts.append(e["tcp"]["state"])
    for side in ("orig", "reply"):
        t = e.get(side) or {}
        for k in ("src", "dst", "sport", "dport", "type", "code", "id"):
            if t.get(k) is not None:
                parts.append(f"{k}={t[k]}")
    for k in ("mark", "zone"):
        if e.get(k):
            parts.append(f"{k}={e[k]}")
    flags = [f for f in e.get("status_flags", []) if f in ("ASSURED", "SEEN_REPLY", "SRC_NAT", "DST_NAT")]
    if flags:
        parts.append("[" + ",".join(flags) + "]")
    if e.get("error"):
        parts.append(f"(undecodable: {e['error']})")
    return " ".join(parts)


def format_expectation(origin, e: dict) -> str:
    """One cached expectation, `conntrack -L expect` style: the expected tuple, its mask,
    the master's tuple, the helper, and how the expected connection will be NATed."""
    t = e.get("tuple") or {}
    proto = t.get("proto")
    parts = [f"[node {origin}]", "expect", PROTO_NAMES.get(proto, str(proto)), str(e.get("timeout", "-"))]
    for prefix, side in (("", t), ("mask-", e.get("mask") or {}), ("master-", e.get("master") or {})):
        for k in ("src", "dst", "sport", "dport"):
            if side.get(k) is not None:
                parts.append(f"{prefix}{k}={side[k]}")
    for k in ("helper", "zone", "class"):
        if e.get(k):
            parts.append(f"{k}={e[k]}")
    if e.get("nat"):
        nat = e["nat"].get("tuple") or {}
        parts.append(f"nat-dir={e['nat'].get('dir')}" + (f" nat-port={nat['sport']}" if nat.get("sport") else ""))
    if e.get("fn"):
        parts.append(f"fn={e['fn']}")
    if e.get("flag_names"):
        parts.append("[" + ",".join(e["flag_names"]) + "]")
    return " ".join(parts)


# --------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    # Options are accepted before and after the command (`meshctl --json status`
    # and `meshctl status --json`).  The subcommand copies default to SUPPRESS
    # so that they do not overwrite a value given before the command.
    def options(p: argparse.ArgumentParser, top: bool) -> None:
        d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
        p.add_argument("--socket", metavar="PATH", default=d(None),
                       help=f"control socket (default: from --config, else {DEFAULT_SOCKET})")
        p.add_argument("--config", metavar="FILE", default=d(None),
                       help="meshd configuration file to read [node] control_socket from")
        p.add_argument("--json", action="store_true", default=d(False),
                       help="print the raw answer(s) as JSON, one per line")
        p.add_argument("--timeout", metavar="SECONDS", type=float, default=d(None),
                       help=f"connect/answer timeout (default {DEFAULT_TIMEOUT:g}, "
                            + ", ".join(f"{c} {t:g}" for c, t in SLOW_COMMAND_TIMEOUTS.items()) + ")")

    parser = argparse.ArgumentParser(
        prog="meshctl", description="Query and steer a running meshd.",
        epilog="exit codes: 0 ok, 1 meshd answered with an error, 2 usage or "
               "configuration error, 3 cannot talk to meshd")
    options(parser, True)
    parser.add_argument("--version", action="version", version=f"meshctl {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    args = {"status": [], "cluster": [], "discover": [], "demote": [("name", str, "demotion counter"),
                                     ("by", int, "amount to add (may be negative)")],
            "promote": [("name", str, "demotion counter")],
            "enable": [("group", str, "group name")], "disable": [("group", str, "group name")]}
    choices = {"dump": ("cache", ("internal", "external")),
               "flush": ("what", ("internal", "external", "kernel")),
               "show": ("what", ("summary", "hosts", "relays", "sessions"))}
    for cmd, summary in COMMANDS.items():
        p = sub.add_parser(cmd, help=summary, description=summary)
        for name, kind, text in args.get(cmd, []):
            p.add_argument(name, type=kind, metavar=name.upper() if name != "by" else "N",
                           help=text)
        if cmd in choices:
            name, allowed = choices[cmd]
            p.add_argument(name, choices=allowed)
        if cmd in ("host", "table", "redirect", "relay"):
            p.add_argument("action", choices=("enable", "disable"))
            p.add_argument("name", metavar="NAME", help=f"{cmd} name, as in the [health] configuration")
        if cmd in ("dump", "commit", "flush"):
            p.add_argument("--peer", type=int, metavar="NODE", default=None,
                           help="only the external cache of this peer node id")
        options(p, False)
    return parser


def _socket_path(ns: argparse.Namespace) -> str:
    if ns.socket:
        return ns.socket
    if ns.config:
        return socket_from_config(ns.config)
    return DEFAULT_SOCKET


def socket_from_config(filename: str) -> str:
    """[node].control_socket of a meshd configuration file (default run_dir/meshd.sock).

    Only the [node] paths are read and checked: meshctl must still reach a
    daemon whose file has since been edited into something invalid elsewhere
    (that is often when the operator needs `meshctl reload` to say what is wrong).
    """
    node = read_toml(filename).get("node", {})
    if not isinstance(node, dict):
        raise ConfigError([f"{filename}: node: expected a table, found {describe(node)}"])
    r = Reader(filename)
    _run_dir, sock = parse_control_socket(r, node)
    if r.problems:
        raise ConfigError(r.problems)
    return sock


def _print_error(cmd: str, answer: dict) -> None:
    print(f"meshctl: {cmd}: {answer.get('error', 'unknown error')}", file=sys.stderr)
    for item in answer.get("refused") or []:
        print(f"  refused: {item}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        path = _socket_path(ns)
    except ConfigError as e:
        for problem in e.problems:
            print(f"meshctl: {problem}", file=sys.stderr)
        return 2
    timeout = ns.timeout if ns.timeout is not None else SLOW_COMMAND_TIMEOUTS.get(ns.cmd, DEFAULT_TIMEOUT)
    req = {"cmd": ns.cmd, **{k: getattr(ns, k) for k in ("name", "by", "group", "cache", "what", "peer", "action")
                             if getattr(ns, k, None) is not None}}
    code = 0
    try:
        for answer in request_stream(path, req, timeout):
            if ns.json:
                print(json.dumps(answer, ensure_ascii=False), flush=True)
            if not answer.get("ok"):
                _print_error(ns.cmd, answer)
                code = 1
            elif not ns.json and answer.get("more") is not False:
                print(format_answer(ns.cmd, answer), flush=True)
    except ClientError as e:
        print(f"meshctl: {e}", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
