"""One line per event: `key=value` text (default) or JSON.

Values with spaces, quotes or `=` are quoted so a line stays machine-readable
(`grep event=state`, `jq`).  The logger never raises: a logging failure must
not take the daemon down.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _fmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        return json.dumps(text)
    return text


class EventLog:
    def __init__(self, stream: TextIO | None = None, fmt: str = "text", level: str = "info"):
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {fmt!r}")
        self.stream = stream or sys.stderr
        self.fmt = fmt
        self.threshold = LEVELS[level]

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        if LEVELS.get(level, 20) < self.threshold:
            return
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        try:
            if self.fmt == "json":
                line = json.dumps({"ts": ts, "level": level, "event": event, **fields}, default=str)
            else:
                parts = [f"ts={ts}", f"level={level}", f"event={event}"]
                parts += [f"{k}={_fmt_value(v)}" for k, v in fields.items() if v is not None]
                line = " ".join(parts)
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


class RateLimiter:
    """Lets the first event of a key through, then at most one per `period` seconds.

    Rejected adverts can arrive at line rate (an attack or a misconfigured
    peer); they are all counted, but the log gets a bounded number of lines.
    """

    def __init__(self, period: float = 10.0):
        self.period = period
        self.last: dict[Any, float] = {}
        self.suppressed: dict[Any, int] = {}

    def allow(self, key: Any, now: float) -> tuple[bool, int]:
        """(log it?, how many were suppressed since the last logged one)."""
        last = self.last.get(key)
        if last is not None and now - last < self.period:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False, 0
        self.last[key] = now
        if len(self.last) > 10000:  # bounded memory under a spoofed-source flood
            self.last.clear()
        return True, self.suppressed.pop(key, 0)
