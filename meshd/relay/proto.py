"""The relay engine's messages: what the daemon sends the engine child and
what it answers, as imsg schemas, and the conversion of a `HealthRelay`.

    daemon → engine   relays {relays[...]}                 live {table, hosts[...]}
                      enable {relay, on}                   query {id, what}
    engine → daemon   hello {pid, uid, notes}              answer {id, relays[...], sessions[...], truncated}
                      log {event, level, text}

`relays` is the whole set every time (the engine adds, changes and drops
relays by name); certificate and key files are read by the daemon (root)
and travel as PEM bytes, so the engine opens no file of the operator's.  The
http / dns sub-table travels as written (`protocol_raw`, msgpack) and the
engine parses it with the same parser the daemon used.

Must not: do I/O.
"""

from __future__ import annotations

from typing import Any

from ..privsep.imsg import Field, Schema

MAX_MESSAGE = 1 << 20          # a relay set with certificate chains; a sessions answer
MAX_TEXT = 1024
MAX_RELAYS = 256
MAX_SESSIONS = 2000            # rows of one `show sessions` answer (the rest is counted)
LOG_LEVELS = ("debug", "info", "notice", "warning", "error")

ID = Field("int", lo=0, hi=(1 << 63) - 1)
NAME = Field("str", max_len=64)
ADDRESS = Field("str", max_len=64)
PORT = Field("int", lo=0, hi=65535)
PEM = Field("bytes", max_len=256 << 10)

TLS_FIELDS = {"cert_pem": PEM, "key_pem": PEM, "ciphers": Field("str", optional=True, max_len=4096),
              "min_version": Field("str", max_len=16), "session_cache": Field("bool")}
BACKEND_TLS_FIELDS = {"verify": Field("bool"), "ca_pem": Field("bytes", optional=True, max_len=1 << 19),
                      "sni": Field("str", optional=True, max_len=255)}
RELAY_FIELDS = {
    "name": NAME, "address": ADDRESS, "port": PORT, "protocol": Field("str", max_len=8),
    "table": NAME, "backup_table": Field("str", optional=True, max_len=64),
    "mode": Field("str", max_len=16),
    "connect_s": Field("float", lo=0.001, hi=3600), "idle_s": Field("float", lo=0.001, hi=86400),
    "session_s": Field("float", lo=0, hi=86400),
    "backlog": Field("int", lo=1, hi=65535), "nodelay": Field("bool"),
    "sndbuf": Field("int", lo=0, hi=1 << 26), "rcvbuf": Field("int", lo=0, hi=1 << 26),
    "ip_ttl": Field("int", optional=True, lo=1, hi=255),
    "ip_minttl": Field("int", optional=True, lo=1, hi=255),
    "tls": Field("struct", optional=True, struct=TLS_FIELDS),
    "backend_tls": Field("struct", optional=True, struct=BACKEND_TLS_FIELDS),
    "protocol_raw": Field("bytes", optional=True, max_len=1 << 18),
    "disabled": Field("bool"),
}
LIVE_HOST = Field("struct", struct={"host": NAME, "address": ADDRESS, "port": PORT,
                                    "weight": Field("int", lo=1, hi=1000)})
BACKEND_ROW = Field("struct", struct={"host": NAME, "address": ADDRESS, "port": PORT,
                                      "live": Field("bool"), "open": Field("int", lo=0),
                                      "total": Field("int", lo=0), "failed": Field("int", lo=0)})
COUNTER = Field("struct", struct={"name": Field("str", max_len=64), "value": Field("int")})
RELAY_ROW = Field("struct", struct={
    "name": NAME, "address": ADDRESS, "port": PORT, "protocol": Field("str", max_len=8),
    "status": Field("str", max_len=64), "listening": Field("bool"),
    "sessions": Field("int", lo=0), "total": Field("int", lo=0), "refused": Field("int", lo=0),
    "errors": Field("int", lo=0), "tls": Field("bool"),
    "backends": Field("list", max_len=1024, item=BACKEND_ROW),
    "counters": Field("list", max_len=256, item=COUNTER),
})
SESSION_ROW = Field("struct", struct={
    "id": ID, "relay": NAME, "client": Field("str", max_len=80),
    "backend": Field("str", optional=True, max_len=80), "age_s": Field("float", lo=0),
    "bytes_in": Field("int", lo=0), "bytes_out": Field("int", lo=0)})

TO_RELAY = Schema({
    "relays": {"relays": Field("list", max_len=MAX_RELAYS, item=Field("struct", struct=RELAY_FIELDS))},
    "live": {"table": NAME, "hosts": Field("list", max_len=4096, item=LIVE_HOST)},
    "enable": {"relay": NAME, "on": Field("bool")},
    "query": {"id": ID, "what": Field("str", max_len=16)},
})

FROM_RELAY = Schema({
    "hello": {"pid": Field("int", lo=1), "uid": Field("int", lo=0), "notes": Field("str", max_len=MAX_TEXT)},
    "answer": {"id": ID, "relays": Field("list", max_len=MAX_RELAYS, item=RELAY_ROW),
               "sessions": Field("list", max_len=MAX_SESSIONS, item=SESSION_ROW),
               "truncated": Field("int", lo=0)},
    "log": {"event": Field("str", max_len=64), "level": Field("str", max_len=16),
            "text": Field("str", max_len=MAX_TEXT)},
})


def relay_fields(relay, cert_pem: bytes | None = None, key_pem: bytes | None = None,
                 ca_pem: bytes | None = None, disabled: bool | None = None) -> dict[str, Any]:
    """A `HealthRelay` (meshd/config/relay.py) as a `relays` item; the PEM
    texts are the files its tls / backend_tls name, read by the caller."""
    tls = None
    if relay.tls is not None:
        tls = {"cert_pem": cert_pem or b"", "key_pem": key_pem or b"", "ciphers": relay.tls.ciphers,
               "min_version": relay.tls.min_version, "session_cache": relay.tls.session_cache}
    backend_tls = None
    if relay.backend_tls is not None:
        backend_tls = {"verify": relay.backend_tls.verify, "ca_pem": ca_pem, "sni": relay.backend_tls.sni}
    t = relay.tcp
    return {"name": relay.name, "address": relay.address, "port": relay.port,
            "protocol": relay.protocol, "table": relay.table, "backup_table": relay.backup_table,
            "mode": relay.mode, "connect_s": relay.connect_timeout_ms / 1000,
            "idle_s": relay.idle_timeout_ms / 1000, "session_s": relay.session_timeout_ms / 1000,
            "backlog": t.backlog, "nodelay": t.nodelay, "sndbuf": t.sndbuf, "rcvbuf": t.rcvbuf,
            "ip_ttl": t.ip_ttl, "ip_minttl": t.ip_minttl, "tls": tls, "backend_tls": backend_tls,
            "protocol_raw": relay.protocol_raw,
            "disabled": relay.disabled if disabled is None else disabled}


def live_fields(table: str, hosts) -> dict[str, Any]:
    return {"table": table, "hosts": [{"host": h, "address": a, "port": p, "weight": w}
                                      for h, a, p, w in hosts]}
