"""preflight(): programs, CA files and interfaces a valid configuration names.

The tests run as root, so files owned by someone else are made with chown to
"daemon" ("nobody" is the default script_user, whom preflight trusts to own
its scripts); /tmp (sticky, world-writable) is on the path of every
temporary file.  Programs live in `base`, under /tmp, which script_user can
enter (pytest's tmp_path is under a mode-700 directory).
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest

from meshd.config import parse_config
from meshd.preflight import Finding, preflight

NOBODY = pwd.getpwnam("nobody").pw_uid
OTHER = pwd.getpwnam("daemon").pw_uid          # neither root nor script_user
FILE = "meshd.toml"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to nobody needs root")


def config(notify=(), track=(), script=None, ca_file=None, interface="lo",
           track_interface=None, sync_interface=None, node=""):
    text = f"""
[node]
id = 1
{node}
[[cluster.keys]]
id = 1
secret_file = "k.key"
[[group]]
id = 1
name = "lan"
interface = "{interface}"
addresses = ["192.0.2.1/24"]
notify = {json.dumps(list(notify))}
"""
    for i, command in enumerate(track):
        text += f"""
[[track_script]]
name = "t{i}"
command = {json.dumps(list(command))}
"""
    if track_interface:
        text += f'\n[[track_interface]]\ninterface = "{track_interface}"\n'
    if sync_interface:
        text += f'\n[sync]\ninterface = "{sync_interface}"\npeers = [{{ id = 2, address = "192.0.2.3" }}]\n'
    if script or ca_file:
        text += '\n[health]\n[[health.host]]\nname = "web1"\naddress = "10.1.0.11"\n'
    if script:
        text += f"""
[[health.table]]
name = "web"
hosts = ["web1"]
port = 80
check = {{ method = "script", script = "{script}" }}
"""
    if ca_file:
        text += f"""
[[health.table]]
name = "tls"
hosts = ["web1"]
port = 443
check = {{ method = "tls", verify = true, ca_file = "{ca_file}" }}
"""
    return parse_config(tomllib.loads(text), FILE, read_secrets=False)


def program(path, mode=0o755, body="#!/bin/sh\nexit 0\n"):
    path.write_text(body)
    path.chmod(mode)
    return str(path)


@pytest.fixture
def base():
    d = tempfile.mkdtemp(prefix="preflight-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d)


@pytest.fixture
def bindir(base):
    d = base / "bin"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def only(findings):
    assert len(findings) == 1, findings
    return findings[0]


def test_safe_programs_have_no_findings(bindir):
    hook = program(bindir / "notify.sh")
    check = program(bindir / "check.sh")
    assert preflight(config(notify=[hook, hook], track=[[check, "arg"]], script=check)) == []


def test_bare_name_is_found_in_path(bindir, monkeypatch):
    program(bindir / "mycheck")
    monkeypatch.setenv("PATH", str(bindir))
    assert preflight(config(track=[["mycheck", "-q"]])) == []
    monkeypatch.setenv("PATH", "/nonexistent")
    f = only(preflight(config(track=[["mycheck"]])))
    assert (f.level, f.key) == ("error", "track_script[0].command[0]")
    assert f.message == 'no executable "mycheck" found in PATH (/nonexistent)'


def test_missing_program(bindir):
    f = only(preflight(config(notify=[str(bindir / "nope.sh")])))
    assert (f.level, f.key, f.message) == \
        ("error", "group[0].notify[0]", f"{bindir}/nope.sh: No such file or directory")
    assert str(f) == f"{FILE}: group[0].notify[0]: {bindir}/nope.sh: No such file or directory"


def test_not_a_regular_file(bindir):
    f = only(preflight(config(notify=[str(bindir)])))
    assert f.message == f"{bindir} is not a regular file"


def test_not_executable(bindir):
    hook = program(bindir / "notify.sh", 0o644)
    f = only(preflight(config(notify=[hook])))
    assert f.message == f"{hook} is not executable (mode 644); chmod +x it"


@pytest.mark.parametrize("mode, by, fix", [(0o775, "group", "g-w"), (0o757, "others", "o-w"),
                                           (0o777, "group and others", "go-w")])
def test_program_writable_by_group_or_others(bindir, mode, by, fix):
    hook = program(bindir / "notify.sh", mode)
    f = only(preflight(config(notify=[hook])))
    assert (f.level, f.key) == ("error", "group[0].notify[0]")
    assert f.message == f"{hook} is writable by {by} (mode {mode:o}); chmod {fix} it"


def test_parent_directory_writable_by_others(bindir):
    hook = program(bindir / "notify.sh")
    bindir.chmod(0o777)
    f = only(preflight(config(notify=[hook])))
    assert f.message == (f"directory {bindir} is writable by group and others (mode 777), "
                         f"so others could replace {hook}; chmod go-w {bindir}")


def test_sticky_directory_is_accepted(bindir):
    """As /tmp: others may add files but cannot replace one they do not own."""
    hook = program(bindir / "notify.sh")
    bindir.chmod(0o1777)
    assert preflight(config(notify=[hook])) == []


def test_program_owned_by_another_user(bindir):
    hook = program(bindir / "notify.sh")
    os.chown(hook, OTHER, -1)
    f = only(preflight(config(notify=[hook])))
    assert f.message == (f"{hook} is owned by daemon (uid {OTHER}), not by root, the user "
                         "meshd runs as or script_user nobody; chown it")


def test_directory_owned_by_another_user(bindir):
    hook = program(bindir / "notify.sh")
    os.chown(bindir, OTHER, -1)
    f = only(preflight(config(notify=[hook])))
    assert f.message.startswith(f"directory {bindir} is owned by daemon (uid {OTHER}), ")
    assert f.message.endswith(f", so others could replace {hook}; chown it")


def test_several_problems_of_one_program_are_all_listed(bindir):
    hook = program(bindir / "notify.sh", 0o666)
    os.chown(hook, OTHER, -1)
    messages = [f.message for f in preflight(config(notify=[hook]))]
    assert messages == [f"{hook} is not executable (mode 666); chmod +x it",
                        (f"{hook} is owned by daemon (uid {OTHER}), not by root, the user "
                         "meshd runs as or script_user nobody; chown it"),
                        f"{hook} is writable by group and others (mode 666); chmod go-w it"]


def test_program_owned_by_script_user_is_trusted(bindir):
    """keepalived's rule: root or script_user may own it (and so may change it)."""
    hook = program(bindir / "notify.sh")
    os.chown(hook, NOBODY, -1)
    assert preflight(config(notify=[hook])) == []
    assert "is owned by nobody" in only(preflight(config(notify=[hook], node='script_user = "daemon"'))).message


def test_program_script_user_cannot_reach_or_run(base, bindir):
    private = base / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    hidden = program(private / "hook.sh")
    f = only(preflight(config(notify=[hidden])))
    assert f.level == "error" and f.key == "group[0].notify[0]"
    assert f.message == (f"script_user nobody cannot enter directory {private} (owner root (uid 0), "
                         f"mode 700), so it cannot run {hidden}")
    root_only = program(bindir / "root-only.sh", 0o700)
    assert only(preflight(config(track=[[root_only]]))).message == (
        f"script_user nobody may not execute {root_only} (owner root (uid 0), mode 700)")
    unreadable = program(bindir / "unreadable.sh", 0o711)        # a #! script: sh must read it
    assert only(preflight(config(script=unreadable))).message.startswith(
        f"script_user nobody may not read {unreadable} (owner root (uid 0), mode 711)")
    # As root the same programs run: no finding about them, one warning about root.
    findings = preflight(config(notify=[hidden], track=[[root_only]], script=unreadable,
                                node='script_user = "root"'))
    assert [(f.level, f.key) for f in findings] == [("warning", "node.script_user")]
    assert "run as root" in findings[0].message


def test_symlink_is_judged_by_its_target_and_both_paths(base, bindir):
    unsafe = base / "unsafe"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    target = program(unsafe / "real.sh")
    link = bindir / "notify.sh"
    link.symlink_to(target)
    f = only(preflight(config(notify=[str(link)])))
    assert f.message.startswith(f"directory {unsafe} is writable by group and others (mode 777), "
                                f"so others could replace {link}")
    # A safe target through a link in an unsafe directory: the link can be replaced.
    safe_target = program(bindir / "real.sh")
    (unsafe / "link.sh").symlink_to(safe_target)
    f = only(preflight(config(notify=[str(unsafe / "link.sh")])))
    assert f.message.startswith(f"directory {unsafe} is writable")
    # A target that is itself unsafe is named as where the link leads.
    bad = program(bindir / "bad.sh", 0o775)
    (bindir / "to-bad.sh").symlink_to(bad)
    f = only(preflight(config(notify=[str(bindir / "to-bad.sh")])))
    assert f.message == (f"{bad} (where {bindir / 'to-bad.sh'} leads) is writable by group "
                         "(mode 775); chmod g-w it")


def test_relative_program_is_a_warning_and_still_checked(bindir, monkeypatch):
    monkeypatch.chdir(bindir.parent)
    program(bindir / "notify.sh", 0o775)
    findings = preflight(config(notify=["bin/notify.sh"]))
    assert [(f.level, f.message) for f in findings] == [
        ("warning", (f"bin/notify.sh is a relative path: found here as {bindir}/notify.sh, "
                     "but meshd resolves it from the directory it starts in (/ under systemd)")),
        ("error", f"{bindir}/notify.sh is writable by group (mode 775); chmod g-w it")]
    assert str(findings[0]).startswith(f"warning: {FILE}: group[0].notify[0]: bin/notify.sh is a relative path")


def test_track_and_health_scripts_are_checked_too(bindir):
    bad = program(bindir / "check.sh", 0o644)
    keys = [f.key for f in preflight(config(track=[[bad]], script=bad))]
    assert keys == ["track_script[0].command[0]", "health.table[0].check.script"]


# ---------------------------------------------------------------- CA files


def write_ca(path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "preflight CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_ca_file_usable(tmp_path):
    assert preflight(config(ca_file=write_ca(tmp_path / "ca.pem"))) == []


def test_ca_file_missing(tmp_path):
    f = only(preflight(config(ca_file=str(tmp_path / "ca.pem"))))
    assert (f.level, f.key, f.message) == ("error", "health.table[0].check.ca_file",
                                           f"cannot read {tmp_path}/ca.pem: No such file or directory")


def test_ca_file_without_certificates(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    f = only(preflight(config(ca_file=str(tmp_path / "ca.pem"))))
    assert f.message.startswith(f"{tmp_path}/ca.pem holds no certificate the TLS check can use: ")


def test_ca_file_that_is_not_a_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")           # open() would block on it
    f = only(preflight(config(ca_file=str(tmp_path / "fifo"))))
    assert f.message == f"{tmp_path}/fifo is not a regular file"


def messages_as_nobody(cfg):
    """preflight(cfg) in a child process running as nobody (as root everything is readable)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(w, json.dumps([f.message for f in preflight(cfg)]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def test_ca_file_unreadable_for_the_daemon_user():
    d = tempfile.mkdtemp(prefix="preflight-", dir="/tmp")     # reachable by nobody, unlike tmp_path
    try:
        os.chmod(d, 0o755)
        ca = write_ca(Path(d) / "ca.pem")
        os.chmod(ca, 0o644)
        assert messages_as_nobody(config(ca_file=ca)) == []
        os.chmod(ca, 0o600)
        assert messages_as_nobody(config(ca_file=ca)) == [f"cannot read {ca}: Permission denied"]
    finally:
        shutil.rmtree(d)


# -------------------------------------------------------------- interfaces


def test_missing_interfaces_are_warnings():
    findings = preflight(config(interface="nosuch0", track_interface="nosuch1",
                                sync_interface="nosuch2"))
    assert [(f.level, f.key) for f in findings] == [
        ("warning", "group[0].interface"), ("warning", "track_interface[0].interface"),
        ("warning", "sync.interface")]
    assert findings[0].message == ('no interface "nosuch0" on this machine; '
                                   "the group would stay in FAULT until it appears")
    assert str(findings[2]).startswith(f"warning: {FILE}: sync.interface: no interface \"nosuch2\"")


def test_present_interfaces_are_fine():
    assert preflight(config(interface="lo", track_interface="lo", sync_interface="lo")) == []


def test_finding_text():
    assert str(Finding("error", "group[0].notify[0]", "x", "f.toml")) == "f.toml: group[0].notify[0]: x"
    assert str(Finding("warning", "k", "y", "f.toml")) == "warning: f.toml: k: y"


def relay_config(cert, key):
    text = f"""
[node]
id = 1
[[cluster.keys]]
id = 1
secret_file = "k.key"
[[group]]
id = 1
name = "lan"
interface = "lo"
addresses = ["192.0.2.1/24"]
[[health.table]]
name = "web"
hosts = ["10.1.0.11"]
port = 80
check = {{ method = "tcp" }}
[[health.relay]]
name = "www"
address = "192.0.2.1"
port = 443
table = "web"
tls = {{ certificate = "{cert}", key = "{key}" }}
"""
    return parse_config(tomllib.loads(text), FILE, read_secrets=False)


def write_pair(directory, stem):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(directory / f"{stem}.pem"), str(directory / f"{stem}.key")


def test_relay_certificate_and_key(tmp_path):
    cert, key = write_pair(tmp_path, "www")
    assert preflight(relay_config(cert, key)) == []
    f = only(preflight(relay_config(cert, str(tmp_path / "nope.key"))))
    assert (f.level, f.key) == ("error", "health.relay[0].tls.key")
    assert f.message == f"cannot read {tmp_path}/nope.key: No such file or directory"
    _other_cert, other_key = write_pair(tmp_path, "other")
    f = only(preflight(relay_config(cert, other_key)))
    assert f.key == "health.relay[0].tls" and "do not load as a certificate and its key" in f.message
