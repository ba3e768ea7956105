"""The typed TOML walker behind every configuration section.

It records problems instead of raising, so a file is refused with all of its
errors listed at once, each named by file and key path.  It also owns the
syntax of names (`NAME_RE`) the sections share.

Must not: know a section's keys, raise for a problem (it records it), or read
anything but the document it is handed.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

# Node, group, counter, host, table and redirect names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class Reader:
    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{self.filename}: {path}: {message}")

    def table(self, data: Any, path: str, allowed: set[str]) -> dict:
        if not isinstance(data, dict):
            self.problem(path, f"expected a table, found {describe(data)}")
            return {}
        for key in data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                self.problem(_join(path, key), f"unknown key (known keys: {known})")
        return data

    def get(self, data: dict, path: str, key: str, kind: str, default: Any = ...,
            lo: int | None = None, hi: int | None = None) -> Any:
        """Read data[key] checking its type; return default (or None) when bad."""
        where = _join(path, key)
        if key not in data:
            if default is ...:
                self.problem(where, f"missing (expected {_expected(kind, lo, hi)})")
                return None
            return default
        value = data[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "strlist": isinstance(value, list) and all(isinstance(v, str) for v in value),
            "list": isinstance(value, list),
        }[kind]
        if ok and kind == "int" and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            ok = False
        if ok and kind == "str" and value == "":
            ok = False
        if not ok:
            self.problem(where, f"expected {_expected(kind, lo, hi)}, found {describe(value)}")
            return None if default is ... else default
        return tuple(value) if kind == "strlist" else value

    def choice(self, data: dict, path: str, key: str, allowed: tuple[str, ...],
               default: str) -> str | None:
        """Read data[key], a string that must be one of `allowed`; None when bad."""
        value = self.get(data, path, key, "str", default=default)
        if value is not None and value not in allowed:
            self.problem(_join(path, key), f"expected one of {', '.join(allowed)}, found {describe(value)}")
            return None
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expected(kind: str, lo: int | None, hi: int | None) -> str:
    if kind == "int":
        if lo is not None and hi is not None:
            return f"an integer from {lo} to {hi}"
        if lo is not None:
            return f"an integer of at least {lo}"
        return "an integer"
    return {"bool": "true or false", "str": "a non-empty string",
            "strlist": "a list of strings", "list": "a list"}[kind]


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return f'"{value}"' if len(value) < 60 else f'"{value[:57]}..."'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def is_ip(text: str) -> bool:
    """Whether text is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def read_address(r: Reader, t: dict, path: str, key: str = "address") -> str | None:
    """t[key] as a canonical IPv4 / IPv6 address text (no prefix length), or None (a problem said)."""
    text = r.get(t, path, key, "str")
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        r.problem(f"{path}.{key}", f"expected an IPv4 or IPv6 address (no prefix length), "
                  f"found {describe(text)}")
        return None
