"""The relay's `http` sub-table: every action form, defaults, and errors that
name the file and the key path."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from meshd.config.reader import Reader
from meshd.config.relay_http import parse_http
from meshd.relay.httpspec import HttpAction, HttpSpec

PATH = "health.relay[0].http"


def parse(text: str) -> tuple[HttpSpec | None, list[str]]:
    r = Reader("meshd.toml")
    spec = parse_http(r, tomllib.loads(text), PATH)
    return spec, r.problems


def test_absent_sub_table_gives_the_defaults():
    r = Reader("meshd.toml")
    assert parse_http(r, None, PATH) == HttpSpec()
    assert r.problems == []
    assert HttpSpec().keep_alive and not HttpSpec().forwarded_for


def test_every_action_form_reads_as_written():
    spec, problems = parse('''
forwarded_for = true
forwarded = true
keep_alive = false
max_header_bytes = 8192
max_headers = 50
max_body_bytes = 1048576
request = [
  { header = "Host", expect = "www.example.com" },
  { header = "X-Token", expect = true },
  { header = "User-Agent", filter = "*sqlmap*" },
  { header = "X-Forwarded-By", change = "$SERVER_ADDR:$SERVER_PORT" },
  { header = "Via", append = "meshd" },
  { header = "X-Internal-*", remove = true },
  { header = "X-User", hash = true },
  { header = "Host", log = true },
  { cookie = "SID", hash = true },
  { cookie = "theme", change = "dark" },
  { cookie = "tracking", remove = true },
  { query = "debug", filter = true },
  { query = "lang", append = "en" },
  { path = "/admin*", filter = true },
  { path = "/cgi-bin/index.cgi", filter = "*cmd=*" },
  { path = "/api/*", expect = true },
  { url = "www.example.com/private/*", filter = true },
  { url = "*", log = true },
]
response = [
  { header = "Server", remove = true },
  { header = "Content-Type", expect = "text/*" },
]
''')
    assert problems == []
    assert spec.forwarded_for and spec.forwarded and not spec.keep_alive
    assert (spec.max_header_bytes, spec.max_headers, spec.max_body_bytes) == (8192, 50, 1048576)
    assert spec.request[0] == HttpAction("header", "expect", "Host", "www.example.com")
    assert spec.request[1] == HttpAction("header", "expect", "X-Token", None)
    assert spec.request[3] == HttpAction("header", "change", "X-Forwarded-By", "$SERVER_ADDR:$SERVER_PORT")
    assert spec.request[5] == HttpAction("header", "remove", "X-Internal-*", None)
    assert spec.request[8] == HttpAction("cookie", "hash", "SID", None)
    assert spec.request[14] == HttpAction("path", "filter", "/cgi-bin/index.cgi", "*cmd=*")
    assert [a.op for a in spec.request] == ["expect", "expect", "filter", "change", "append", "remove",
                                            "hash", "log", "hash", "change", "remove", "filter",
                                            "append", "filter", "filter", "expect", "filter", "log"]
    assert spec.response == (HttpAction("header", "remove", "Server", None),
                             HttpAction("header", "expect", "Content-Type", "text/*"))


@pytest.mark.parametrize(("toml", "where", "says"), [
    ('request = [ { header = "X", appendd = "y" } ]', f"{PATH}.request[0].appendd", "unknown key"),
    ('request = [ { header = "X" } ]', f"{PATH}.request[0]", "exactly one op"),
    ('request = [ { header = "X", cookie = "Y", log = true } ]', f"{PATH}.request[0]", "exactly one entity"),
    ('request = [ { header = "X", log = true, hash = true } ]', f"{PATH}.request[0]", "exactly one op"),
    ('request = [ "header X" ]', f"{PATH}.request[0]", "expected an action table"),
    ('request = [ { header = "", log = true } ]', f"{PATH}.request[0].header", "non-empty string"),
    ('request = [ { header = 3, log = true } ]', f"{PATH}.request[0].header", "non-empty string"),
    ('request = [ { header = "X", remove = false } ]', f"{PATH}.request[0].remove", "expected true"),
    ('request = [ { header = "X", append = true } ]', f"{PATH}.request[0].append", "text to write"),
    ('request = [ { header = "X", expect = 5 } ]', f"{PATH}.request[0].expect", "a glob"),
    ('request = [ { header = "X-*", change = "v" } ]', f"{PATH}.request[0].header", "not a glob"),
    ('request = [ { header = "Bad Name", append = "v" } ]', f"{PATH}.request[0].header", "header name"),
    ('request = [ { header = "X", change = "$REMOTE_IP" } ]', f"{PATH}.request[0].change",
     "unknown variable $REMOTE_IP"),
    ('request = [ { header = "X", change = "a\\r\\nB: c" } ]', f"{PATH}.request[0].change",
     "control characters"),
    ('request = [ { header = "Content-Length", change = "0" } ]', f"{PATH}.request[0].header",
     "frames each message itself"),
    ('response = [ { header = "transfer-encoding", remove = true } ]', f"{PATH}.response[0].header",
     "frames each message itself"),
    ('request = [ { header = "Via", append = "" } ]', f"{PATH}.request[0].append", "empty string"),
    ('request = [ { url = "x/*", remove = true } ]', f"{PATH}.request[0].remove", "not an op of url"),
    ('request = [ { path = "/x", remove = true } ]', f"{PATH}.request[0].remove", "not an op of path"),
    ('request = [ { path = "admin", filter = true } ]', f"{PATH}.request[0].path", "starting with '/'"),
    ('request = [ { cookie = "a=b", hash = true } ]', f"{PATH}.request[0].cookie", "cookie name"),
    ('response = [ { cookie = "SID", hash = true } ]', f"{PATH}.response[0].cookie", "not in a response"),
    ('response = [ { header = "X", hash = true } ]', f"{PATH}.response[0].hash", "not an op of header"),
    ('request = { header = "X", log = true }', f"{PATH}.request", "expected a list"),
    ('keep_alive = "yes"', f"{PATH}.keep_alive", "true or false"),
    ('max_header_bytes = 10', f"{PATH}.max_header_bytes", "from 1024"),
    ('max_body_bytes = -1', f"{PATH}.max_body_bytes", "at least 0"),
    ('forwarded_fro = true', f"{PATH}.forwarded_fro", "unknown key"),
])
def test_bad_input_is_named_by_file_and_key_path(toml, where, says):
    spec, problems = parse(toml)
    assert spec is None
    assert any(p.startswith(f"meshd.toml: {where}: ") and says in p for p in problems), problems


def test_every_problem_is_listed_at_once():
    _spec, problems = parse('''
request = [ { header = "X", appendd = "y" }, { path = "/ok", filter = true }, { url = 1, log = true } ]
response = [ { header = "Server", hash = true } ]
''')
    assert len(problems) >= 3
    assert any(".request[0]" in p for p in problems)
    assert any(".request[2].url" in p for p in problems)
    assert any(".response[0].hash" in p for p in problems)


def test_sub_table_that_is_not_a_table():
    r = Reader("meshd.toml")
    assert parse_http(r, "on", PATH) is None
    assert r.problems and r.problems[0].startswith(f"meshd.toml: {PATH}: expected a table")


def test_the_example_of_docs_relays_md_parses():
    # docs/relays.md stays true to the parser: the TOML block of the http section is read as written.
    text = (Path(__file__).resolve().parents[2] / "docs" / "relays.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```toml\n")[1:]]
    (block,) = [b for b in blocks if "[health.relay.http]" in b]
    data = tomllib.loads(block)
    r = Reader("relays.md")
    spec = parse_http(r, data["health"]["relay"][0]["http"], PATH)
    assert r.problems == [] and spec.forwarded_for
    assert [(a.entity, a.op) for a in spec.request] == [
        ("header", "expect"), ("path", "filter"), ("header", "change"), ("cookie", "hash"), ("url", "log")]
