"""The HTTP relays the benchmark compares, their backends and the tools they need.

The topology is the same for both systems: the load generator in the client namespace,
the relay on fw1 listening on the virtual address 192.0.2.1 (plain on 8080, TLS on
8443, one certificate for both systems), the backends in the server namespace.

  * `NginxBackends`: one nginx with two worker processes in the server namespace, on
    two addresses (198.51.100.11 and .12, the relays' table), HTTP/1.1 keep-alive, a
    fixed 100-byte answer; far faster than either relay (the bench measures it direct).
  * `MeshdRelay`: meshd on fw1 alone (it becomes master of the lab's groups, so it holds
    the virtual addresses) with two `protocol = "http"` relays, roundrobin over the
    table, no actions; one relay engine process.
  * `HaproxyRelay`: HAProxy with `nbthread 1`, the same two listeners, `balance
    roundrobin` over the same two servers, checked as meshd checks them; fw1 gets the
    virtual addresses by hand (what keepalived would do).

`ensure_tools` installs haproxy, nginx-light and wrk from Debian when they are missing,
as meshlab.reference does keepalived and conntrackd: they are the benchmark's, never
meshd's or its tests' dependencies.

Must not: generate load or judge figures (meshlab.wrk, meshlab.bench), or stop anything
it did not start (every process is started under the caller's Procs and stopped by pid).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import time

from . import meshd_node as md
from .procs import Procs
from .reference import binary, install_packages
from .topology import Lab, LabError

VIP = "192.0.2.1"
PLAIN_PORT, TLS_PORT = 8080, 8443
BACKENDS = {"web1": "198.51.100.11", "web2": "198.51.100.12"}
BACKEND_PORT = 80
CHECK_INTERVAL_MS = 500
SERVER_NAME = "www.lab.test"
# 100 bytes, as tests/relay/bench_http_relay.py answers, naming the backend address that
# answered ($server_addr, 13 characters for both) so the bench can see the round robin.
BODY = "$server_addr " + "x" * 85 + "\n"
TOOLS = {"haproxy": "haproxy", "nginx": "nginx-light", "wrk": "wrk"}     # binary -> Debian package
HAPROXY_NAME, NGINX_NAME = "relay-haproxy-fw1", "relay-nginx"


def ensure_tools() -> None:
    """apt-get install what of TOOLS is missing (no service started on the host)."""
    install_packages({b: p for b, p in TOOLS.items() if binary(b) is None})


def write_certificate(directory: str) -> dict[str, str]:
    """A self-signed ECDSA P-256 certificate for SERVER_NAME: {"cert", "key", "pem"} paths
    (pem: certificate then key in one file, as HAProxy's `crt` reads it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = {"cert": os.path.join(directory, "relay-cert.pem"), "key": os.path.join(directory, "relay-key.pem"),
             "pem": os.path.join(directory, "relay-haproxy.pem")}
    for which, data in (("cert", cert_pem), ("key", key_pem), ("pem", cert_pem + key_pem)):
        with open(paths[which], "wb") as f:
            f.write(data)
        os.chmod(paths[which], 0o600)
    return paths


def backends_answering(lab: Lab, port: int = PLAIN_PORT, requests: int = 4, timeout: float = 2.0) -> list[str]:
    """The backend address in the answer to each of `requests` new connections through the
    relay on VIP:port (plain HTTP/1.1, Connection: close), in order."""
    from .nsutil import ns_socket
    seen = []
    for _ in range(requests):
        s = ns_socket(lab.client, socket.AF_INET)
        try:
            s.settimeout(timeout)
            s.connect((VIP, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: www.lab.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise LabError(f"the relay on {VIP}:{port} answered {head[:60]!r}, not 200")
        seen.append(body.split(b" ", 1)[0].decode(errors="replace"))
    return seen


def _wait_tcp(ns: str, address: str, port: int, timeout: float, what: str, proc=None) -> None:
    """Until a TCP connect from namespace ns to address:port succeeds."""
    from .nsutil import ns_socket
    deadline = time.monotonic() + timeout
    while True:
        s = ns_socket(ns, socket.AF_INET)
        try:
            s.settimeout(0.5)
            s.connect((address, port))
            return
        except OSError as e:
            if proc is not None and not proc.alive():
                raise LabError(f"{what} exited before it listened on {address}:{port}\n{proc.log_tail()}") from None
            if time.monotonic() >= deadline:
                raise LabError(f"{what} does not accept on {address}:{port} after {timeout:g} s ({e})"
                               + (f"\n{proc.log_tail()}" if proc is not None else "")) from None
        finally:
            s.close()
        time.sleep(0.05)


# ====================================================================== the backends


NGINX_CONF = """\
# written by meshlab.relaysystems for the relay benchmark
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type text/plain;
    server {{
{listens}
        location = /health {{ return 200 "ok\\n"; }}
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


class NginxBackends:
    """nginx with `workers` worker processes on the BACKENDS addresses in the server namespace."""

    def __init__(self, procs: Procs, lab: Lab, workers: int = 2):
        self.procs, self.lab, self.workers = procs, lab, workers
        self.added: list[str] = []

    def start(self) -> None:
        nginx = binary("nginx")
        if nginx is None:
            raise LabError("nginx is not installed (meshlab.relaysystems.ensure_tools())")
        for a in BACKENDS.values():
            self.lab.ip(self.lab.server, "addr", "add", f"{a}/24", "dev", "eth0")
            self.added.append(a)
        d = os.path.join(self.procs.run_dir, "nginx")
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "nginx.conf")
        listens = "\n".join(f"        listen {a}:{BACKEND_PORT} backlog=4096;" for a in BACKENDS.values())
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=self.workers, dir=d, listens=listens, body=BODY.replace("\n", "\\n")))
        proc = self.procs.start(NGINX_NAME, self.lab.server, [nginx, "-p", d, "-c", conf, "-e", f"{d}/nginx-error.log"])
        for a in BACKENDS.values():
            _wait_tcp(self.lab.server, a, BACKEND_PORT, 10, "nginx", proc)

    def stop(self) -> None:
        if NGINX_NAME in self.procs.procs:
            self.procs.kill(NGINX_NAME, signal.SIGTERM, wait=5.0)
        for a in self.added:
            self.lab.ip(self.lab.server, "addr", "del", f"{a}/24", "dev", "eth0", check=False)
        self.added = []


# ====================================================================== the relays


class MeshdRelay:
    """meshd on fw1 with an HTTP relay on VIP:PLAIN_PORT and a TLS-terminating one on VIP:TLS_PORT."""

    name = "meshd"

    def __init__(self, procs: Procs, lab: Lab, advbase_ms: int = 100):
        self.procs, self.lab, self.advbase_ms = procs, lab, advbase_ms
        self.started = False

    def config(self, cert: dict[str, str]) -> str:
        hosts = "\n".join(f'[[health.host]]\nname = "{n}"\naddress = "{a}"\n' for n, a in BACKENDS.items())
        relays = ""
        for name, port, tls in (("bench-plain", PLAIN_PORT, ""),
                                ("bench-tls", TLS_PORT,
                                 f'tls = {{ certificate = {json.dumps(cert["cert"])}, key = {json.dumps(cert["key"])} }}\n')):
            relays += (f'\n[[health.relay]]\nname = "{name}"\naddress = "{VIP}"\nport = {port}\n'
                       f'protocol = "http"\ntable = "web"\nmode = "roundrobin"\n{tls}')
        return (f"[health]\n\n{hosts}\n[[health.table]]\nname = \"web\"\nhosts = {json.dumps(list(BACKENDS))}\n"
                f"port = {BACKEND_PORT}\ninterval_ms = {CHECK_INTERVAL_MS}\n"
                f'check = {{ method = "http", path = "/health", code = 200, timeout_ms = 300 }}\n'
                + relays)

    def start(self, cert: dict[str, str], timeout: float = 20.0) -> None:
        ok, why = md.meshd_available()
        if not ok:
            raise LabError(f"cannot run meshd from this checkout: {why}")
        groups = md.default_groups(self.advbase_ms)
        md.start_meshd(self.procs, self.lab, 1, groups, self.advbase_ms, extra_toml=self.config(cert))
        self.started = True
        md.wait_states(self.procs.run_dir, {1: "MASTER"}, [g["name"] for g in groups], timeout=timeout,
                       procs=self.procs)
        deadline = time.monotonic() + timeout
        while True:                        # both relays listening, both backends up in their table
            answer = md.control(self.procs.run_dir, 1, {"cmd": "show", "what": "relays"})
            rows = answer.get("rows", []) if answer.get("ok") else []
            ready = [r for r in rows if r.get("listening") and
                     sum(1 for b in r.get("backends", []) if b.get("live")) == len(BACKENDS)]
            if len(ready) == 2:
                return
            if time.monotonic() >= deadline:
                raise LabError(f"meshd's relays are not ready after {timeout:g} s: {answer}\n{self.procs.logs(15)}")
            time.sleep(0.1)

    def relay_pids(self) -> list[int]:
        """The relay engine: the one process every relayed byte goes through."""
        engine = md.status(self.procs.run_dir, 1).get("relay_engine") or {}
        if not engine.get("up") or not engine.get("pid"):
            raise LabError(f"meshd fw1 reports no running relay engine: {engine}")
        return [int(engine["pid"])]

    def describe(self) -> str:
        return "meshd relay engine (one process)"

    def stop(self) -> None:
        name = md.MESHD_LOG.format(n=1)
        if self.started and name in self.procs.procs:
            self.procs.kill(name, signal.SIGTERM, wait=10.0)
        self.started = False


HAPROXY_CONF = """\
# written by meshlab.relaysystems for the relay benchmark
global
    nbthread 1
    maxconn 4000
    log stderr format short local0 warning
defaults
    mode http
    log global
    option http-keep-alive
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
frontend bench-plain
    bind {vip}:{plain}
    default_backend web
frontend bench-tls
    bind {vip}:{tls} ssl crt {pem}
    default_backend web
backend web
    balance roundrobin
    option httpchk GET /health
{servers}
"""


class HaproxyRelay:
    """HAProxy (one thread) on fw1, on the virtual address put there by hand."""

    name = "reference"

    def __init__(self, procs: Procs, lab: Lab, advbase_ms: int = 100):
        self.procs, self.lab = procs, lab
        self.started = False

    def config(self, cert: dict[str, str]) -> str:
        servers = "\n".join(f"    server {n} {a}:{BACKEND_PORT} check inter {CHECK_INTERVAL_MS}"
                            for n, a in BACKENDS.items())
        return HAPROXY_CONF.format(vip=VIP, plain=PLAIN_PORT, tls=TLS_PORT, pem=cert["pem"], servers=servers)

    def start(self, cert: dict[str, str], timeout: float = 15.0) -> None:
        haproxy = binary("haproxy")
        if haproxy is None:
            raise LabError("haproxy is not installed (meshlab.relaysystems.ensure_tools())")
        self.lab.add_virtual(1)
        path = os.path.join(self.procs.run_dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(self.config(cert))
        check = self.procs.start("relay-haproxy-check", self.lab.fw(1), [haproxy, "-c", "-f", path])
        if self.procs.wait("relay-haproxy-check", 10) != 0:
            raise LabError(f"haproxy -c refused {path}:\n{check.log_tail()}")
        proc = self.procs.start(HAPROXY_NAME, self.lab.fw(1), [haproxy, "-db", "-f", path])
        self.started = True
        for port in (PLAIN_PORT, TLS_PORT):
            _wait_tcp(self.lab.client, VIP, port, timeout, "haproxy", proc)
        time.sleep(2 * CHECK_INTERVAL_MS / 1000)        # the first checks passed, as meshd waits for

    def relay_pids(self) -> list[int]:
        proc = self.procs.procs.get(HAPROXY_NAME)
        if proc is None or not proc.alive():
            raise LabError("haproxy is not running")
        return [proc.pid]

    def describe(self) -> str:
        return "HAProxy, nbthread 1"

    def stop(self) -> None:
        if self.started and HAPROXY_NAME in self.procs.procs:
            self.procs.kill(HAPROXY_NAME, signal.SIGTERM, wait=5.0)
        self.started = False


def make_relay(system_name: str, procs: Procs, lab: Lab, advbase_ms: int = 100):
    """The relay of the bench system called system_name ("meshd" or "reference": HAProxy)."""
    if system_name == "meshd":
        return MeshdRelay(procs, lab, advbase_ms)
    if system_name == "reference":
        return HaproxyRelay(procs, lab, advbase_ms)
    raise LabError(f"no relay for the system {system_name!r}")
