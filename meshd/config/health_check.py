"""The `check` sub-table of a `[[health.table]]`: which probe, and its options.

Owns the keys each method takes (a key given to a method that ignores it is
refused, so a typo'd method cannot pass) and turns the table into a hashable
`CheckSpec`.

Must not: run a check or open a file: a script or CA file named here is looked
at by preflight and used by meshd/health/checks.py.
"""

from __future__ import annotations

import re
from typing import Any

from ..health.checkspec import METHODS, CheckSpec
from .reader import Reader, describe

DIGEST_HEX_LEN = {"sha256": 64, "md5": 32}
# Keys of a check sub-table and the methods that use them; a key given to a
# method that ignores it is refused (a typo'd method would otherwise pass).
CHECK_KEY_METHODS: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "timeout_ms": METHODS,
    "path": ("http", "https"),
    "host": ("http", "https"),
    "code": ("http", "https"),
    "codes": ("http", "https"),
    "digest": ("http", "https"),
    "sni": ("tls", "https"),
    "verify": ("tls", "https"),
    "verify_name": ("tls", "https"),
    "ca_file": ("tls", "https"),
    "expiry_warn_days": ("tls", "https"),
    "send": ("send",),
    "expect": ("send",),
    "send_hex": ("binary",),
    "expect_hex": ("binary",),
    "script": ("script",),
}
# Keys a method cannot do without.
CHECK_REQUIRED = {"send": ("expect",), "binary": ("expect_hex",), "script": ("script",)}
DEFAULT_TIMEOUT_MS = 1000


def parse_check(r: Reader, data: Any, path: str) -> CheckSpec | None:
    if data is None:
        r.problem(path, "missing (expected a table like { method = \"http\", path = \"/\", code = 200 })")
        return None
    t = r.table(data, path, set(CHECK_KEY_METHODS))
    method = r.get(t, path, "method", "str")
    if method is None:
        return None
    if method not in METHODS:
        r.problem(f"{path}.method", f"expected one of {', '.join(METHODS)}, found {describe(method)}")
        return None
    problems_before = len(r.problems)
    for key in t:
        if key in CHECK_KEY_METHODS and method not in CHECK_KEY_METHODS[key]:
            r.problem(f"{path}.{key}", f"not used by method {method} "
                      f"(only {', '.join(CHECK_KEY_METHODS[key])})")
    for key in CHECK_REQUIRED.get(method, ()):
        if key not in t:
            r.problem(f"{path}.{key}", f"missing (method {method} needs it)")
    kw: dict[str, Any] = {}
    timeout = r.get(t, path, "timeout_ms", "int", default=DEFAULT_TIMEOUT_MS, lo=10, hi=600_000)
    kw["timeout_s"] = None if timeout is None else timeout / 1000
    if method in ("http", "https"):
        kw["path"] = r.get(t, path, "path", "str", default="/")
        if kw["path"] is not None and not kw["path"].startswith("/"):
            r.problem(f"{path}.path", f"expected a path starting with '/', found {describe(kw['path'])}")
        kw["host_header"] = r.get(t, path, "host", "str", default=None)
        kw["codes"] = _parse_codes(r, t, path)
        kw["digest"] = _parse_digest(r, t, path)
    if method in ("tls", "https"):
        kw["sni"] = r.get(t, path, "sni", "str", default=None)
        kw["verify"] = r.get(t, path, "verify", "bool", default=False)
        kw["verify_name"] = r.get(t, path, "verify_name", "str", default=None)
        kw["ca_file"] = r.get(t, path, "ca_file", "str", default=None)
        kw["expiry_warn_days"] = r.get(t, path, "expiry_warn_days", "int", default=None, lo=1, hi=3650)
        if not kw["verify"]:
            for key in ("verify_name", "ca_file"):
                if kw[key] is not None:
                    r.problem(f"{path}.{key}", "only with verify = true (nothing is verified otherwise)")
    if method == "send":
        send = r.get(t, path, "send", "str", default=None)
        kw["send"] = None if send is None else send.encode()
        kw["expect"] = r.get(t, path, "expect", "str", default=None)
    if method == "binary":
        kw["send"] = _parse_hex(r, t, path, "send_hex")
        kw["expect_bytes"] = _parse_hex(r, t, path, "expect_hex")
    if method == "script":
        kw["script"] = r.get(t, path, "script", "str", default=None)
        if kw["script"] is not None and not kw["script"].startswith("/"):
            r.problem(f"{path}.script", f"expected an absolute path, found {describe(kw['script'])}")
    if len(r.problems) > problems_before:
        return None
    return CheckSpec(method, **kw)


def _parse_codes(r: Reader, t: dict, path: str) -> tuple[int, int] | None:
    if "code" in t and "codes" in t:
        r.problem(f"{path}.codes", "give either code or codes, not both")
        return None
    if "digest" in t and ("code" in t or "codes" in t):
        r.problem(f"{path}.digest", "give either a digest or an expected code, not both")
        return None
    if "code" in t:
        code = r.get(t, path, "code", "int", lo=100, hi=599)
        return None if code is None else (code, code)
    text = r.get(t, path, "codes", "str", default="200")
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", text)
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    if not m or not 100 <= lo <= hi <= 599:
        r.problem(f"{path}.codes", f"expected a status code or range like \"200-299\", found {describe(text)}")
        return None
    return lo, hi


def _parse_digest(r: Reader, t: dict, path: str) -> str | None:
    text = r.get(t, path, "digest", "str", default=None)
    if text is None:
        return None
    algorithm, _, hexdigest = text.partition(":")
    algorithm = algorithm.lower()
    size = DIGEST_HEX_LEN.get(algorithm)
    if size is None or len(hexdigest) != size or not re.fullmatch(r"[0-9A-Fa-f]+", hexdigest):
        r.problem(f"{path}.digest", "expected \"sha256:\" and 64 hex digits or \"md5:\" and 32, "
                  f"found {describe(text)}")
        return None
    return f"{algorithm}:{hexdigest.lower()}"


def _parse_hex(r: Reader, t: dict, path: str, key: str) -> bytes | None:
    text = r.get(t, path, key, "str", default=None)
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        r.problem(f"{path}.{key}", f"expected hexadecimal bytes like \"0d0a\", found {describe(text)}")
        return None
