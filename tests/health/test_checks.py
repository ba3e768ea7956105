"""Check runners against real servers on 127.0.0.1, in-process with trio; no root needed
(except the ICMP echo test, skipped when no ICMP socket may be opened).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import struct
import textwrap
import time
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshd.health import icmp
from meshd.health.checks import CheckRunner, certificate_matches, expiry_warning, run_check
from meshd.health.checkspec import CheckOutcome, CheckSpec, CheckTarget
from meshd.health.scriptpool import ScriptPool

LOCAL = "127.0.0.1"


def check(method, port, address=LOCAL, scripts=None, **kw) -> CheckOutcome:
    return trio.run(partial(run_check, CheckTarget(address, port, CheckSpec(method, **kw)), scripts=scripts))


# --- servers ---------------------------------------------------------------------------------

@asynccontextmanager
async def serving(handler, ssl_context=None):
    """A trio TCP (or TLS) server on 127.0.0.1; yields its port."""
    async with trio.open_nursery() as nursery:
        if ssl_context is None:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=LOCAL))
        else:
            listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, handler, 0, ssl_context,
                                                    host=LOCAL, https_compatible=True))
        sock = listeners[0].transport_listener.socket if ssl_context else listeners[0].socket
        yield sock.getsockname()[1]
        nursery.cancel_scope.cancel()


def run_against(handler, spec: CheckSpec, ssl_context=None) -> CheckOutcome:
    async def main():
        async with serving(handler, ssl_context) as port:
            return await run_check(CheckTarget(LOCAL, port, spec))
    return trio.run(main)


async def read_request(stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


def http_server(response: bytes, seen: list | None = None):
    async def handler(stream):
        request = await read_request(stream)
        if seen is not None:
            seen.append(request)
        try:
            await stream.send_all(response)
            await stream.aclose()
        except trio.BrokenResourceError:
            pass
    return handler


async def silent(stream):
    """Accepts and never answers (the peer's timeout has to fire)."""
    await trio.sleep_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]      # closed again: connecting is refused


# --- tcp --------------------------------------------------------------------------------------

def test_tcp_up_and_refused():
    async def handler(stream):
        await stream.aclose()
    up = run_against(handler, CheckSpec("tcp"))
    assert up.ok and up.error is None and 0 <= up.latency_s < 1
    down = check("tcp", free_port())
    assert down == CheckOutcome(False, down.latency_s, "connect: connection refused")


def test_bad_address_and_unknown_method_are_outcomes():
    assert check("tcp", 80, address="not-an-ip").error.startswith("connect: bad address 'not-an-ip'")
    assert check("gopher", 80).error.startswith("unknown check method 'gopher'")


# --- http ------------------------------------------------------------------------------------

def test_http_code_and_request_shape():
    seen = []
    ok = run_against(http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", seen),
                     CheckSpec("http", path="/health?full=1"))
    assert ok.ok
    head = seen[0].decode()
    assert head.startswith("GET /health?full=1 HTTP/1.0\r\n")
    assert "\r\nHost: 127.0.0.1:" in head and "\r\nConnection: close\r\n" in head
    seen.clear()
    run_against(http_server(b"HTTP/1.0 200 OK\r\n\r\n", seen), CheckSpec("http", host_header="www.example"))
    assert "\r\nHost: www.example\r\n" in seen[0].decode()


def test_http_wrong_code_and_ranges():
    bad = run_against(http_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), CheckSpec("http"))
    assert (bad.ok, bad.error) == (False, "http code 503, expected 200")
    assert bad.latency_s is not None
    assert run_against(http_server(b"HTTP/1.1 204 No Content\r\n\r\n"), CheckSpec("http", codes=(200, 299))).ok
    redirect = run_against(http_server(b"HTTP/1.1 302 Found\r\n\r\n"), CheckSpec("http", codes=(200, 299)))
    assert redirect.error == "http code 302, expected 200-299"


def test_http_timeout_when_the_server_never_answers():
    out = run_against(silent, CheckSpec("http", timeout_s=0.2))
    assert out == CheckOutcome(False, None, "timeout after 200 ms (waiting for the response)")


def test_http_garbage_and_early_close():
    assert run_against(http_server(b"SSH-2.0-OpenSSH\r\n"), CheckSpec("http")).error == \
        "http: bad status line 'SSH-2.0-OpenSSH'"
    assert run_against(http_server(b""), CheckSpec("http")).error == "http: connection closed before the status line"
    assert check("http", free_port()).error == "connect: connection refused"


BODY = b"<html>all good</html>\n"
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
    b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n" + BODY,                                       # until close
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n<html>\r\n10\r\nall good</html>\n\r\n0\r\n\r\n",
], ids=["content-length", "until-close", "chunked"])
def test_http_digest_match(response):
    assert run_against(http_server(response), CheckSpec("http", digest=f"sha256:{SHA}")).ok
    md5 = hashlib.md5(BODY).hexdigest()
    assert run_against(http_server(response), CheckSpec("http", digest=f"md5:{md5.upper()}")).ok


def test_http_digest_mismatch_and_limits():
    changed = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nother"
    out = run_against(http_server(changed), CheckSpec("http", digest=f"sha256:{SHA}"))
    assert out.error == f"body sha256 mismatch (got {hashlib.sha256(b'other').hexdigest()[:16]}...)"
    # the digest replaces the code check: a 503 with the right body is up (relayd's semantics)
    assert run_against(http_server(b"HTTP/1.1 503 x\r\n\r\n" + BODY), CheckSpec("http", digest=f"sha256:{SHA}")).ok
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: 9999999\r\n\r\n"
    assert run_against(http_server(huge), CheckSpec("http", digest=f"sha256:{SHA}")).error == \
        "http: body larger than 1024 KiB"
    endless = b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (1 << 20) + b"y" * 100
    assert run_against(http_server(endless), CheckSpec("http", digest=f"sha256:{SHA}")).error == \
        "http: body larger than 1024 KiB"
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
    assert run_against(http_server(short), CheckSpec("http", digest=f"sha256:{SHA}")).error == \
        "http: connection closed before the end of a 100-byte body"
    assert run_against(http_server(changed), CheckSpec("http", digest="crc32:00")).error == \
        "http: digest 'crc32:00' is not sha256:<hex> or md5:<hex>"


# --- tls / https ------------------------------------------------------------------------------

class Pki:
    """A CA and server certificates for web.example / 127.0.0.1, written as PEM files."""

    def __init__(self, directory):
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshd test CA")])
        self.ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(self.ca_key.public_key()).serial_number(1)
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(self.ca_key, hashes.SHA256()))
        self.dir = directory
        self.ca_file = str(directory / "ca.pem")
        (directory / "ca.pem").write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def server_context(self, days_valid: float = 365, seen_sni: list | None = None,
                       expired: bool = False) -> ssl.SSLContext:
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        start = now - datetime.timedelta(days=30 if expired else 1)
        end = now - datetime.timedelta(days=2) if expired else now + datetime.timedelta(days=days_valid)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.example")]))
                .issuer_name(self.ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("web.example"), x509.DNSName("*.pool.example"),
                    x509.IPAddress(ipaddress.ip_address(LOCAL))]), critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        name = f"srv{time.monotonic_ns()}"
        (self.dir / f"{name}.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.dir / f"{name}.pem"))
        if seen_sni is not None:
            ctx.sni_callback = lambda sslobj, server_name, _ctx: seen_sni.append(server_name)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


async def tls_hello(stream):
    try:
        await stream.do_handshake()
        await stream.send_all(b"hello\n")
        await stream.aclose()
    except trio.BrokenResourceError:
        pass        # the client gave up on the certificate


def test_tls_sni_is_sent_and_unverified_passes(pki):
    seen = []
    out = run_against(tls_hello, CheckSpec("tls", sni="web.example"), pki.server_context(seen_sni=seen))
    assert out.ok and out.warning is None
    assert seen == ["web.example"]
    seen.clear()
    assert run_against(tls_hello, CheckSpec("tls"), pki.server_context(seen_sni=seen)).ok
    assert seen == [None]                       # no SNI when none is configured


def test_tls_verification(pki):
    ctx = pki.server_context()
    missing = str(pki.dir / "nonexistent.pem")
    no_ca = run_against(tls_hello, CheckSpec("tls", sni="web.example", verify=True, ca_file=missing), ctx)
    assert no_ca.error.startswith("tls: ca_file ") and "no such file or directory" in no_ca.error
    system_store = run_against(tls_hello, CheckSpec("tls", sni="web.example", verify=True), ctx)
    assert system_store.error == "tls: certificate verify failed: unable to get local issuer certificate"
    good = run_against(tls_hello, CheckSpec("tls", sni="web.example", verify=True, ca_file=pki.ca_file), ctx)
    assert good.ok, good
    wrong_sni = run_against(tls_hello, CheckSpec("tls", sni="other.example", verify=True, ca_file=pki.ca_file), ctx)
    assert wrong_sni.error.startswith("tls: certificate verify failed: Hostname mismatch")
    # a name to verify that differs from the SNI sent: checked by meshd, not OpenSSL
    other = CheckSpec("tls", sni="web.example", verify=True, verify_name="db.example", ca_file=pki.ca_file)
    assert run_against(tls_hello, other, ctx).error == \
        "tls: certificate verify failed: certificate is not valid for 'db.example'"
    for name in ("a.pool.example", LOCAL):
        spec = CheckSpec("tls", sni="web.example", verify=True, verify_name=name, ca_file=pki.ca_file)
        assert run_against(tls_hello, spec, ctx).ok, name
    expired = run_against(tls_hello, CheckSpec("tls", verify=True, verify_name=LOCAL, ca_file=pki.ca_file),
                          pki.server_context(expired=True))
    assert expired.error == "tls: certificate verify failed: certificate has expired"


def test_tls_expiry_warning(pki):
    soon = pki.server_context(days_valid=5.5)
    out = run_against(tls_hello, CheckSpec("tls", expiry_warn_days=30), soon)
    assert out.ok and out.warning.startswith("certificate expires in 5 days (")
    assert run_against(tls_hello, CheckSpec("tls", expiry_warn_days=3), soon).warning is None
    gone = run_against(tls_hello, CheckSpec("tls", expiry_warn_days=30), pki.server_context(expired=True))
    assert gone.ok and gone.warning.startswith("certificate expired 2 days ago (")


def test_tls_against_a_plain_text_server():
    async def banner(stream):
        await stream.send_all(b"220 smtp.example ESMTP\r\n" * 20)
        await trio.sleep(1)
    out = run_against(banner, CheckSpec("tls", timeout_s=2))
    assert not out.ok and out.error.startswith("tls: "), out


def test_https_code_digest_and_sni_from_host_header(pki):
    seen_sni, seen = [], []

    async def handler(stream):
        await stream.do_handshake()
        seen.append(await read_request(stream))
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
        await stream.aclose()

    spec = CheckSpec("https", host_header="web.example", verify=True, ca_file=pki.ca_file, digest=f"sha256:{SHA}")
    out = run_against(handler, spec, pki.server_context(seen_sni=seen_sni))
    assert out.ok, out
    assert seen_sni == ["web.example"] and b"\r\nHost: web.example\r\n" in seen[0]
    seen_sni.clear()

    async def unavailable(stream):
        await stream.do_handshake()
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 503 x\r\n\r\n")
        await stream.aclose()

    out = run_against(unavailable, CheckSpec("https"), pki.server_context(seen_sni=seen_sni))
    assert out.error == "http code 503, expected 200" and seen_sni == [None]


def test_certificate_name_rules(pki):
    ctx = pki.server_context()     # noqa: F841  (writes a cert file we read back)
    pem = sorted(pki.dir.glob("srv*.pem"))[-1].read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    assert certificate_matches(cert, "web.example") and certificate_matches(cert, "WEB.example.")
    assert certificate_matches(cert, "x.pool.example")
    assert not certificate_matches(cert, "pool.example") and not certificate_matches(cert, "a.b.pool.example")
    assert certificate_matches(cert, "127.0.0.1") and not certificate_matches(cert, "127.0.0.2")
    now = cert.not_valid_after_utc - datetime.timedelta(days=10, hours=1)
    assert expiry_warning(cert, 10, now) is None
    assert expiry_warning(cert, 11, now).startswith("certificate expires in 10 days")
    assert expiry_warning(cert, None, now) is None


# --- send / expect, binary ---------------------------------------------------------------------

def banner_server(answer: bytes, seen: list | None = None, read_first: bool = True):
    async def handler(stream):
        if read_first:
            data = await stream.receive_some(1024)
            if seen is not None:
                seen.append(data)
        await stream.send_all(answer)
        await trio.sleep(0.5)        # keep the connection open: the answer alone must decide
    return handler


def test_send_expect_glob_on_the_first_line():
    seen = []
    out = run_against(banner_server(b"OK ready\r\nmore\r\n", seen), CheckSpec("send", send=b"PING\r\n", expect="OK*"))
    assert out.ok and seen == [b"PING\r\n"]
    bad = run_against(banner_server(b"ERR\r\n"), CheckSpec("send", send=b"PING\r\n", expect="OK*"))
    assert bad.error == "expect 'OK*' not matched: got 'ERR'"
    # only the first line counts
    assert not run_against(banner_server(b"hello\r\nOK\r\n"), CheckSpec("send", send=b"x", expect="OK*")).ok
    # a prompt without a newline, connection kept open: decided without waiting
    prompt = run_against(banner_server(b"+OK", read_first=False), CheckSpec("send", expect="+OK*", timeout_s=0.3))
    assert prompt.ok
    closed = run_against(banner_server(b""), CheckSpec("send", send=b"x", expect="OK*"))
    assert closed.error == "expect 'OK*' not matched: got ''"
    assert run_against(banner_server(b"", read_first=False), CheckSpec("send", send=b"just send")).ok


def test_binary_send_expect():
    seen = []
    hello = bytes.fromhex("16030100")
    assert run_against(banner_server(bytes.fromhex("cafebabe00ff"), seen),
                       CheckSpec("binary", send=hello, expect_bytes=bytes.fromhex("cafe"))).ok
    assert seen == [hello]
    bad = run_against(banner_server(bytes.fromhex("cafeb0")), CheckSpec("binary", send=hello,
                                                                         expect_bytes=bytes.fromhex("cafebabe")))
    assert bad.error == "expect cafebabe not matched: got cafeb0"
    spec = CheckSpec("binary", send=hello, expect_bytes=bytes.fromhex("cafe"), timeout_s=0.3)
    short = run_against(banner_server(bytes.fromhex("ca")), spec)
    assert short.error == "timeout after 300 ms (waiting for the answer)"
    nothing = run_against(banner_server(b""), CheckSpec("binary", send=hello, expect_bytes=b"\x01"))
    assert nothing.error == "expect 01 not matched: got nothing"


# --- scripts ---------------------------------------------------------------------------------

def script(tmp_path, name, body) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


# Scripts run as script_user ("nobody" as root) from script_dir (tests/conftest.py).

def test_script_exit_codes_and_arguments(script_dir, script_user):
    pool = ScriptPool(run_as=script_user)
    ok = script(script_dir, "ok", f'echo "$1 $2" > {script_dir}/args\nexit 0\n')
    out = check("script", 8080, address="10.1.0.11", script=ok, scripts=pool)
    assert out.ok and out.latency_s is not None
    assert (script_dir / "args").read_text() == "10.1.0.11 8080\n"
    fail = script(script_dir, "fail", 'echo "" >&2\necho "backend says no" >&2\necho second >&2\nexit 2\n')
    assert check("script", 80, script=fail, scripts=pool).error == "script exit 2: backend says no"
    quiet = script(script_dir, "quiet", "exit 3\n")
    assert check("script", 80, script=quiet, scripts=pool).error == "script exit 3"
    selfkill = script(script_dir, "selfkill", "kill -TERM $$\n")
    assert check("script", 80, script=selfkill, scripts=pool).error == "script killed by SIGTERM"
    missing = check("script", 80, script=str(script_dir / "nope"), scripts=pool)
    assert missing.error == f"script: cannot run {script_dir / 'nope'}: no such file or directory"
    assert check("script", 80).error == "script: no script configured"


def test_script_timeout_kills_the_whole_process_group(script_dir, script_user):
    hang = script(script_dir, "hang", f"sleep 30 &\necho $! > {script_dir}/child\nsleep 30\n")
    t0 = time.monotonic()
    out = check("script", 80, script=hang, timeout_s=0.3, scripts=ScriptPool(run_as=script_user))
    assert out == CheckOutcome(False, None, "timeout after 300 ms (script killed)")
    assert time.monotonic() - t0 < 2
    child = int((script_dir / "child").read_text())
    for _ in range(100):
        if not alive(child):
            break
        time.sleep(0.02)
    else:
        os.kill(child, 9)
        pytest.fail(f"the script's child {child} survived the timeout")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_script_pool_bounds_parallelism_without_eating_timeouts(script_dir, script_user):
    slow = script(script_dir, "slow", f"echo start >> {script_dir}/log\nsleep 0.3\n")
    pool = ScriptPool(max_parallel=2, run_as=script_user)
    peak = []

    async def main():
        results = []

        async def one(i):
            results.append(await run_check(CheckTarget(f"10.0.0.{i}", 80, CheckSpec("script", script=slow,
                                                                                   timeout_s=0.5)), scripts=pool))

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, i)
            for _ in range(40):
                await trio.sleep(0.02)
                peak.append(pool.running)
        return results

    t0 = time.monotonic()
    results = trio.run(main)
    elapsed = time.monotonic() - t0
    assert all(r.ok for r in results), results          # 6 x 0.3 s in pairs: each within its 0.5 s
    assert max(peak) == 2 and pool.started == 6
    assert elapsed >= 0.85                                # three rounds of two


# --- icmp --------------------------------------------------------------------------------------

@pytest.mark.skipif(icmp.icmp_available() is not None, reason=str(icmp.icmp_available()))
def test_icmp_echo_to_loopback():
    out = check("icmp", 0)
    assert out.ok and out.latency_s < 1, out


@pytest.mark.skipif(icmp.icmp_available(socket.AF_INET6) is not None, reason="no ICMPv6 socket allowed")
def test_icmpv6_echo_to_loopback():
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6") \
            or "00000000000000000000000000000001" not in open("/proc/net/if_inet6").read():
        pytest.skip("no ::1 here")
    out = check("icmp", 0, address="::1")
    assert out.ok, out


def _reply(v6, ident, seq, token, itype=None):
    t = itype if itype is not None else (129 if v6 else 0)
    return struct.pack("!BBHHH", t, 0, 0, ident, seq) + token + icmp.PAYLOAD_PAD


def test_icmp_reply_matching():
    token = b"12345678"
    assert icmp.match_reply(_reply(False, 7, 9, token), False, False, None, 9, token) == "ok"
    assert icmp.match_reply(_reply(False, 7, 9, token), False, False, 7, 8, token) is None      # other seq
    assert icmp.match_reply(_reply(False, 6, 9, token), False, False, 7, 9, token) is None      # other id
    assert icmp.match_reply(_reply(False, 7, 9, b"x" * 8), False, False, 7, 9, token) is None   # other token
    assert icmp.match_reply(_reply(True, 7, 9, token), True, True, 7, 9, token) == "ok"
    assert icmp.match_reply(_reply(False, 7, 9, token, itype=8), False, False, None, 9, token) is None
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 0, 0, 64, 1, 0, b"\x7f\0\0\1", b"\x7f\0\0\1")
    assert icmp.match_reply(ip_header + _reply(False, 7, 9, token), False, True, 7, 9, token) == "ok"
    # an unreachable quoting our request
    request = icmp.echo_request(False, 7, 9, token)
    assert icmp.checksum(request) == 0
    quoted = ip_header + request[:8]
    unreach = struct.pack("!BBHI", 3, 1, 0, 0) + quoted
    assert icmp.match_reply(ip_header + unreach, False, True, 7, 9, token) == \
        "icmp: destination unreachable (code 1)"
    assert icmp.match_reply(ip_header + unreach, False, True, 7, 10, token) is None
    v6_quoted = struct.pack("!IHBB16s16s", 6 << 28, 16, 58, 64, b"\0" * 16, b"\0" * 16) + \
        icmp.echo_request(True, 7, 9, token)[:8]
    assert icmp.match_reply(struct.pack("!BBHI", 1, 3, 0, 0) + v6_quoted, True, True, 7, 9, token) == \
        "icmp: destination unreachable (code 3)"
    for garbage in (b"", b"\x00", b"\x45" + b"\0" * 30, b"\x03\x01" + b"\0" * 20):
        assert icmp.match_reply(garbage, False, True, 7, 9, token) is None


# --- the runner --------------------------------------------------------------------------------

def test_runner_reports_through_a_callback_and_a_channel():
    async def handler(stream):
        await stream.aclose()

    async def main():
        async with serving(handler) as port:
            got = []
            send, receive = trio.open_memory_channel(10)
            async with trio.open_nursery() as nursery:
                by_callback = CheckRunner(nursery, lambda cid, out: got.append((cid, out)))
                by_channel = CheckRunner(nursery, send)
                assert by_callback.start("up", CheckTarget(LOCAL, port, CheckSpec("tcp")))
                assert by_callback.start("down", CheckTarget(LOCAL, free_port(), CheckSpec("tcp")))
                assert by_channel.start(1, CheckTarget(LOCAL, port, CheckSpec("tcp")))
                cid, outcome = await receive.receive()
            assert (cid, outcome.ok) == (1, True)
            assert {cid: o.ok for cid, o in got} == {"up": True, "down": False}
            assert by_callback.in_flight == 0 and by_callback.started == 2
    trio.run(main)


def test_runner_refuses_duplicates_and_beyond_its_cap_and_cancels():
    async def main():
        async with serving(silent) as port:
            got = []
            async with trio.open_nursery() as nursery:
                runner = CheckRunner(nursery, lambda cid, out: got.append(cid), max_in_flight=2)
                slow = CheckTarget(LOCAL, port, CheckSpec("http", timeout_s=0.3))
                assert runner.start("a", slow)
                assert not runner.start("a", slow)             # still running
                assert runner.start("b", slow)
                assert not runner.start("c", slow)             # the cap
                assert runner.in_flight == 2 and runner.refused == 2
                await trio.sleep(0.05)
                assert runner.cancel("b") and not runner.cancel("zzz")
            assert got == ["a"]                                 # b was cancelled: no report
            assert runner.in_flight == 0
    trio.run(main)
