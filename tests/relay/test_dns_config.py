"""The `dns` sub-table of a relay (meshd/config/relay_dns.py): defaults,
values, and problems that name the key path."""

from __future__ import annotations

import tomllib

import pytest

from meshd.config.reader import Reader
from meshd.config.relay_dns import DnsSpec, parse_dns

PATH = "health.relay[0].dns"


def parse(text: str | None) -> tuple[DnsSpec | None, list[str]]:
    r = Reader("meshd.toml")
    data = None if text is None else tomllib.loads(f"dns = {text}")["dns"]
    return parse_dns(r, data, PATH), r.problems


def test_absent_sub_table_gives_the_defaults():
    spec, problems = parse(None)
    assert problems == [] and spec == DnsSpec()
    assert (spec.max_in_flight, spec.query_timeout_s, spec.retry, spec.balance) == (4096, 2.0, False, "query")
    assert (spec.tcp_max_message, spec.tcp_max_queries, spec.tcp_pipeline) == (65535, 1000, 32)


def test_every_key():
    spec, problems = parse('{ max_in_flight = 100, query_timeout_ms = 800, retry = true, '
                           'balance = "client", tcp_max_message = 1232, tcp_max_queries = 5, '
                           'tcp_pipeline = 4 }')
    assert problems == []
    assert spec == DnsSpec(max_in_flight=100, query_timeout_ms=800, retry=True, balance="client",
                           tcp_max_message=1232, tcp_max_queries=5, tcp_pipeline=4)


@pytest.mark.parametrize(("text", "problem"), [
    ('{ max_in_flight = 0 }', "health.relay[0].dns.max_in_flight: expected an integer from 1 to 32768, found 0"),
    ('{ max_in_flight = 40000 }', "health.relay[0].dns.max_in_flight: expected an integer from 1 to 32768"),
    ('{ query_timeout_ms = "2s" }', "health.relay[0].dns.query_timeout_ms: expected an integer from 50 to 60000, found \"2s\""),
    ('{ retry = "yes" }', "health.relay[0].dns.retry: expected true or false, found \"yes\""),
    ('{ balance = "source" }', "health.relay[0].dns.balance: expected one of query, client, found \"source\""),
    ('{ tcp_max_message = 70000 }', "health.relay[0].dns.tcp_max_message: expected an integer from 17 to 65535"),
    ('{ tcp_pipeline = 0 }', "health.relay[0].dns.tcp_pipeline: expected an integer from 1 to 1024"),
    ('{ tcp_max_queries = true }', "health.relay[0].dns.tcp_max_queries: expected an integer from 1 to 10000000, found true"),
    ('{ timeout = 5 }', "health.relay[0].dns.timeout: unknown key (known keys: balance, max_in_flight"),
    ('"udp"', "health.relay[0].dns: expected a table, found \"udp\""),
])
def test_problems_name_the_key(text, problem):
    spec, problems = parse(text)
    assert spec is None
    assert len(problems) == 1 and problems[0].startswith(f"meshd.toml: {problem}"), problems


def test_all_problems_at_once():
    _, problems = parse('{ retry = 1, tcp_pipeline = 5000 }')
    assert [p.split(": ")[1] for p in problems] == ["health.relay[0].dns.retry",
                                                    "health.relay[0].dns.tcp_pipeline"]
