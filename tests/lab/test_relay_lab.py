"""Relays end to end: meshd on two firewalls, relays on the virtual address
192.0.2.1 (TCP on 8080, TLS-terminating on 8443) to the lab's three HTTP
backends (netns-lab/meshlab/lb.py), a real client in the client namespace.

`RelayLab` is the fixture to extend: give it the `[[health.relay]]` TOML of
the relays under test (an HTTP or DNS relay is one more block), it starts
the backends and both firewalls, and always tears them down.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import time
from collections import Counter

import pytest
from meshlab import meshd_node as md
from meshlab.lb import SORRY, VIP, WEB, LbRun
from meshlab.nsutil import ns_socket

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("meshd_ready")]

TCP_PORT, TLS_PORT, STICKY_PORT = 8080, 8443, 8081
INTERVAL_MS, FALL = 300, 2
DETECT_BOUND_S = 2 * (INTERVAL_MS + FALL * INTERVAL_MS + FALL * 300) / 1000 + 1.0


class RelayLab:
    """The lab's backends plus meshd with `relays` (TOML) on fw1 and fw2."""

    def __init__(self, lab, relays: str, backends=tuple({**WEB, **SORRY})):
        self.lab = lab
        self.run = LbRun(lab.procs, lab.topo, interval_ms=INTERVAL_MS, fall=FALL, rise=1)
        self.run.health += relays
        self.backends = backends

    def __enter__(self) -> RelayLab:
        try:
            self.run.add_backend_addresses()
            for name in self.backends:
                self.run.start_backend(name)
            self.names = self.run.start_meshd()
            self.lab.wait_states({1: "MASTER", 2: "BACKUP"}, self.names, timeout=15)
        except BaseException:
            self.run.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.run.close()

    def show(self, n: int, what: str) -> list[dict]:
        answer = md.control(self.lab.run_dir, n, {"cmd": "show", "what": what})
        assert answer.get("ok"), answer
        return answer["rows"]

    def relay_row(self, n: int, name: str) -> dict:
        return next(r for r in self.show(n, "relays") if r["name"] == name)

    def get(self, port: int, timeout: float = 1.0) -> str:
        """One new connection client -> VIP:port through the relay: the backend that answered."""
        from meshlab.backends import http_get
        try:
            return http_get(lambda fam: ns_socket(self.lab.client, fam), VIP, port, "/", timeout)
        except OSError as e:
            return f"error: {e.strerror or e}"

    def wait_live(self, n: int, relay: str, want: set[str], timeout: float) -> float:
        t0 = time.monotonic()
        while True:
            live = {b["host"] for b in self.relay_row(n, relay)["backends"] if b["live"]}
            if live == want:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < timeout, f"fw{n} relay {relay} uses {live}, not {want}"
            time.sleep(0.05)


def relay_toml(name: str, port: int, extra: str = "") -> str:
    return f"""
[[health.relay]]
name = "{name}"
address = "{VIP}"
port = {port}
table = "web"
backup_table = "sorry"
connect_timeout_ms = 500
{extra}
"""


def certificate(directory: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.lab.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.lab.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = f"{directory}/www.pem", f"{directory}/www.key"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def tls_get(client_ns: str, cafile: str, timeout: float = 2.0) -> tuple[str, str]:
    """GET / through the TLS relay with a client that verifies the certificate."""
    ctx = ssl.create_default_context(cafile=cafile)
    raw = ns_socket(client_ns, socket.AF_INET)
    raw.settimeout(timeout)
    raw.connect((VIP, TLS_PORT))
    with ctx.wrap_socket(raw, server_hostname="www.lab.test") as s:
        version = s.version()
        s.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ssl.SSLError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body.decode().strip(), version


def test_tcp_and_tls_relays_follow_health_drain_and_fail_over(lab):
    cert, key = certificate(lab.run_dir)
    relays = relay_toml("plain", TCP_PORT) + relay_toml(
        "secure", TLS_PORT, f'tls = {{ certificate = "{cert}", key = "{key}" }}') + relay_toml(
        "sticky", STICKY_PORT, 'mode = "source-hash"')
    with RelayLab(lab, relays) as rl:
        web = set(WEB)
        for n in (1, 2):                                   # the backup's relay follows health too
            rl.wait_live(n, "plain", web, timeout=10)
        # fw2 is BACKUP and does not hold the VIP, yet listens on it (IP_FREEBIND).
        assert rl.relay_row(2, "plain")["listening"] and rl.relay_row(2, "secure")["listening"]

        # The relay engine runs as nobody, without capabilities, on both nodes.
        for n in (1, 2):
            engine = md.status(lab.run_dir, n)["relay_engine"]
            assert engine["up"] and engine["uid"] == 65534, engine
            with open(f"/proc/{engine['pid']}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            assert status["Uid"].split() == ["65534"] * 4 and int(status["CapEff"], 16) == 0

        # Round robin over the three live hosts, through the VIP held by fw1.
        assert Counter(rl.get(TCP_PORT) for _ in range(9)) == {"web1": 3, "web2": 3, "web3": 3}
        assert rl.relay_row(1, "plain")["total"] >= 9 and rl.relay_row(2, "plain")["total"] == 0

        # TLS terminated by the relay, verified by a real client.
        body, version = tls_get(lab.client, cert)
        assert body in web and version in ("TLSv1.2", "TLSv1.3")

        # A backend killed: out as soon as its check fails, never used after.
        t_kill = rl.run.kill_backend("web2")
        rl.wait_live(1, "plain", web - {"web2"}, timeout=DETECT_BOUND_S)
        detected = time.monotonic() - t_kill
        assert set(rl.get(TCP_PORT) for _ in range(8)) == {"web1", "web3"}

        # Drain: new sessions refused, then served again.
        assert md.meshctl(lab.run_dir, 1, "relay", "disable", "plain").returncode == 0
        assert rl.get(TCP_PORT).startswith("error")
        assert rl.relay_row(1, "plain")["status"] == "disabled"
        assert md.meshctl(lab.run_dir, 1, "relay", "enable", "plain").returncode == 0
        assert rl.get(TCP_PORT) in {"web1", "web3"}
        bad = md.meshctl(lab.run_dir, 1, "relay", "disable", "nope")
        assert bad.returncode == 1 and 'no relay named "nope" (relays: plain, secure, sticky)' in bad.stderr

        # An open session is listed with its client and backend.
        held = ns_socket(lab.client, socket.AF_INET)
        try:
            held.settimeout(2)
            held.connect((VIP, TCP_PORT))
            held.sendall(b"GET / HTTP/1.0\r\n")              # half a request: the backend waits
            deadline = time.monotonic() + 5
            while not (rows := [r for r in rl.show(1, "sessions") if r["backend"]]):
                assert time.monotonic() < deadline, "no session listed"
                time.sleep(0.05)
            (row,) = rows
            assert row["relay"] == "plain" and row["client"].startswith("192.0.2.")
            assert row["backend"].split(":")[0] in {WEB["web1"], WEB["web3"]} and row["bytes_in"] == 16
        finally:
            held.close()

        # source-hash: the one client address meets one backend, the same on every node.
        sticky = {rl.get(STICKY_PORT) for _ in range(5)}
        assert len(sticky) == 1 and sticky <= {"web1", "web3"}, sticky

        # The relay engine killed: restarted, the election untouched (no demotion, fw1 still master).
        old = md.status(lab.run_dir, 1)["relay_engine"]
        os.kill(old["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (now := md.status(lab.run_dir, 1)["relay_engine"])["pid"] in (None, old["pid"]) or not now["up"]:
            assert time.monotonic() < deadline, now
            time.sleep(0.05)
        assert now["starts"] == old["starts"] + 1
        st = md.status(lab.run_dir, 1)
        assert md.group_states(st) == {g: "MASTER" for g in rl.names}
        assert all(v == 0 for v in st["demotions"].values()), st["demotions"]
        assert rl.get(TCP_PORT) in {"web1", "web3"}

        # Failover: fw2 listened all along (IP_FREEBIND) and serves once it holds the VIP.
        lab.procs.kill("meshd-fw1", signal.SIGTERM, wait=10)   # bows out, drops the VIP
        lab.wait_states({2: "MASTER"}, rl.names, timeout=10)
        deadline = time.monotonic() + 5                  # neighbours learn the new holder (GARP)
        while rl.get(TCP_PORT).startswith("error") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(rl.get(TCP_PORT) for _ in range(6)) == {"web1", "web3"}
        assert rl.relay_row(2, "plain")["total"] >= 6
        body, _ = tls_get(lab.client, cert)
        assert body in {"web1", "web3"}
        assert {rl.get(STICKY_PORT) for _ in range(3)} == sticky     # fw2 hashes the client alike
        print(f"web2 out of the relay {detected:.2f} s after its kill")
