"""The `[metrics]` section (meshd/config/metrics.py) and what a reload does with it."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from meshd.config import DEFAULT_METRICS_PORT, ConfigError, MetricsConfig, parse_config
from meshd.reload import plan_reload

BASE = """\
[node]
id = 1

[cluster]
keys = [{ id = 1, secret_file = "k1.key" }]

[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24"]
"""


def config(extra: str = "", top: str = ""):
    cfg = parse_config(tomllib.loads(top + BASE + extra), "meshd.toml", read_secrets=False)
    return dataclasses.replace(cfg, secrets={1: b"a" * 32})


def problems(extra: str, top: str = "") -> list[str]:
    with pytest.raises(ConfigError) as e:
        config(extra, top)
    return e.value.problems


def test_no_section_no_endpoint_and_an_empty_section_takes_the_default():
    assert config().metrics is None
    m = config("[metrics]\n").metrics
    assert m == MetricsConfig("127.0.0.1", DEFAULT_METRICS_PORT) and m.listen == "127.0.0.1:7114"
    assert m.family == 4


@pytest.mark.parametrize(("listen", "address", "port", "family"), [
    ("127.0.0.1:9999", "127.0.0.1", 9999, 4),
    ("0.0.0.0:7114", "0.0.0.0", 7114, 4),
    ("[::1]:7114", "::1", 7114, 6),
    ("[2001:DB8::1]:1", "2001:db8::1", 1, 6),
])
def test_ipv4_and_ipv6_listen_addresses(listen, address, port, family):
    m = config(f'[metrics]\nlisten = "{listen}"\n').metrics
    assert (m.address, m.port, m.family) == (address, port, family)
    assert m.listen == listen.lower()


@pytest.mark.parametrize(("value", "why"), [
    ('"localhost:7114"', 'expected "IPV4:PORT" or "[IPV6]:PORT"'),
    ('"127.0.0.1"', 'expected "IPV4:PORT" or "[IPV6]:PORT"'),
    ('"::1:7114"', 'expected "IPV4:PORT" or "[IPV6]:PORT"'),
    ('"[fe80::1%eth0]:7114"', 'expected "IPV4:PORT" or "[IPV6]:PORT"'),
    ('"300.0.0.1:7114"', 'expected "IPV4:PORT" or "[IPV6]:PORT"'),
    ('"127.0.0.1:0"', "expected a port from 1 to 65535"),
    ('"127.0.0.1:70000"', "expected a port from 1 to 65535"),
    ("7114", "expected a non-empty string, found 7114"),
])
def test_a_bad_listen_is_named_by_file_and_key(value, why):
    (problem,) = problems(f"[metrics]\nlisten = {value}\n")
    assert problem.startswith("meshd.toml: metrics.listen: ") and why in problem, problem


def test_unknown_keys_and_a_non_table_are_refused():
    (problem,) = problems('[metrics]\nport = 7114\n')
    assert problem == "meshd.toml: metrics.port: unknown key (known keys: listen)"
    (problem,) = problems("", top='metrics = "on"\n')
    assert problem.startswith("meshd.toml: metrics: expected a table")


def test_every_metrics_change_applies_live_on_reload():
    none, default = config(), config("[metrics]\n")
    v6 = config('[metrics]\nlisten = "[::1]:7114"\n')
    assert plan_reload(none, default).changes == ("metrics: section added (serving on 127.0.0.1:7114)",)
    assert plan_reload(default, none).changes == ("metrics: section removed (the endpoint on 127.0.0.1:7114 closes)",)
    plan = plan_reload(default, v6)
    assert plan.changes == ("metrics.listen: 127.0.0.1:7114 -> [::1]:7114 (the endpoint is bound anew)",)
    assert plan.refusals == ()
    assert plan_reload(v6, config('[metrics]\nlisten = "[::1]:7114"\n')).changes == ()
