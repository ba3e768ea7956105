"""The accelerator (meshd/_fastct.c) against the Python it replaces.

Decode: the same CtEvents, or the same CtDecodeError with the same message,
for the golden vectors, reordered and mutated ones and garbage. The burst
reader: CtEventReader.read_burst with either implementation over a
socketpair gives the same events, markers, counters and logs. The sender:
datagrams in order, failures by position, the rest still sent. No root, no
network beyond loopback.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import struct
import sysconfig
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctvectors import DATA, raw
from test_ctnetlink import _shuffle, message

from meshd import fastct
from meshd.kernel import ctnetlink as ct
from meshd.kernel.conntrack import CtEventReader, Overrun
from meshd.kernel.ctnetlink import events
from meshd.sync.sender import DatagramSender

FAST = fastct.accelerator()
needs_fast = pytest.mark.skipif(FAST is None, reason="meshd._fastct is not built")
MESSAGES = [raw(v) for v in DATA["vectors"] + DATA["expect_vectors"]]


def test_accelerator_is_built_where_it_can_be():
    """CI builds it (scripts/setup: gcc, python3-dev, pip install -e): a machine with
    both that runs the pure-Python code has lost the accelerator."""
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("gcc") is None or not header.exists():
        pytest.skip("no gcc or no Python.h: the pure-Python fallback is expected here")
    assert FAST is not None, "gcc and Python.h are here but meshd._fastct is not built"
    assert (fastct.READ_OK, fastct.READ_ENOBUFS, fastct.READ_TRUNCATED, fastct.READ_DECODE) == \
        (FAST.READ_OK, FAST.READ_ENOBUFS, FAST.READ_TRUNCATED, FAST.READ_DECODE)


def test_pure_python_is_forced_by_the_environment(monkeypatch):
    monkeypatch.setenv(fastct.PURE_ENV, "1")
    assert fastct.load() is None
    monkeypatch.setenv(fastct.PURE_ENV, "0")
    assert fastct.load() is FAST


# --- decode: the same result or the same error ----------------------------------------------

def outcome(decode_into, buf: bytes):
    out: list = []
    try:
        flags = decode_into(buf, out)
    except ct.CtDecodeError as e:
        return out, type(e), str(e), getattr(e, "errno", None)
    return out, flags


def same(buf: bytes):
    events._last_dplan = None
    py = outcome(events.decode_into, buf)
    c = outcome(FAST.decode_into, buf)
    assert c == py, buf.hex()
    assert all(type(e) is ct.CtEvent for e in c[0])
    return py


@needs_fast
def test_vectors_and_their_concatenation():
    for m in MESSAGES:
        assert len(same(m)[0]) == 1
    assert len(same(b"".join(MESSAGES))[0]) == len(MESSAGES)
    for v in (DATA["dump"], DATA["expect_dump"]):          # several messages and NLMSG_DONE per datagram
        out, flags = same(raw(v))
        assert len(out) == v["entries"] and flags & ct.DONE


@needs_fast
def test_reordered_attributes():
    rng = random.Random(14)
    for m in (raw(v) for v in DATA["vectors"]):
        for _ in range(20):
            same(_shuffle(m, rng))


@needs_fast
def test_every_cut_of_every_vector():
    for m in MESSAGES:
        for n in range(len(m) + 1):
            same(m[:n])
            same(message(m[16:n]) if n >= 16 else m[:n])


@needs_fast
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_messages(msg, data):
    msg = bytearray(msg)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    same(bytes(msg))


@needs_fast
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage(data):
    same(data)
    same(message(b"\x02\0\0\0" + data))


@needs_fast
def test_errors_in_a_stream_and_buffers_that_are_not_bytes():
    ev = raw(DATA["vectors"][0])
    for tail in (message(struct.pack("=i", -16), ct.NLMSG_ERROR, seq=9), message(b"", ct.NLMSG_OVERRUN, seq=3),
                 message(struct.pack("=i", -4), ct.NLMSG_DONE), message(struct.pack("=i", -2**31), ct.NLMSG_ERROR)):
        r = same(ev + tail)
        assert len(r[0]) == 1 and r[1] is ct.CtNetlinkError       # the event before it is delivered
    assert outcome(FAST.decode_into, bytearray(ev)) == outcome(events.decode_into, ev)
    assert outcome(FAST.decode_into, memoryview(ev)) == outcome(events.decode_into, ev)
    with pytest.raises(TypeError):
        FAST.decode_into(ev, ())


@needs_fast
def test_no_memory_kept_per_decode():
    good, bad = MESSAGES[0], MESSAGES[0][:-3]
    exp = raw(DATA["expect_vectors"][0])

    def churn():
        for _ in range(3000):
            FAST.decode_into(good + exp, [])
            try:
                FAST.decode_into(bad, [])
            except ct.CtDecodeError:
                pass
    churn()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, f"{grown} bytes kept after 6000 decodes"


# --- the burst reader over a socketpair -------------------------------------------------------

def with_pid(msg: bytes, pid: int) -> bytes:
    return msg[:12] + struct.pack("=I", pid) + msg[16:]


UDP_NEW = raw(next(v for v in DATA["vectors"] if v["name"] == "ipv4_udp_new"))
BAD = message(b"\x02\0\0\0")                 # no orig tuple


def script(rng: random.Random) -> list[bytes]:
    """Datagrams as the kernel could queue them: events, some of ours, a bad one, a huge one."""
    out = []
    for i in range(300):
        m = rng.choice(MESSAGES)
        r = rng.random()
        if r < 0.15:
            m = with_pid(m, 4242)           # one of our own injections
        elif r < 0.17:
            m = BAD
        elif r < 0.175:
            m = UDP_NEW + bytes(70_000)     # past the 64 KiB buffer
        out.append(m)
    return out


def run_reader(fast, datagrams: list[bytes], burst: int) -> tuple[list, dict, list]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    b.setblocking(False)
    logs: list = []
    reader = CtEventReader(sock=b, own_portids=[4242], burst=burst, fast=fast,
                           log=lambda event, level="info", **f: logs.append((event, level, f)))
    seen: list = []
    try:
        for d in datagrams:
            a.send(d)
        for _ in range(len(datagrams) + 2):
            evs, overrun = reader.read_burst()
            seen.append((evs, overrun and overrun.reason))
    finally:
        reader.close()
        a.close()
    stats = reader.stats()
    return seen, stats, logs


@needs_fast
@pytest.mark.parametrize("burst", [1, 7, 64, 256])
def test_read_burst_is_the_same_with_either_implementation(burst):
    datagrams = script(random.Random(burst))
    py = run_reader(None, datagrams, burst)
    c = run_reader(FAST, datagrams, burst)
    assert c == py
    seen, stats, _logs = py
    assert stats["own_skipped"] > 0 and stats["decode_errors"] > 0 and stats["datagrams"] == len(datagrams)
    assert sum(len(e) for e, _o in seen) == stats["datagrams"] - stats["own_skipped"] - stats["decode_errors"]
    assert {o for _e, o in seen} >= {None, "decode", "truncated"}


@needs_fast
def test_batch_reader_keeps_what_follows_a_bad_datagram():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        r = FAST.EventReader(b.fileno(), 8, 1 << 16)
        for d in (UDP_NEW, BAD, UDP_NEW, with_pid(UDP_NEW, 7), UDP_NEW):
            a.send(d)
        out: list = []
        status, n, skipped, (error, size) = r.read(100, set(), out)
        assert (status, n, skipped, len(out), size) == (FAST.READ_DECODE, 2, 0, 1, len(BAD))
        assert error == "conntrack message without CTA_TUPLE_ORIG"
        assert r.pending() == 3
        assert r.read(2, {7}, out) == (FAST.READ_OK, 2, 1, None) and len(out) == 2
        assert r.read(100, frozenset({7}), out) == (FAST.READ_OK, 1, 0, None) and len(out) == 3
        assert r.pending() == 0
        assert r.read(100, set(), out) == (FAST.READ_OK, 0, 0, None)
        with pytest.raises(TypeError):
            r.read(1, [7], out)
    with pytest.raises(ValueError):
        FAST.EventReader(0, 0, 1 << 16)
    with pytest.raises(RuntimeError):
        FAST.EventReader.__new__(FAST.EventReader).read(1, set(), [])


# --- the sender --------------------------------------------------------------------------------

def udp(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(2048))
        except BlockingIOError:
            return out


@needs_fast
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_sendmmsg_in_order_and_past_a_failure(family, host):
    rx, tx = udp(family, host), udp(family, host)
    with rx, tx:
        port = rx.getsockname()[1]
        sa = fastct.pack_sockaddr(family, host, port)
        # a destination the kernel refuses in both families: port 0 (EINVAL)
        bad = fastct.pack_sockaddr(family, host, 0)
        items = [(b"%d" % i, bad if i in (3, 70) else sa) for i in range(130)]
        sent, failures = FAST.sendmmsg(tx.fileno(), items)
        assert (sent, failures) == (128, [(3, errno.EINVAL), (70, errno.EINVAL)])
        assert drain(rx) == [b"%d" % i for i in range(130) if i not in (3, 70)]
        assert FAST.sendmmsg(tx.fileno(), []) == (0, None)
        with pytest.raises(TypeError):
            FAST.sendmmsg(tx.fileno(), [(b"x", "127.0.0.1")])
        with pytest.raises(ValueError):
            FAST.sendmmsg(tx.fileno(), [(b"x", b"")])


@needs_fast
def test_datagram_sender_is_the_same_with_either_implementation():
    rx, tx = udp(socket.AF_INET, "127.0.0.1"), udp(socket.AF_INET, "127.0.0.1")
    with rx, tx:
        port = rx.getsockname()[1]
        datagrams = [(b"a", "127.0.0.1"), (b"b", "255.255.255.255"), (b"c", "localhost"), (b"d", "127.0.0.1"),
                     (b"e", "not an address")]
        results = []
        for fast in (None, FAST):
            sender = DatagramSender(tx, socket.AF_INET, fast=fast)
            failures = sender.send(datagrams, port)
            results.append(([(i, e.errno) for i, e in failures], drain(rx)))
        assert results[0] == results[1]
        failed, received = results[0]
        assert [i for i, _e in failed] == [1, 4] and failed[0][1] == errno.EACCES
        assert received == [b"a", b"c", b"d"]


def test_pack_sockaddr():
    assert fastct.pack_sockaddr(socket.AF_INET, "192.0.2.1", 4321) == \
        struct.pack("=H", socket.AF_INET) + struct.pack("!H", 4321) + bytes([192, 0, 2, 1]) + bytes(8)
    lo = socket.if_nametoindex("lo")
    six = fastct.pack_sockaddr(socket.AF_INET6, "fe80::1%lo", 4321)
    assert len(six) == 28 and six[-4:] == struct.pack("=I", lo)
    with pytest.raises(OSError):
        fastct.pack_sockaddr(socket.AF_INET, "::1", 1)


@needs_fast
def test_a_closed_reader_does_not_read_the_next_socket_with_its_number():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    reader = CtEventReader(sock=b, fast=FAST)
    fd = b.fileno()
    reader.close()
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)     # c: the lowest free number, b's
    with a, c, d:
        d.send(UDP_NEW)
        with pytest.raises(OSError):
            reader.read_burst()
        assert c.fileno() == fd and c.recv(65536) == UDP_NEW         # still there for its owner
