"""`meshctl show relays` and `show sessions` as text (relayctl's shape): the
daemon answers with rows (the relay engine's counts), this formats them.

Must not: import anything but the standard library (meshctl imports it).
"""

from __future__ import annotations


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def format_relays(rows: list[dict]) -> str:
    """One line per relay, then one per backend it knows."""
    out = [["Type", "Name", "Listener", "Status", "Now", "Total", "Refused", "Errors"]]
    for r in rows:
        listener = f"{r.get('protocol')}{'+tls' if r.get('tls') else ''} {_endpoint(r['address'], r['port'])}"
        status = r.get("status", "?")
        if not r.get("listening", False):
            status += " (not listening" + (f": {r['why']}" if r.get("why") else "") + ")"
        out.append(["relay", r["name"], listener, status, str(r.get("sessions", 0)), str(r.get("total", 0)),
                    str(r.get("refused", 0)), str(r.get("errors", 0))])
        for b in r.get("backends", []):
            out.append(["backend", b["host"], _endpoint(b["address"], b["port"]),
                        "live" if b.get("live") else "not used", str(b.get("open", 0)),
                        str(b.get("total", 0)), "", str(b.get("failed", 0))])
    return _table(out)


def format_sessions(rows: list[dict], truncated: int = 0) -> str:
    out = [["Id", "Relay", "Client", "Backend", "Age", "In", "Out"]]
    for s in rows:
        out.append([str(s["id"]), s["relay"], s["client"], s.get("backend") or "-", f"{s['age_s']:.1f}s",
                    str(s["bytes_in"]), str(s["bytes_out"])])
    text = _table(out)
    if truncated:
        text += f"\n... and {truncated} more sessions"
    return text
