"""Check runners: one CheckTarget in, one CheckOutcome out, on trio.

run_check() dispatches on spec.method and never raises (except trio's own
cancellation): every failure becomes CheckOutcome(ok=False, error=...) with
the reason phrased for the log line `host 10.1.0.11:80 down: <error>`:

    connect: connection refused          timeout after 200 ms (waiting for the response)
    http code 503, expected 200          body sha256 mismatch (got 3f2a9c1e0b7d...)
    expect 'OK*' not matched: got 'ERR'  tls: certificate verify failed: self-signed certificate
    script exit 2: <first stderr line>   icmp: destination unreachable (code 1)

Everything but scripts is bounded by spec.timeout_s as a whole (connect,
handshake, request, response). Scripts are bounded by their own timeout
once they start; waiting for a place in the ScriptPool is not counted.

CheckRunner is the trio shell side: start(check_id, target) runs a check in
the runner's nursery and reports (check_id, outcome). The health core
decides what to run and when (intervals, jitter, the global in-flight
limit); the runner only keeps a hard safety cap.

Must not: decide when a check runs or what its result means for a host (the
health core does: intervals, rise and fall, the in-flight limit), import the
health core, or raise a check's failure to the caller.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable, Hashable

import trio
from cryptography import x509

from meshd.config.reader import is_ip
from meshd.health import icmp
from meshd.health.checkspec import METHODS, CheckOutcome, CheckSpec, CheckTarget
from meshd.health.scriptpool import ScriptPool, describe_exit, milliseconds, run_script

MAX_BODY = 1 << 20          # bytes of an HTTP body read for a digest
MAX_HEADER = 64 << 10       # bytes of HTTP status line + headers
MAX_EXPECT_LINE = 4096      # bytes read for a send/expect first line
USER_AGENT = "meshd-check"


class CheckFailed(Exception):
    """The host failed the check; str() is the reason for the log."""


class _Progress:
    """What the check was doing, for the timeout message."""
    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = "connect"


async def run_check(target: CheckTarget, *, scripts: ScriptPool | None = None) -> CheckOutcome:
    """Run one check; never raises (but lets trio.Cancelled through)."""
    spec = target.spec
    start = trio.current_time()
    if spec.method == "script":
        return await _run_script(target, scripts, start)
    method = _METHODS.get(spec.method)
    if method is None:
        return CheckOutcome(False, None, f"unknown check method {spec.method!r} (one of {', '.join(METHODS)})")
    progress = _Progress()
    warning = None
    try:
        with trio.move_on_after(spec.timeout_s) as scope:
            warning = await method(target, progress)
        if scope.cancelled_caught:
            return CheckOutcome(False, None, f"timeout after {milliseconds(spec.timeout_s)} ms ({progress.phase})")
    except CheckFailed as e:
        return CheckOutcome(False, trio.current_time() - start, str(e))
    except Exception as e:  # noqa: BLE001 (a bug here must not take the health engine down with it)
        return CheckOutcome(False, trio.current_time() - start, f"check error: {type(e).__name__}: {e}")
    return CheckOutcome(True, trio.current_time() - start, None, warning)


def _phrase(e: OSError) -> str:
    text = os.strerror(e.errno) if e.errno else (str(e) or type(e).__name__)
    return text[:1].lower() + text[1:]


# --- tcp -------------------------------------------------------------------------------------

async def _connect(target: CheckTarget, progress: _Progress) -> trio.SocketStream:
    progress.phase = "connect"
    try:
        infos = await trio.socket.getaddrinfo(target.address, target.port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_NUMERICHOST)
    except socket.gaierror as e:
        raise CheckFailed(f"connect: bad address {target.address!r}: {e.strerror}") from None
    family, stype, proto, _cn, sockaddr = infos[0]
    sock = trio.socket.socket(family, stype, proto)
    try:
        await sock.connect(sockaddr)
    except OSError as e:
        sock.close()
        raise CheckFailed(f"connect: {_phrase(e)}") from None
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _check_tcp(target: CheckTarget, progress: _Progress) -> None:
    stream = await _connect(target, progress)
    await trio.aclose_forcefully(stream)


# --- tls -------------------------------------------------------------------------------------

_contexts: dict[tuple, ssl.SSLContext] = {}


def _tls_context(verify: bool, ca_file: str | None, check_hostname: bool) -> ssl.SSLContext:
    """Contexts are cached: loading the system trust store costs tens of milliseconds."""
    mtime = None
    if ca_file:
        try:
            mtime = os.stat(ca_file).st_mtime_ns      # a replaced CA file is reloaded
        except OSError as e:
            raise CheckFailed(f"tls: ca_file {ca_file}: {_phrase(e)}") from None
    key = (verify, ca_file, mtime, check_hostname)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.check_hostname = check_hostname
            try:
                if ca_file:
                    ctx.load_verify_locations(cafile=ca_file)
                else:
                    ctx.load_default_certs()
            except (OSError, ssl.SSLError) as e:
                raise CheckFailed(f"tls: cannot load ca_file {ca_file}: {e}") from None
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if len(_contexts) > 64:
            _contexts.clear()
        _contexts[key] = ctx
    return ctx


def _sni(target: CheckTarget) -> str | None:
    spec = target.spec
    if spec.sni:
        return spec.sni
    # HTTPS sends the Host header's name as SNI, as a browser would; an
    # address is never sent as SNI (RFC 6066).
    host = spec.host_header if spec.method == "https" else None
    if not host or host.startswith("["):
        return None
    if host.count(":") == 1:
        host = host.split(":")[0]
    return None if is_ip(host) else host


async def _tls_handshake(target: CheckTarget, progress: _Progress) -> tuple[trio.SSLStream, str | None]:
    """Connect, handshake, verify as the spec asks; returns the stream and an expiry warning."""
    spec = target.spec
    sni = _sni(target)
    name = (spec.verify_name or sni) if spec.verify else None
    # OpenSSL checks the name itself when it is the SNI; a different name is checked below.
    openssl_checks_name = bool(name) and name == sni
    ctx = _tls_context(spec.verify, spec.ca_file, openssl_checks_name)
    stream = await _connect(target, progress)
    progress.phase = "tls handshake"
    # https_compatible: a server that closes without close_notify (most
    # HTTP servers) ends the body instead of breaking the stream.
    tls = trio.SSLStream(stream, ctx, server_hostname=sni, https_compatible=True)
    try:
        await tls.do_handshake()
        der = tls.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
        if name and not openssl_checks_name and (cert is None or not certificate_matches(cert, name)):
            raise CheckFailed(f"tls: certificate verify failed: certificate is not valid for {name!r}")
        warning = expiry_warning(cert, spec.expiry_warn_days) if cert is not None else None
    except trio.BrokenResourceError as e:
        await trio.aclose_forcefully(tls)
        raise CheckFailed(_tls_error(e.__cause__)) from None
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls, warning


def _tls_error(cause: BaseException | None) -> str:
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"tls: certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        # "WRONG_VERSION_NUMBER" -> "wrong version number" (a plain-text server)
        return f"tls: {cause.reason.replace('_', ' ').lower()}" if cause.reason else f"tls: {cause}"
    if isinstance(cause, OSError):
        return f"tls: {_phrase(cause)}"
    return "tls: connection closed during the handshake"


def certificate_matches(cert: x509.Certificate, name: str) -> bool:
    """Does the certificate's subjectAltName cover name (a DNS name, one leftmost wildcard, or an IP)?"""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    want = name.lower().rstrip(".").split(".")
    for pattern in san.get_values_for_type(x509.DNSName):
        have = pattern.lower().rstrip(".").split(".")
        if len(have) != len(want):
            continue
        if have[0] == "*" and len(have) > 2 and have[1:] == want[1:]:
            return True
        if have == want:
            return True
    return False


def expiry_warning(cert: x509.Certificate, warn_days: int | None, now: datetime.datetime | None = None) -> str | None:
    if warn_days is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    not_after = cert.not_valid_after_utc
    left = not_after - now
    day = not_after.strftime("%Y-%m-%d")
    if left.total_seconds() < 0:
        return f"certificate expired {int(-left.total_seconds() // 86400)} days ago ({day})"
    if left < datetime.timedelta(days=warn_days):
        return f"certificate expires in {left.days} days ({day})"
    return None


async def _check_tls(target: CheckTarget, progress: _Progress) -> str | None:
    tls, warning = await _tls_handshake(target, progress)
    await trio.aclose_forcefully(tls)
    return warning


# --- http / https ----------------------------------------------------------------------------

class _Reader:
    """Buffered reads from a trio stream, each bounded."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def more(self) -> bool:
        """Read one more chunk; False at EOF."""
        if self.eof:
            return False
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError as e:
            cause = e.__cause__
            if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError):
                raise CheckFailed(f"read: {_phrase(cause)}") from None
            raise CheckFailed(f"read: {cause or 'connection broken'}") from None
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    async def until(self, sep: bytes, limit: int) -> bytes | None:
        """Bytes up to and including sep; None at EOF first; CheckFailed beyond limit."""
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise CheckFailed(f"more than {limit} bytes without {sep!r}")
            start = max(0, len(self.buf) - len(sep) + 1)
            if not await self.more():
                return None

    async def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not await self.more():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def rest(self, limit: int) -> bytes:
        while await self.more():
            if len(self.buf) > limit:
                raise CheckFailed(f"http: body larger than {limit // 1024} KiB")
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _host_header(target: CheckTarget, default_port: int) -> str:
    if target.spec.host_header:
        return target.spec.host_header
    ip = ipaddress.ip_address(target.address)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return host if target.port == default_port else f"{host}:{target.port}"


def http_request(target: CheckTarget, default_port: int) -> bytes:
    path = target.spec.path or "/"
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise CheckFailed(f"http: bad path {path!r}")
    host = _host_header(target, default_port)
    if any(c.isspace() for c in host):
        raise CheckFailed(f"http: bad host header {host!r}")
    # HTTP/1.0: the answer is never chunked and ends with the connection.
    return (f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii", errors="strict")


def _status_code(line: bytes) -> int:
    parts = line.decode("latin-1").strip().split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise CheckFailed(f"http: bad status line {line[:80].decode('latin-1').strip()!r}")
    return int(parts[1])


def _expected(codes: tuple[int, int]) -> str:
    lo, hi = codes
    return str(lo) if lo == hi else f"{lo}-{hi}"


async def _read_body(reader: _Reader) -> bytes:
    headers: dict[str, str] = {}
    size = 0
    while True:
        line = await reader.until(b"\n", MAX_HEADER)
        if line is None:
            raise CheckFailed("http: connection closed in the headers")
        size += len(line)
        if size > MAX_HEADER:
            raise CheckFailed(f"http: headers larger than {MAX_HEADER // 1024} KiB")
        if not line.strip():
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise CheckFailed(f"http: bad content-length {headers['content-length']!r}") from None
        if length > MAX_BODY:
            raise CheckFailed(f"http: body larger than {MAX_BODY // 1024} KiB")
        body = await reader.exactly(length)
        if body is None:
            raise CheckFailed(f"http: connection closed before the end of a {length}-byte body")
        return body
    return await reader.rest(MAX_BODY)


async def _read_chunked(reader: _Reader) -> bytes:
    body = bytearray()
    while True:
        line = await reader.until(b"\n", 1024)
        if line is None:
            raise CheckFailed("http: connection closed in a chunked body")
        try:
            n = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise CheckFailed(f"http: bad chunk size {line[:40]!r}") from None
        if n == 0:
            return bytes(body)
        if len(body) + n > MAX_BODY:
            raise CheckFailed(f"http: body larger than {MAX_BODY // 1024} KiB")
        chunk = await reader.exactly(n + 2)
        if chunk is None:
            raise CheckFailed("http: connection closed in a chunked body")
        body += chunk[:n]


def _digest_verdict(spec: CheckSpec, body: bytes) -> None:
    algo, _, want = (spec.digest or "").partition(":")
    algo = algo.lower()
    if algo not in ("sha256", "md5") or not want:
        raise CheckFailed(f"http: digest {spec.digest!r} is not sha256:<hex> or md5:<hex>")
    got = hashlib.new(algo, body).hexdigest()
    if got != want.lower():
        raise CheckFailed(f"body {algo} mismatch (got {got[:16]}...)")


async def _check_http(target: CheckTarget, progress: _Progress, tls: bool = False) -> str | None:
    spec = target.spec
    request = http_request(target, 443 if tls else 80)
    warning = None
    if tls:
        stream, warning = await _tls_handshake(target, progress)
    else:
        stream = await _connect(target, progress)
    try:
        progress.phase = "sending the request"
        try:
            await stream.send_all(request)
        except trio.BrokenResourceError as e:
            raise CheckFailed(f"http: send: {e.__cause__ or 'connection broken'}") from None
        progress.phase = "waiting for the response"
        reader = _Reader(stream)
        line = await reader.until(b"\n", MAX_HEADER)
        if line is None:
            raise CheckFailed("http: connection closed before the status line")
        code = _status_code(line)
        if spec.digest:
            progress.phase = "reading the body"
            _digest_verdict(spec, await _read_body(reader))
        elif not spec.codes[0] <= code <= spec.codes[1]:
            raise CheckFailed(f"http code {code}, expected {_expected(spec.codes)}")
    finally:
        await trio.aclose_forcefully(stream)
    return warning


async def _check_https(target: CheckTarget, progress: _Progress) -> str | None:
    return await _check_http(target, progress, tls=True)


# --- send / expect ---------------------------------------------------------------------------

async def _send(stream, data: bytes | None) -> None:
    if data:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError as e:
            cause = e.__cause__
            reason = _phrase(cause) if isinstance(cause, OSError) else "connection broken"
            raise CheckFailed(f"send: {reason}") from None


async def _check_send(target: CheckTarget, progress: _Progress) -> None:
    spec = target.spec
    stream = await _connect(target, progress)
    try:
        progress.phase = "sending"
        await _send(stream, spec.send)
        if spec.expect is None:
            return
        progress.phase = "waiting for the answer"
        reader = _Reader(stream)
        while True:
            newline = reader.buf.find(b"\n")
            text = bytes(reader.buf if newline < 0 else reader.buf[:newline])
            line = text.decode(errors="replace").rstrip("\r")
            # A match on a partial first line is final: some services send a
            # prompt without a newline and wait.
            if fnmatch.fnmatchcase(line, spec.expect):
                return
            if newline >= 0 or len(reader.buf) >= MAX_EXPECT_LINE or not await reader.more():
                raise CheckFailed(f"expect {spec.expect!r} not matched: got {line[:100]!r}")
    finally:
        await trio.aclose_forcefully(stream)


async def _check_binary(target: CheckTarget, progress: _Progress) -> None:
    spec = target.spec
    want = spec.expect_bytes or b""
    stream = await _connect(target, progress)
    try:
        progress.phase = "sending"
        await _send(stream, spec.send)
        if not want:
            return
        progress.phase = "waiting for the answer"
        reader = _Reader(stream)
        while True:
            got = bytes(reader.buf[:len(want)])
            if got != want[:len(got)] or (len(got) < len(want) and not await reader.more()):
                raise CheckFailed(f"expect {want.hex()} not matched: got {got[:64].hex() or 'nothing'}")
            if len(got) == len(want):
                return
    finally:
        await trio.aclose_forcefully(stream)


# --- icmp, script ----------------------------------------------------------------------------

async def _check_icmp(target: CheckTarget, progress: _Progress) -> None:
    progress.phase = "waiting for the echo reply"
    try:
        await icmp.echo(target.address)
    except icmp.IcmpError as e:
        raise CheckFailed(str(e)) from None


async def _run_script(target: CheckTarget, scripts: ScriptPool | None, start: float) -> CheckOutcome:
    spec = target.spec
    if not spec.script:
        return CheckOutcome(False, None, "script: no script configured")
    argv = [spec.script, target.address, str(target.port)]
    try:
        if scripts is not None:
            result = await scripts.run(argv, spec.timeout_s)
        else:
            result = await run_script(argv, spec.timeout_s)
    except OSError as e:
        return CheckOutcome(False, None, f"script: cannot run {spec.script}: {_phrase(e)}")
    error = describe_exit(result, spec.timeout_s)
    if error:
        return CheckOutcome(False, None if result.timed_out else result.seconds, error)
    return CheckOutcome(True, result.seconds)


_METHODS: dict[str, Callable] = {
    "tcp": _check_tcp,
    "tls": _check_tls,
    "http": _check_http,
    "https": _check_https,
    "send": _check_send,
    "binary": _check_binary,
    "icmp": _check_icmp,
}


# --- the runner ------------------------------------------------------------------------------

Report = Callable[[Hashable, CheckOutcome], None]


class CheckRunner:
    """Runs checks as tasks of a nursery and reports each verdict.

    Args:
      nursery: where the check tasks run (the health shell's nursery).
      report: a trio MemorySendChannel (sent (check_id, outcome)) or a
        plain function report(check_id, outcome), called in the trio thread.
      scripts: the pool for script checks (a pool of 8 by default).
      max_in_flight: hard safety cap. The core keeps its own, lower, limit;
        this one only stops a runaway caller from opening thousands of
        sockets at once.

    start() refuses (returns False, reports nothing) when the same check_id
    is still running or the cap is reached: the caller treats the check as
    not run and schedules it again, rather than counting a local overload
    against the host.
    """

    def __init__(self, nursery: trio.Nursery, report, *, scripts: ScriptPool | None = None,
                 max_in_flight: int = 1024):
        self.nursery = nursery
        self.report = report
        self.scripts = scripts if scripts is not None else ScriptPool()
        self.max_in_flight = max_in_flight
        self.running: dict[Hashable, trio.CancelScope] = {}
        self.started = 0
        self.refused = 0

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def start(self, check_id: Hashable, target: CheckTarget) -> bool:
        if check_id in self.running or len(self.running) >= self.max_in_flight:
            self.refused += 1
            return False
        scope = trio.CancelScope()
        self.running[check_id] = scope
        self.started += 1
        self.nursery.start_soon(self._run, check_id, target, scope)
        return True

    def cancel(self, check_id: Hashable) -> bool:
        """Stop a running check (its host was removed); nothing is reported for it."""
        scope = self.running.get(check_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    async def _run(self, check_id: Hashable, target: CheckTarget, scope: trio.CancelScope) -> None:
        outcome = None
        try:
            with scope:
                outcome = await run_check(target, scripts=self.scripts)
        finally:
            if self.running.get(check_id) is scope:
                del self.running[check_id]
        if outcome is None:         # cancelled
            return
        if isinstance(self.report, trio.MemorySendChannel):
            await self.report.send((check_id, outcome))
        else:
            self.report(check_id, outcome)
