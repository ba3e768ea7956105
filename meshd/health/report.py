"""What `meshctl show summary` and `meshctl show hosts` print, from a HealthCore.

`summary` follows relayctl's `show summary`: one row per redirect, then each
table followed by its hosts (a disabled table hides its hosts, as relayd
does).  Rows are plain dicts so that `--json` prints them as they are; the
`format_*` functions make relayctl's columns of them.

Must not: change the core (it only reads it), or import trio or a shell:
meshctl imports this module for the `format_*` functions.
"""

from __future__ import annotations

from .core import HealthCore

SUMMARY_COLUMNS = (("Id", 5), ("Type", 10), ("Name", 28), ("Avlblty", 9), ("Status", 0))
HOSTS_COLUMNS = (("Id", 5), ("Table", 14), ("Host", 14), ("Address", 24), ("Status", 9),
                 ("Avlblty", 9), ("Checks", 8), ("Latency", 9), ("Last error", 0))


def summary(core: HealthCore) -> list[dict]:
    rows: list[dict] = []
    for rs in core.redirects.values():
        rows.append({"id": rs.id, "type": "redirect", "name": rs.config.name,
                     "availability": None, "status": rs.status or "unknown"})
    for tid, (name, table) in enumerate(core.tables.items()):
        status = core.table_status(name)
        rows.append({"id": tid, "type": "table", "name": name, "availability": None,
                     "status": status})
        if status == "disabled":
            continue
        for m in core.members_of(name):
            rows.append({"id": m.id, "type": "host", "name": m.host,
                         "availability": _round(m.health.availability()),
                         "status": core.host_status(m)})
    return rows


def hosts(core: HealthCore, now: float | None = None) -> list[dict]:
    """Every host of every table with its counts; times as ages when `now` is given."""
    rows: list[dict] = []
    for m in core.members.values():
        h = m.health
        last = h.window[-1] if h.window else None
        rows.append({
            "id": m.id, "table": m.table, "host": m.host, "address": m.address, "port": m.port,
            "weight": m.weight,
            "status": core.host_status(m) if core.enabled("table", m.table) else "disabled",
            "method": m.target.spec.method,
            "availability": _round(h.availability()),
            "checks": h.checks, "successes": h.successes, "failures": h.checks - h.successes,
            "changing": h.progress(),
            "interval_ms": core.pace_ms(m),
            "latency_ms": _ms(last.latency_s) if last else None,
            "last_error": h.last_error,
            "warning": h.last_warning,
            "last_check_ago_s": _age(last.at, now) if last else None,
            "since_ago_s": _age(h.since, now),
            "recent": [{"ago_s": _age(r.at, now), "ok": r.ok, "latency_ms": _ms(r.latency_s),
                        "error": r.error} for r in h.window],
        })
    return rows


def format_summary(rows: list[dict]) -> str:
    lines = [_line(SUMMARY_COLUMNS, [c for c, _ in SUMMARY_COLUMNS])]
    for r in rows:
        lines.append(_line(SUMMARY_COLUMNS, [str(r["id"]), r["type"], r["name"],
                                             _percent(r["availability"]), r["status"]]))
    return "\n".join(lines) + "\n"


def format_hosts(rows: list[dict]) -> str:
    lines = [_line(HOSTS_COLUMNS, [c for c, _ in HOSTS_COLUMNS])]
    for r in rows:
        address = f"[{r['address']}]:{r['port']}" if ":" in r["address"] else f"{r['address']}:{r['port']}"
        latency = "" if r["latency_ms"] is None else f"{r['latency_ms']:g}ms"
        status = r["status"] + (f" ({r['changing']})" if r["changing"] else "")
        checks = f"{r['successes']}/{r['checks']}"
        lines.append(_line(HOSTS_COLUMNS, [str(r["id"]), r["table"], r["host"], address, status,
                                           _percent(r["availability"]), checks, latency,
                                           r["last_error"] or ""]))
    return "\n".join(lines) + "\n"


def _line(columns, values) -> str:
    # A value wider than its column still gets one space, so columns never run together.
    parts = [v.ljust(width - 1) + " " if width else v for (_, width), v in zip(columns, values)]
    return "".join(parts).rstrip()


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}%"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _age(at: float | None, now: float | None) -> float | None:
    return None if at is None or now is None else round(now - at, 3)
