"""The HTTP and DNS relays end to end, through the relay engine of meshd on
both lab firewalls (the `RelayLab` of test_relay_lab.py): real clients in the
client namespace, to the virtual address 192.0.2.1, backends in the server
namespace that say what reached them.

HTTP: the echo backends (http_echo_backend.py) answer with the request they
got, so every action is checked on the wire: headers appended, changed
(with $REMOTE_ADDR, $SERVER_ADDR, ...), removed; cookies, query keys and a
path changed or removed; a log line; expect, filter, X-Forwarded-For and
Forwarded; a header removed from the response; hash stickiness on a cookie;
keep-alive; TLS termination checked by a verifying client; and, after
fw1's meshd is killed (SIGKILL), fw2 serving.

DNS: two DNS backends (dns_backend.py) log the ids they see; queries over
UDP and TCP come back with the client's id while the backends saw others; a
backend killed leaves the relay once its tcp check fails.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from meshlab import meshd_node as md
from meshlab.lb import VIP, WEB
from meshlab.nsutil import ns_socket
from meshlab.topology import CLIENT4, SRV4
from meshlab.watch import JsonLines
from test_relay_lab import FALL, INTERVAL_MS, RelayLab, certificate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "relay"))
from dnswire import a_address, frame, message_id, query, question_of, rcode  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("meshd_ready")]

HERE = Path(__file__).resolve().parent
HTTP_PORT, HTTPS_PORT, HASH_PORT, ECHO_PORT = 8090, 8453, 8091, 8000
DNS_PORT = 53
BACKENDS = {"web1": WEB["web1"], "web2": WEB["web2"]}
DETECT_BOUND_S = 2 * (INTERVAL_MS + FALL * INTERVAL_MS + FALL * 300) / 1000 + 1.0


def table_toml(name: str, port: int, check: str) -> str:
    return f"""
[[health.table]]
name = "{name}"
hosts = {json.dumps(list(BACKENDS))}
port = {port}
interval_ms = {INTERVAL_MS}
fast_interval_ms = 100
fall = {FALL}
rise = 1
check = {check}
"""


def http_relay_toml(name: str, port: int, http: str, extra: str = "") -> str:
    return f"""
[[health.relay]]
name = "{name}"
address = "{VIP}"
port = {port}
protocol = "http"
table = "echo"
connect_timeout_ms = 500
idle_timeout_ms = 10000
{extra}
http = {http}
"""


# Every request carries X-Token (the expect) unless a test leaves it out.
WEB_ACTIONS = """{ forwarded_for = true, request = [
  { header = "X-Token", expect = "lab-*" },
  { path = "/admin*", filter = true },
  { header = "Via", append = "1.1 meshd" },
  { header = "X-Relay", change = "$SERVER_ADDR:$SERVER_PORT" },
  { header = "X-Client", change = "$REMOTE_ADDR:$REMOTE_PORT" },
  { header = "X-Timeout", change = "$TIMEOUT" },
  { header = "X-Secret-*", remove = true },
  { cookie = "tracking", remove = true },
  { cookie = "theme", change = "dark" },
  { query = "lang", change = "en" },
  { query = "debug", remove = true },
  { path = "/old/*", change = "/new/" },
  { header = "X-Trace", log = true },
], response = [
  { header = "X-Internal-Token", remove = true },
] }"""


class LabHTTPConnection(http.client.HTTPConnection):
    """http.client from the client namespace to the VIP, optionally over verified TLS."""

    def __init__(self, ns: str, port: int, tls: ssl.SSLContext | None = None, timeout: float = 2.0):
        super().__init__(VIP, port, timeout=timeout)
        self.ns, self.tls = ns, tls

    def connect(self) -> None:
        sock = ns_socket(self.ns, socket.AF_INET)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = self.tls.wrap_socket(sock, server_hostname="www.lab.test") if self.tls else sock

    def echo(self, target: str = "/", headers: dict | None = None, token: bool = True):
        """One request on this connection: (response, the backend's echo or None)."""
        headers = {"Host": "www.lab.test", **({"X-Token": "lab-1"} if token else {}), **(headers or {})}
        self.request("GET", target, headers=headers)
        response = self.getresponse()
        body = response.read()
        is_echo = response.getheader("X-Backend") is not None
        return response, json.loads(body) if is_echo else None


def header_values(echo: dict, name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def relay_counters(row: dict) -> dict[str, int]:
    """The protocol's own counters of a `show relays` row, by name."""
    return {c["name"]: c["value"] for c in row["counters"]}


def start_script_backend(lab, script: str, name: str, address: str, port: int) -> JsonLines:
    """`script` as backend `name` in the server namespace (its process: SCRIPT-NAME); its stdout."""
    proc = lab.procs.start(f"{script.split('_')[0]}-{name}", lab.server,
                           [sys.executable, str(HERE / script), name, address, str(port)],
                           env=md.child_env(), cwd=str(HERE), stdout_pipe=True)
    lines = JsonLines(proc)
    ev = lines.next(10)
    assert ev and ev.get("event") == "ready", f"{name} did not start: {ev}\n{proc.log_tail()}"
    return lines


def drain(lines: JsonLines, settle: float = 0.2) -> list[dict]:
    """Every line the backend printed so far (waits `settle` s for the last ones)."""
    while lines.next(settle) is not None:
        pass
    return lines.events


def wait_log_line(lab, n: int, what: str, text: str, timeout: float = 3.0) -> None:
    """Until fw n's log has the relay engine's `what` line holding `text` (it
    reaches the daemon's log through the engine's channel, after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [r.get("text", "") for r in md.log_events(lab.procs.get(md.MESHD_LOG.format(n=n)).log,
                                                          "relay_engine_says") if r.get("what") == what]
        if any(text in line for line in lines):
            return
        assert time.monotonic() < deadline, f"no {what!r} line with {text!r} in fw{n}'s log: {lines}"
        time.sleep(0.05)


def get_until_served(conn_factory, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return conn_factory().echo()
        except OSError:
            assert time.monotonic() < deadline, "no answer through the VIP"
            time.sleep(0.05)


def test_http_relay_actions_on_the_wire_tls_hash_keepalive_and_failover(lab):
    cert, key = certificate(lab.run_dir)
    relays = (table_toml("echo", ECHO_PORT, '{ method = "http", path = "/health", code = 200, timeout_ms = 300 }')
              + http_relay_toml("web", HTTP_PORT, WEB_ACTIONS)
              + http_relay_toml("secure", HTTPS_PORT, "{ forwarded = true }",
                                f'tls = {{ certificate = "{cert}", key = "{key}" }}')
              + http_relay_toml("sticky", HASH_PORT, '{ request = [{ cookie = "SID", hash = true }] }',
                                'mode = "hash"'))
    with RelayLab(lab, relays, backends=()) as rl:
        logs = {n: start_script_backend(lab, "http_echo_backend.py", n, a, ECHO_PORT)
                for n, a in BACKENDS.items()}
        for n in (1, 2):
            rl.wait_live(n, "web", set(BACKENDS), timeout=10)
        plain = lambda: LabHTTPConnection(lab.client, HTTP_PORT)   # noqa: E731

        # Each request action, as the backend received it.
        c = plain()
        response, echo = c.echo("/page?x=1", {"Via": "1.0 client", "X-Relay": "forged",
                                              "X-Secret-A": "a", "X-Secret-B": "b",
                                              "X-Forwarded-For": "203.0.113.9"})
        client_addr = "%s:%d" % c.sock.getsockname()
        c.close()
        assert response.status == 200 and echo["method"] == "GET" and echo["target"] == "/page?x=1&lang=en"
        # (lang: a `change` adds the pair that is not there)
        assert header_values(echo, "Via") == ["1.0 client, 1.1 meshd"]
        assert header_values(echo, "X-Relay") == [f"{VIP}:{HTTP_PORT}"]
        assert header_values(echo, "X-Client") == [client_addr] and client_addr.startswith(CLIENT4 + ":")
        assert header_values(echo, "X-Timeout") == ["10"]
        assert not [k for k, _ in echo["headers"] if k.lower().startswith("x-secret-")]
        assert header_values(echo, "X-Forwarded-For") == [f"203.0.113.9, {CLIENT4}"]
        assert header_values(echo, "X-Token") == ["lab-1"] and header_values(echo, "Host") == ["www.lab.test"]
        # The response action: the backend's X-Internal-Token never reaches the client.
        assert response.getheader("X-Internal-Token") is None and response.getheader("Server") == "echo"
        fw1_peer = echo["peer"].split(":")[0]
        assert fw1_peer == f"{SRV4}.2"                  # fw1's own address on the server side

        # Cookie, query and path actions; a log action's line in fw1's log.
        c = plain()
        _response, echo = c.echo("/old/page?lang=fr&debug=1&x=%41", {
            "Cookie": "SID=s1; tracking=t1; theme=light", "X-Trace": "trace-123"})
        c.close()
        assert echo["target"] == "/new/?lang=en&x=%41", echo["target"]
        assert header_values(echo, "Cookie") == ["SID=s1; theme=dark"]
        wait_log_line(lab, 1, "http_log", "request header X-Trace: trace-123")

        # expect: a request without the token is refused by the relay itself.
        c = plain()
        response, echo = c.echo("/refused-by-expect", token=False)
        c.close()
        assert response.status == 403 and echo is None and response.getheader("Connection") == "close"

        # filter: closed without an answer, however the path is spelled; no backend sees it.
        for target in ("/admin/filtered-1", "/%61dmin/filtered-2", "//x/../admin/filtered-3"):
            c = plain()
            with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
                c.echo(target)
            c.close()

        # Keep-alive: three requests on one client connection, one backend connection.
        c = plain()
        echoes = [c.echo(f"/keep/{i}")[1] for i in range(3)]
        c.close()
        assert len({(e["backend"], e["connection"]) for e in echoes}) == 1
        assert [e["request"] for e in echoes] == [1, 2, 3]

        # Round robin over new connections.
        assert Counter(plain().echo()[1]["backend"] for _ in range(4)) == {"web1": 2, "web2": 2}

        # hash on the SID cookie: one cookie, one backend; many cookies, both backends.
        sticky = lambda: LabHTTPConnection(lab.client, HASH_PORT)   # noqa: E731
        owner = {}
        for sid in [f"user{i}" for i in range(10)]:
            seen = {sticky().echo(headers={"Cookie": f"SID={sid}"})[1]["backend"] for _ in range(2)}
            assert len(seen) == 1, (sid, seen)
            owner[sid] = seen.pop()
        assert set(owner.values()) == set(BACKENDS), owner
        # ... also on one keep-alive connection: each request meets its cookie's backend.
        one_each = [next(s for s, b in owner.items() if b == name) for name in sorted(BACKENDS)]
        c = sticky()
        for sid in one_each * 2:
            assert c.echo(headers={"Cookie": f"SID={sid}; theme=dark"})[1]["backend"] == owner[sid]
        c.close()

        # HTTPS: TLS terminated by the relay, verified by the client, HTTP inside, keep-alive.
        c = LabHTTPConnection(lab.client, HTTPS_PORT, tls=ssl.create_default_context(cafile=cert))
        tls_echoes = [c.echo(f"/tls/{i}")[1] for i in range(2)]
        version = c.sock.version()
        c.close()
        assert version in ("TLSv1.2", "TLSv1.3") and tls_echoes[0]["connection"] == tls_echoes[1]["connection"]
        assert header_values(tls_echoes[0], "Forwarded") == [f"for={CLIENT4};by={VIP};proto=https"]
        with pytest.raises(ssl.SSLCertVerificationError):   # the client does verify
            LabHTTPConnection(lab.client, HTTPS_PORT, tls=ssl.create_default_context()).echo()

        # The counters of `meshctl show relays`.
        counters = relay_counters(rl.relay_row(1, "web"))
        assert counters["refused"] == 1 and counters["filtered"] == 3, counters
        assert counters["requests"] >= 10 and counters["backend_reuses"] >= 2, counters
        assert counters["responses_4xx"] == 1 and counters["responses_2xx"] >= 9, counters

        # Nothing filtered or refused reached a backend.
        targets = [e["target"] for lines in logs.values() for e in drain(lines) if e["event"] == "request"]
        assert "/page?x=1&lang=en" in targets and not [t for t in targets if "filtered" in t or "refused" in t]

        # fw1's meshd killed: fw2 takes the VIP and its relay (listening all along) serves.
        t_kill = time.monotonic()
        lab.procs.kill("meshd-fw1", signal.SIGKILL)
        lab.wait_states({2: "MASTER"}, rl.names, timeout=10)
        _response, echo = get_until_served(plain)
        served = time.monotonic() - t_kill
        assert echo["peer"].split(":")[0] == f"{SRV4}.3" and header_values(echo, "Via") == ["1.1 meshd"]
        assert rl.relay_row(2, "web")["total"] >= 1
        print(f"fw1's meshd killed: fw2's HTTP relay served {served:.2f} s later "
              f"(backend saw {fw1_peer} before, {echo['peer'].split(':')[0]} after)")


def dns_relay_toml() -> str:
    return table_toml("resolvers", DNS_PORT, '{ method = "tcp", timeout_ms = 300 }') + f"""
[[health.relay]]
name = "dns"
address = "{VIP}"
port = {DNS_PORT}
protocol = "dns"
table = "resolvers"
idle_timeout_ms = 10000
dns = {{ query_timeout_ms = 1000 }}
"""


def udp_ask(ns: str, msg_id: int, name: str) -> bytes:
    s = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(2)
        s.sendto(query(msg_id, name), (VIP, DNS_PORT))
        return s.recv(4096)
    finally:
        s.close()


def tcp_ask(ns: str, questions: list[tuple[int, str]]) -> dict[int, bytes]:
    """Pipelined queries on one TCP connection; the answers by id."""
    s = ns_socket(ns, socket.AF_INET)
    try:
        s.settimeout(2)
        s.connect((VIP, DNS_PORT))
        s.sendall(b"".join(frame(query(i, n)) for i, n in questions))
        data, answers = b"", {}
        while len(answers) < len(questions):
            chunk = s.recv(4096)
            assert chunk, f"connection closed after {len(answers)} answers"
            data += chunk
            while len(data) >= 2 and len(data) >= 2 + struct.unpack_from("!H", data)[0]:
                size = struct.unpack_from("!H", data)[0]
                answer, data = data[2:2 + size], data[2 + size:]
                answers[message_id(answer)] = answer
        return answers
    finally:
        s.close()


def test_dns_relay_rewrites_ids_over_udp_and_tcp_and_follows_health(lab):
    with RelayLab(lab, dns_relay_toml(), backends=()) as rl:
        logs = {n: start_script_backend(lab, "dns_backend.py", n, a, DNS_PORT)
                for n, a in BACKENDS.items()}
        for n in (1, 2):
            rl.wait_live(n, "dns", set(BACKENDS), timeout=10)

        # UDP: every client uses id 0x4242; the answers carry it back, the backends saw others.
        answered = Counter()
        for i in range(8):
            answer = udp_ask(lab.client, 0x4242, f"u{i}.lab.test")
            assert message_id(answer) == 0x4242 and rcode(answer) == 0
            assert question_of(answer)[0] == f"u{i}.lab.test"
            answered[a_address(answer)] += 1
        assert set(answered) == set(BACKENDS.values()), answered      # round robin, per query

        # TCP: three pipelined queries, each answer matched back to its own id.
        tcp_questions = [(1, "t1.lab.test"), (2, "t2.lab.test"), (3, "t3.lab.test")]
        answers = tcp_ask(lab.client, tcp_questions)
        for msg_id, name in tcp_questions:
            assert question_of(answers[msg_id])[0] == name and rcode(answers[msg_id]) == 0

        seen = {e["name"]: e for lines in logs.values() for e in drain(lines) if e["event"] == "query"}
        udp_ids = [seen[f"u{i}.lab.test"]["id"] for i in range(8)]
        assert all(seen[f"u{i}.lab.test"]["transport"] == "udp" for i in range(8))
        assert udp_ids.count(0x4242) <= 1 and len(set(udp_ids)) >= 7, udp_ids     # random, not the client's
        tcp_ids = [seen[name]["id"] for _, name in tcp_questions]
        assert tcp_ids != [1, 2, 3] and all(seen[n]["transport"] == "tcp" for _, n in tcp_questions)

        # A backend killed: out of the relay once its tcp check fails, never asked after.
        t_kill = lab.procs.send_signal("dns-web2")
        lab.procs.wait("dns-web2", 5)
        rl.wait_live(1, "dns", {"web1"}, timeout=DETECT_BOUND_S)
        detected = time.monotonic() - t_kill
        for i in range(4):
            answer = udp_ask(lab.client, 0x4242, f"after{i}.lab.test")
            assert message_id(answer) == 0x4242 and a_address(answer) == BACKENDS["web1"]
        answers = tcp_ask(lab.client, [(7, "after-tcp.lab.test")])
        assert a_address(answers[7]) == BACKENDS["web1"]

        # Drained: SERVFAIL at once, with the client's id and question; then served again.
        assert md.meshctl(lab.run_dir, 1, "relay", "disable", "dns").returncode == 0
        answer = udp_ask(lab.client, 0x5151, "drained.lab.test")
        assert message_id(answer) == 0x5151 and rcode(answer) == 2
        assert question_of(answer)[0] == "drained.lab.test"
        assert md.meshctl(lab.run_dir, 1, "relay", "enable", "dns").returncode == 0
        assert rcode(udp_ask(lab.client, 0x5152, "enabled.lab.test")) == 0

        # `meshctl show relays` counts what went through fw1, and nothing on fw2.
        counters = relay_counters(rl.relay_row(1, "dns"))
        assert counters["queries"] == 8 + 3 + 4 + 1 + 2, counters
        assert counters["answers"] == 8 + 3 + 4 + 1 + 1 and counters["servfail.no-backend"] == 1, counters
        assert counters["tcp_connections"] == 2, counters
        assert relay_counters(rl.relay_row(2, "dns"))["queries"] == 0
        # Each query forwarded counts in its backend's total, UDP ones too (TCP: a session each).
        backend_totals = sum(b["total"] for b in rl.relay_row(1, "dns")["backends"])
        assert backend_totals >= 8 + 4 + 1 + 2, rl.relay_row(1, "dns")["backends"]
        text = md.meshctl(lab.run_dir, 1, "show", "relays")
        rows = [line.split() for line in text.stdout.splitlines()]
        assert text.returncode == 0 and ["relay", "dns", "dns", f"{VIP}:{DNS_PORT}", "active"] in [
            r[:5] for r in rows], text.stdout
        assert ["backend", "web1", f"{BACKENDS['web1']}:{DNS_PORT}", "live"] in [r[:4] for r in rows]
        assert ["backend", "web2", f"{BACKENDS['web2']}:{DNS_PORT}", "not", "used"] in [r[:5] for r in rows]
        print(f"dns backend web2 out of the relay {detected:.2f} s after its kill")
