"""The check engine's messages: what the daemon sends the engine child and
what it answers, as imsg schemas, and the conversions from and to the
health value types (meshd/health/checkspec.py).

    daemon → engine   start {id, address, port, spec{...}}   cancel {id}
    engine → daemon   hello {pid, uid, notes}                 outcome {id, ok, latency, error, warning}
                      refused {id}                            log {event, level, text}

Both ends validate what they receive against these schemas
(meshd/privsep/imsg.py); the engine also refuses a target whose values make
no sense (`target_from`), and the daemon bounds what an engine may say (the
strings end up in log lines).

Must not: do I/O, or carry a script check (scripts stay in the daemon).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..privsep.imsg import Field, Schema
from .checkspec import METHODS, CheckOutcome, CheckSpec, CheckTarget

ENGINE_METHODS = tuple(m for m in METHODS if m != "script")
MAX_TEXT = 1024              # characters of an error, warning or log line from the engine

ID = Field("int", lo=0, hi=(1 << 63) - 1)

SPEC_FIELDS: dict[str, Field] = {
    "method": Field("str", max_len=16),
    "timeout_s": Field("float", lo=0.001, hi=3600),
    "path": Field("str", max_len=8192),
    "host_header": Field("str", optional=True, max_len=1024),
    "codes": Field("pair", lo=100, hi=599),
    "digest": Field("str", optional=True, max_len=256),
    "sni": Field("str", optional=True, max_len=1024),
    "verify": Field("bool"),
    "verify_name": Field("str", optional=True, max_len=1024),
    "ca_file": Field("str", optional=True, max_len=4096),
    "expiry_warn_days": Field("int", optional=True, lo=1, hi=3650),
    "send": Field("bytes", optional=True, max_len=32768),
    "expect": Field("str", optional=True, max_len=8192),
    "expect_bytes": Field("bytes", optional=True, max_len=8192),
    "script": Field("str", optional=True, max_len=0),     # always None here
}

TO_ENGINE = Schema({
    "start": {"id": ID, "address": Field("str", max_len=64), "port": Field("int", lo=0, hi=65535),
              "spec": Field("struct", struct=SPEC_FIELDS)},
    "cancel": {"id": ID},
})

FROM_ENGINE = Schema({
    "hello": {"pid": Field("int", lo=1), "uid": Field("int", lo=0), "notes": Field("str", max_len=MAX_TEXT)},
    "outcome": {"id": ID, "ok": Field("bool"), "latency": Field("float", optional=True, lo=0, hi=86400),
                "error": Field("str", optional=True, max_len=MAX_TEXT),
                "warning": Field("str", optional=True, max_len=MAX_TEXT)},
    "refused": {"id": ID},
    "log": {"event": Field("str", max_len=64), "level": Field("str", max_len=16),
            "text": Field("str", max_len=MAX_TEXT)},
})

LOG_LEVELS = ("debug", "info", "notice", "warning", "error")


def target_fields(target: CheckTarget) -> dict[str, Any]:
    spec = target.spec
    return {"address": target.address, "port": target.port,
            "spec": {name: getattr(spec, name) for name in SPEC_FIELDS}}


def target_from(fields: dict[str, Any]) -> CheckTarget | str:
    """The CheckTarget a valid `start` describes, or why it is refused."""
    spec = dict(fields["spec"])
    if spec["method"] not in ENGINE_METHODS:
        return f"method {spec['method']!r} is not run by the check engine"
    try:
        ipaddress.ip_address(fields["address"])
    except ValueError:
        return f"address {fields['address']!r} is not an IP address"
    spec["codes"] = tuple(spec["codes"])
    spec["timeout_s"] = float(spec["timeout_s"])
    return CheckTarget(fields["address"], fields["port"], CheckSpec(**spec))


def outcome_fields(outcome: CheckOutcome) -> dict[str, Any]:
    def clip(text):
        return None if text is None else text[:MAX_TEXT]
    return {"ok": outcome.ok, "latency": outcome.latency_s, "error": clip(outcome.error),
            "warning": clip(outcome.warning)}


def outcome_from(fields: dict[str, Any]) -> CheckOutcome:
    latency = fields.get("latency")
    return CheckOutcome(fields["ok"], None if latency is None else float(latency),
                        fields.get("error"), fields.get("warning"))
