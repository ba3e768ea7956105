"""Fuzz targets for what the operator hands meshd: control requests and the
configuration file.

* `control`: a request line (valid requests of every command, mutated as
  bytes or as JSON values: wrong types, members removed, added, nested,
  other commands) through the control protocol's parser
  (protocol.decode_request) and the argument checks the handlers run
  (commands.require, with the arguments and bounds the daemon and the
  health shell use).  Only ControlError may come out, with a message that
  names the request's problem; for an argument, the command and the key.
* `config`: a valid file with every section, mutated as TOML text (bytes,
  lines deleted, repeated, swapped) through load_config, or as values (a
  random key set to a random TOML value, removed, or an unknown key added)
  through parse_config.  Only ConfigError may come out, every problem
  naming the file, and for a value its key path.

Values nest up to MAX_NESTING levels (json.dumps itself recurses), and
"deep" lines, written as text, up to DEEP_NESTING, far past the 32 that
decode_request accepts: a request nested thousands of levels deep used to
raise RecursionError in the JSON decoder, and must now be an error answer.

Must not: open a socket, or read files other than the temporary copy of
the configuration it writes.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import tempfile
import tomllib

from cluster.configs import dumps, group, health, redirect, sync, table

from meshd.commands import ControlError, require
from meshd.config import ConfigError, load_config, parse_config
from meshd.control.protocol import decode_request

from .mutate import INTERESTING_INTS, mutate_bytes
from .targets_wire import Finding

MAX_NESTING = 200
DEEP_NESTING = 20000

# The arguments each handler checks, as it checks them (daemon.handle_control,
# health/shell.py); the other commands read no argument through require.
ARGUMENTS = {
    "demote": [("name", str, {}), ("by", int, {"lo": -(2**32), "hi": 2**32})],
    "promote": [("name", str, {})],
    "enable": [("group", str, {})],
    "disable": [("group", str, {})],
    "host": [("action", str, {}), ("name", str, {})],
    "table": [("action", str, {}), ("name", str, {})],
    "redirect": [("action", str, {}), ("name", str, {})],
}
REQUESTS = [
    {"cmd": "status"}, {"cmd": "demote", "name": "lan", "by": 20}, {"cmd": "demote", "name": "all", "by": -5},
    {"cmd": "promote", "name": "lan"}, {"cmd": "enable", "group": "lan"}, {"cmd": "disable", "group": "wan"},
    {"cmd": "reload"}, {"cmd": "dump", "cache": "external", "peer": 2}, {"cmd": "flush", "what": "kernel"},
    {"cmd": "commit", "peer": 2}, {"cmd": "resync"}, {"cmd": "stats"}, {"cmd": "show", "what": "summary"},
    {"cmd": "host", "action": "disable", "name": "web1"}, {"cmd": "table", "action": "enable", "name": "web"},
    {"cmd": "redirect", "action": "disable", "name": "www"},
]


def _json_value(rng: random.Random, depth: int = 0):
    k = rng.randrange(9 if depth < 3 else 6)
    if k == 0:
        return rng.choice(INTERESTING_INTS + (10**30, -10**30))
    if k == 1:
        return rng.choice((0.5, 1e308, -0.0, 1e-300))
    if k == 2:
        return rng.choice(("", "x", "lan", "a" * rng.choice((1, 59, 60, 61, 5000)), "\u00e9\u4e2d", "\ud800"))
    if k == 3:
        return rng.random() < 0.5
    if k == 4:
        return None
    if k == 5:
        return rng.choice(list(ARGUMENTS) + ["", "frob", "STATUS"])
    if k == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if k == 7:
        return {rng.choice(("cmd", "name", "by", "x")): _json_value(rng, depth + 1)}
    return _nested(rng)


def _nested(rng: random.Random):
    v = 1
    for _ in range(rng.randint(1, MAX_NESTING)):
        v = [v] if rng.random() < 0.5 else {"a": v}
    return v


def _request_line(rng: random.Random) -> tuple[str, bytes]:
    req = dict(rng.choice(REQUESTS))
    r = rng.random()
    if r < 0.3:
        line = json.dumps(req).encode()
        how, line = mutate_bytes(line, rng, [json.dumps(x).encode() for x in REQUESTS], [])
        return how, line
    if r < 0.35:
        n = rng.randint(1, DEEP_NESTING)
        opener, closer = ("[", "]") if rng.random() < 0.5 else ('{"a":', "}")
        return "deep", f'{{"cmd": "status", "x": {opener * n}1{closer * n}}}'.encode()
    if r < 0.45:
        return "not an object", json.dumps(rng.choice((_json_value(rng), [req], "status", 5))).encode()
    key = rng.choice(list(req) + ["cmd", "name", "by", "group", "action", "junk"])
    s = rng.random()
    if s < 0.6:
        req[key] = _json_value(rng)
        how = "value"
    elif s < 0.8:
        req.pop(key, None)
        how = "missing"
    else:
        req = {"cmd": rng.choice(list(ARGUMENTS)), **{k: v for k, v in req.items() if k != "cmd"}}
        how = "other command"
    try:
        return how, json.dumps(req, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    except ValueError:
        return how, b"{}"


def control(_w, rng: random.Random, tally) -> None:
    how, line = _request_line(rng)
    tally.count(how)
    try:
        request = decode_request(line)
    except ControlError as e:
        if not e.message or not e.message.startswith(("request", '"cmd"')):
            tally.findings.append(Finding("control", "wrong answer", f"{how}: {e.message!r:.200}", line))
        return
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("control", "exception", f"{how}: {e!r:.200}", line))
        return
    cmd = request["cmd"]
    for key, kind, bounds in ARGUMENTS.get(cmd, ()):
        try:
            require(request, key, kind, **bounds)
        except ControlError as e:
            if not e.message.startswith(f'{cmd}: ') or f'"{key}"' not in e.message:
                tally.findings.append(Finding("control", "wrong answer", f"{how}: {e.message!r:.200}", line))
            return
        except Exception as e:  # noqa: BLE001 -- the finding
            tally.findings.append(Finding("control", "exception", f"{how}: {cmd} {key}: {e!r:.200}", line))
            return


# ================================================================== the configuration


def valid_config() -> dict:
    """A file with every section (two groups, tracks, the state mesh, health)."""
    hosts = {"web1": "10.1.0.11", "web2": ("10.1.0.12", 2), "sorry": "10.1.0.99"}
    return {
        "node": {"id": 1, "name": "fw1", "state_dir": "/var/lib/meshd", "address_lifetime_s": 1},
        "cluster": {"keys": [{"id": 1, "secret_file": "k1.key"}, {"id": 2, "secret_file": "k2.key"}],
                    "send_key": 1, "port": 7112},
        "group": [group(1, name="lan", sync_set="fw", demotion_groups=["uplinks"], preempt=True),
                  group(2, advskew=100, name="wan", peers=["192.0.2.9"], interface="eth1", sync_set="fw")],
        "track_interface": [{"interface": "eth2", "weight": 20, "demotion_group": "uplinks"}],
        "track_script": [{"name": "dns", "command": ["/usr/local/bin/check-dns"], "interval_ms": 5000,
                          "rise": 3, "fall": 1, "weight": 0, "demotion_group": "fw"}],
        "sync": sync(1, [1, 2], commit="continuous"),
        "health": health(hosts, [table("web", ["web1", "web2"], check={"method": "http", "path": "/",
                                                                     "timeout_ms": 500}),
                                 table("sorry", ["sorry"], check={"method": "tcp", "timeout_ms": 500})],
                         [redirect("www", "web", demote="lan", backup_table="sorry")]),
    }


def _paths(doc, prefix=()):
    """Every (container, key) in the document, tables and arrays alike."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for k, v in items:
        yield doc, k, (*prefix, k)
        if isinstance(v, (dict, list)):
            yield from _paths(v, (*prefix, k))


def _toml_value(rng: random.Random, depth: int = 0):
    k = rng.randrange(9 if depth < 2 else 7)
    if k == 0:
        return rng.choice(INTERESTING_INTS + (10, 60000, 60001, 254, 256, 65536))
    if k == 1:
        return rng.choice((0.0, 1.5, float("inf"), float("nan"), -1e9))
    if k == 2:
        return rng.choice(("", "x", "lan", "eth0", "192.0.2.1/24", "::1", "/etc/passwd", "../../x", "a" * 300,
                           "1e9", "true", "\u00e9", "a b", "-x"))
    if k == 3:
        return rng.random() < 0.5
    if k == 4:
        return rng.choice((datetime.date(2024, 1, 1), datetime.time(1, 2), datetime.datetime(2024, 1, 1, 1)))
    if k == 5:
        return []
    if k == 6:
        return rng.choice(([1, 2], ["a", "b"], [True], ["192.0.2.1"]))
    if k == 7:
        return [_toml_value(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return {rng.choice(("id", "name", "x")): _toml_value(rng, depth + 1)}


def _mutate_doc(doc: dict, rng: random.Random) -> str:
    paths = list(_paths(doc))
    container, key, _ = rng.choice(paths)
    r = rng.random()
    if r < 0.65:
        container[key] = _toml_value(rng)
        return "value"
    if r < 0.85:
        container.pop(key)
        return "removed"
    if isinstance(container, dict):
        container[rng.choice(("junk", "ID", "name ", "id"))] = _toml_value(rng)
    elif any(isinstance(t, dict) for t in container) and rng.random() < 0.5:
        container.append(dict(rng.choice([t for t in container if isinstance(t, dict)])))   # a table twice
    else:
        container.append(_toml_value(rng))
    return "added"


def _mutate_text(text: str, rng: random.Random) -> tuple[str, bytes]:
    lines = text.split("\n")
    r = rng.random()
    if r < 0.5:
        return mutate_bytes(text.encode(), rng, [], [])
    i = rng.randrange(len(lines))
    if r < 0.65:
        del lines[i]
        how = "line deleted"
    elif r < 0.8:
        lines.insert(i, lines[rng.randrange(len(lines))])
        how = "line repeated"
    elif r < 0.9:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        how = "lines swapped"
    else:
        lines[i] = lines[i].replace("=", rng.choice(("==", "", "= =", "=[")), 1)
        how = "line broken"
    return how, "\n".join(lines).encode()


class ConfigFiles:
    """One temporary file, rewritten for each text mutation."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="meshd-fuzz-")
        self.path = os.path.join(self.dir.name, "meshd.toml")
        self.text = dumps(valid_config())
        assert parse_config(tomllib.loads(self.text), "meshd.toml", read_secrets=False)


_files: ConfigFiles | None = None


def _check_problems(e: ConfigError, filename: str, how: str, data: bytes, tally) -> None:
    if not e.problems or any(not p.startswith(f"{filename}: ") or len(p) <= len(filename) + 2
                             for p in e.problems):
        tally.findings.append(Finding("config", "wrong answer", f"{how}: {e.problems!r:.300}", data))


def config(_w, rng: random.Random, tally) -> None:
    global _files
    if _files is None:
        _files = ConfigFiles()
    if rng.random() < 0.4:
        how, data = _mutate_text(_files.text, rng)
        tally.count("text " + how)
        with open(_files.path, "wb") as f:
            f.write(data)
        try:
            load_config(_files.path, read_secrets=False)
        except ConfigError as e:
            _check_problems(e, _files.path, how, data, tally)
        except Exception as e:  # noqa: BLE001 -- the finding
            tally.findings.append(Finding("config", "exception", f"text {how}: {e!r:.300}", data))
        return
    doc = valid_config()
    hows = [_mutate_doc(doc, rng) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    how = "+".join(hows)
    tally.count("value " + how)
    try:
        parse_config(doc, "meshd.toml", read_secrets=False)
    except ConfigError as e:
        _check_problems(e, "meshd.toml", how, repr(doc).encode()[:2000], tally)
    except Exception as e:  # noqa: BLE001 -- the finding
        tally.findings.append(Finding("config", "exception", f"value {how}: {e!r:.300}",
                                      repr(doc).encode()[:2000]))


TARGETS = {"control": control, "config": config}
