"""The relay engine child end to end on localhost: the daemon's RelayEngine
binds the listener, starts the real child (as nobody when run as root),
feeds it table health; real TCP backends run by the test, a real TLS client
that verifies a certificate the test generates.

No namespace and no root needed (as a normal user the child stays that user).
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tomllib

import pytest
import trio

from meshd.config import parse_config
from relayconf import NODE_TOML

RELAY_USER = "nobody" if os.geteuid() == 0 else str(os.getuid())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeHealth:
    """The health core's one query the relay engine uses; the test sets what is up."""

    def __init__(self):
        self.live: dict[str, tuple] = {}

    def live_hosts(self, table: str):
        return self.live.get(table, ())


def config(port: int, backend_ports: list[int], extra: str = "", sorry_port: int | None = None):
    user = f'relay_user = "{RELAY_USER}"' if not RELAY_USER.isdigit() else f"relay_user = {RELAY_USER}"
    text = NODE_TOML + f"""[health]
{user}
[[health.table]]
name = "web"
hosts = ["127.0.0.1"]
port = {backend_ports[0]}
check = {{ method = "tcp" }}
[[health.table]]
name = "sorry"
hosts = ["127.0.0.2"]
port = {sorry_port or backend_ports[0]}
check = {{ method = "tcp" }}
[[health.relay]]
name = "www"
address = "127.0.0.1"
port = {port}
table = "web"
backup_table = "sorry"
idle_timeout_ms = 5000
{extra}
"""
    return parse_config(tomllib.loads(text), "meshd.toml", read_secrets=False).health


async def tagged_backend(port: int, tag: bytes, address: str = "127.0.0.1", task_status=trio.TASK_STATUS_IGNORED):
    """Answers each connection with its tag, then echoes."""
    async def handle(stream):
        async with stream:
            try:
                await stream.send_all(tag)
                async for data in stream:
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass
    listeners = await trio.open_tcp_listeners(port, host=address)
    task_status.started()
    await trio.serve_listeners(handle, listeners)


async def start_engine(cfg, health, log_lines):
    from meshd.relay.remote import RelayEngine

    def log(event, level="info", **fields):
        log_lines.append((event, level, fields))
    engine = RelayEngine(lambda: health, cfg, log=log)
    return engine


async def wait_up(engine, timeout=15):
    with trio.fail_after(timeout):
        while not engine.up:
            await trio.sleep(0.02)


async def ask(port: int, data: bytes = b"ping", host: str = "127.0.0.1") -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        got = b""
        with trio.fail_after(5):
            await stream.send_all(data)
            while len(got) < 2 + len(data):
                try:
                    chunk = await stream.receive_some()
                except trio.BrokenResourceError:
                    break               # a refused client is reset (its bytes were never read)
                if not chunk:
                    break
                got += chunk
        return got


async def _test_tcp_relay_follows_table_health_and_drains():
    port, b1 = free_port(), free_port()
    cfg = config(port, [b1])
    health = FakeHealth()
    logs: list = []
    async with trio.open_nursery() as nursery:
        await nursery.start(tagged_backend, b1, b"A:")
        await nursery.start(tagged_backend, b1, b"S:", "127.0.0.2")
        engine = await start_engine(cfg, health, logs)
        nursery.start_soon(engine.run)
        await wait_up(engine)
        # Nothing up yet: the client is accepted and closed.
        assert await ask(port) == b""
        health.live = {"web": (("127.0.0.1", "127.0.0.1", b1, 1),)}
        engine.tables_changed()
        await answers(port, b"A:ping")
        # Main table empty, backup up: the backup serves.
        health.live = {"sorry": (("127.0.0.2", "127.0.0.2", b1, 1),)}
        engine.tables_changed()
        await answers(port, b"S:ping")
        rows = (await engine.query("relays"))["relays"]
        (row,) = rows
        assert row["status"] == "active (using backup table)" and row["listening"]
        assert row["total"] == 3 and row["refused"] == 1
        assert {b["host"]: b["total"] for b in row["backends"]} == {"127.0.0.1": 1, "127.0.0.2": 1}
        # A session open during a drain goes on; new ones are refused.
        long = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            await long.send_all(b"x")
            got = b""
            while got != b"S:x":
                got += await long.receive_some()
        with trio.fail_after(5):          # the sessions of the earlier clients end in their own time
            while len(sessions := (await engine.query("sessions"))["sessions"]) != 1:
                await trio.sleep(0.02)
        assert sessions[0]["backend"] == f"127.0.0.2:{b1}" and sessions[0]["bytes_in"] == 1
        engine.set_enabled("www", False)
        await answers(port, b"")
        with trio.fail_after(5):
            await long.send_all(b"y")
            assert await long.receive_some() == b"y"
        await long.aclose()
        engine.set_enabled("www", True)
        await answers(port, b"S:ping")
        if os.geteuid() == 0:
            assert engine.uid == 65534          # the engine dropped to nobody
        nursery.cancel_scope.cancel()


async def _test_engine_killed_is_restarted_and_keeps_its_listener():
    port, b1 = free_port(), free_port()
    cfg = config(port, [b1])
    health = FakeHealth()
    health.live = {"web": (("127.0.0.1", "127.0.0.1", b1, 1),)}
    async with trio.open_nursery() as nursery:
        await nursery.start(tagged_backend, b1, b"A:")
        engine = await start_engine(cfg, health, [])
        nursery.start_soon(engine.run)
        await wait_up(engine)
        assert await ask(port) == b"A:ping"
        pid = engine.supervisor.pid
        os.kill(pid, 9)
        with trio.fail_after(15):
            while engine.up and engine.supervisor.pid == pid:
                await trio.sleep(0.02)
            # A client connecting meanwhile waits in the daemon's backlog.
            assert await ask(port) == b"A:ping"
        assert engine.supervisor.pid != pid and engine.supervisor.starts == 2
        nursery.cancel_scope.cancel()


def make_certificate(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "www.pem", tmp_path / "www.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)                      # root's only: the daemon reads it, not the engine
    return cert_path, key_path


async def _test_tls_termination_verified_by_a_real_client(tmp_path):
    port, b1 = free_port(), free_port()
    cert, key = make_certificate(tmp_path)
    cfg = config(port, [b1], f'tls = {{ certificate = "{cert}", key = "{key}", min_version = "TLSv1.3" }}')
    health = FakeHealth()
    health.live = {"web": (("127.0.0.1", "127.0.0.1", b1, 1),)}
    async with trio.open_nursery() as nursery:
        await nursery.start(tagged_backend, b1, b"A:")
        logs: list = []
        engine = await start_engine(cfg, health, logs)
        nursery.start_soon(engine.run)
        await wait_up(engine)
        ctx = ssl.create_default_context(cafile=str(cert))

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="www.example.test") as tls:
                    tls.sendall(b"hello")
                    got = b""
                    while len(got) < 7:
                        got += tls.recv(100)
                    return got, tls.version(), tls.getpeercert()["subject"]
        got, version, subject = await trio.to_thread.run_sync(client)
        assert got == b"A:hello" and version == "TLSv1.3"
        assert subject == ((("commonName", "www.example.test"),),)

        def wrong_name():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="other.example.test"):
                    pass
        with pytest.raises(ssl.SSLCertVerificationError):
            await trio.to_thread.run_sync(wrong_name)
        (row,) = (await engine.query("relays"))["relays"]
        assert row["tls"] and row["total"] == 2
        # A reload while the key file is away (being replaced): the relay keeps what was read before.
        key.rename(tmp_path / "away.key")
        engine.reload(config(port, [b1], f'connect_timeout_ms = 400\ntls = {{ certificate = "{cert}", '
                                         f'key = "{key}", min_version = "TLSv1.3" }}'))
        assert [f["kept_previous"] for e, _, f in logs if e == "relay_tls_unreadable"] == [True]
        await engine.query("relays")
        got, _, _ = await trio.to_thread.run_sync(client)
        assert got == b"A:hello"
        nursery.cancel_scope.cancel()


async def answers(port: int, want: bytes, timeout: float = 5.0) -> None:
    """Until a new client through the relay gets `want`: a change sent to the
    engine takes effect when the engine has read it."""
    with trio.fail_after(timeout):
        while (got := await ask(port)) != want:
            await trio.sleep(0.02)
    assert got == want


async def _test_reload_applies_live_or_restarts_for_a_new_listener():
    port, port2, b1, b2 = free_port(), free_port(), free_port(), free_port()
    cfg = config(port, [b1])
    health = FakeHealth()
    health.live = {"web": (("127.0.0.1", "127.0.0.1", b1, 1),)}
    async with trio.open_nursery() as nursery:
        await nursery.start(tagged_backend, b1, b"A:")
        await nursery.start(tagged_backend, b2, b"B:")
        engine = await start_engine(cfg, health, [])
        nursery.start_soon(engine.run)
        await wait_up(engine)
        assert await ask(port) == b"A:ping"
        # The table's port changes (a new backend): sent to the running engine, no restart.
        new = config(port, [b2])
        health.live = {"web": (("127.0.0.1", "127.0.0.1", b2, 1),)}
        engine.reload(new)
        await answers(port, b"B:ping")
        assert engine.supervisor.starts == 1
        # A new listener port: the engine restarts with the new socket, the old port is closed.
        engine.reload(config(port2, [b2]))
        with trio.fail_after(15):
            while engine.supervisor.starts < 2 or not engine.up:
                await trio.sleep(0.02)
        assert await ask(port2) == b"B:ping"
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        nursery.cancel_scope.cancel()


def test_reload_applies_live_or_restarts_for_a_new_listener():
    trio.run(_test_reload_applies_live_or_restarts_for_a_new_listener)


def test_tcp_relay_follows_table_health_and_drains():
    trio.run(_test_tcp_relay_follows_table_health_and_drains)


def test_engine_killed_is_restarted_and_keeps_its_listener():
    trio.run(_test_engine_killed_is_restarted_and_keeps_its_listener)


def test_tls_termination_verified_by_a_real_client(tmp_path):
    trio.run(_test_tls_termination_verified_by_a_real_client, tmp_path)


async def _test_a_port_taken_is_named_and_the_engine_runs_the_rest():
    port, b1 = free_port(), free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    logs: list = []
    try:
        engine = await start_engine(config(port, [b1]), FakeHealth(), logs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await wait_up(engine)
            assert engine.status(trio.current_time())["not_listening"] == {"www": "Address already in use"}
            (row,) = (await engine.query("relays"))["relays"]
            assert row["listening"] is False
            assert [f for e, _, f in logs if e == "relay_listen_failed"][0]["port"] == port
            nursery.cancel_scope.cancel()
    finally:
        taken.close()


def test_a_port_taken_is_named_and_the_engine_runs_the_rest():
    trio.run(_test_a_port_taken_is_named_and_the_engine_runs_the_rest)


async def tls_backend(port: int, cert, key, task_status=trio.TASK_STATUS_IGNORED):
    """A TLS backend: answers "T:" and the server name the client asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    names = []
    ctx.sni_callback = lambda sock, name, _ctx: names.append(name)

    async def handle(stream):
        tls = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
            await tls.send_all(b"T:" + (names[-1] or "-").encode())
            await tls.aclose()
        except trio.BrokenResourceError:
            pass
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started()
    await trio.serve_listeners(handle, listeners)


async def _test_tls_towards_backends_verifies_ca_and_name(tmp_path):
    port, b1 = free_port(), free_port()
    cert, key = make_certificate(tmp_path)
    health = FakeHealth()
    health.live = {"web": (("127.0.0.1", "127.0.0.1", b1, 1),)}

    async def through(backend_tls: str) -> bytes:
        engine.reload(config(port, [b1], f"backend_tls = {backend_tls}"))
        await engine.query("relays")      # answered after the engine applied the relays (one channel, in order)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        got = b""
        with trio.fail_after(5):
            async with stream:
                try:
                    while chunk := await stream.receive_some():
                        got += chunk
                except trio.BrokenResourceError:
                    pass
        return got

    async with trio.open_nursery() as nursery:
        await nursery.start(tls_backend, b1, cert, key)
        engine = await start_engine(config(port, [b1], 'backend_tls = { sni = "www.example.test" }'), health, [])
        nursery.start_soon(engine.run)
        await wait_up(engine)
        assert await through('{ sni = "www.example.test" }') == b"T:www.example.test"
        assert await through(f'{{ verify = true, ca = "{cert}", sni = "www.example.test" }}') == \
            b"T:www.example.test"
        # Verified against the wrong name, or without the CA: no session reaches the backend.
        assert await through(f'{{ verify = true, ca = "{cert}", sni = "other.example.test" }}') == b""
        assert await through('{ verify = true, sni = "www.example.test" }') == b""
        (row,) = (await engine.query("relays"))["relays"]
        assert row["errors"] >= 2
        nursery.cancel_scope.cancel()


def test_tls_towards_backends_verifies_ca_and_name(tmp_path):
    trio.run(_test_tls_towards_backends_verifies_ca_and_name, tmp_path)
