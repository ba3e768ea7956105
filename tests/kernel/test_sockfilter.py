"""The source-address socket filter on real sockets (loopback, no root).

The kernel runs the program: a datagram from a source not admitted is
dropped before it is queued, one that is admitted arrives, and the random
sample lets through about one in 2**shift of the rest."""

from __future__ import annotations

import socket

import pytest

from meshd.kernel import sockfilter
from meshd.kernel.sockfilter import FilterError, source_filter


def _pair(family: int, receiver_addr: str):
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    rx = socket.socket(af, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    rx.bind((receiver_addr, 0))
    rx.setblocking(False)
    return rx, rx.getsockname()[:2]


def _sender(family: int, source: str):
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s = socket.socket(af, socket.SOCK_DGRAM)
    s.bind((source, 0))
    return s


def _drain(rx) -> list[tuple[bytes, str]]:
    got = []
    while True:
        try:
            data, addr = rx.recvfrom(2048)
        except BlockingIOError:
            return got
        got.append((data, addr[0]))


def test_only_admitted_sources_arrive_ipv4():
    rx, dst = _pair(4, "127.0.0.1")
    known, other = _sender(4, "127.0.0.2"), _sender(4, "127.0.0.3")
    try:
        sockfilter.attach(rx, source_filter(4, ["127.0.0.9", "127.0.0.2"], None))
        for i in range(50):
            other.sendto(b"forged %d" % i, dst)
        for i in range(5):
            known.sendto(b"advert %d" % i, dst)
        assert _drain(rx) == [(b"advert %d" % i, "127.0.0.2") for i in range(5)]
        # Removed: everything arrives again.
        sockfilter.detach(rx)
        sockfilter.detach(rx)                 # none attached: no error
        other.sendto(b"after", dst)
        assert _drain(rx) == [(b"after", "127.0.0.3")]
    finally:
        for s in (rx, known, other):
            s.close()


def test_no_admitted_source_and_no_sample_drops_everything():
    rx, dst = _pair(4, "127.0.0.1")
    tx = _sender(4, "127.0.0.2")
    try:
        sockfilter.attach(rx, source_filter(4, [], None))
        tx.sendto(b"x", dst)
        assert _drain(rx) == []
        sockfilter.attach(rx, source_filter(4, [], 0))      # shift 0: every datagram
        tx.sendto(b"y", dst)
        assert _drain(rx) == [(b"y", "127.0.0.2")]
    finally:
        rx.close()
        tx.close()


def test_the_sample_admits_about_one_in_two_to_the_shift():
    rx, dst = _pair(4, "127.0.0.1")
    tx = _sender(4, "127.0.0.3")
    try:
        sockfilter.attach(rx, source_filter(4, ["127.0.0.2"], 3))
        got = 0
        for i in range(4000):
            tx.sendto(b"f", dst)
            if i % 500 == 499:
                got += len(_drain(rx))
        got += len(_drain(rx))
        assert 350 <= got <= 650, got          # 500 expected; 4000 draws, sigma ~21
    finally:
        rx.close()
        tx.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_sources_compare_all_four_words():
    rx, dst = _pair(6, "::1")
    tx = _sender(6, "::1")
    try:
        # Differs from ::1 only in the first word, then only in the last.
        sockfilter.attach(rx, source_filter(6, ["1::1", "::2"], None))
        tx.sendto(b"no", dst)
        assert _drain(rx) == []
        sockfilter.attach(rx, source_filter(6, ["1::1", "::2", "::1"], None))
        tx.sendto(b"yes", dst)
        assert _drain(rx) == [(b"yes", "::1")]
    finally:
        rx.close()
        tx.close()


def test_what_cannot_be_built_is_an_error():
    with pytest.raises(FilterError, match="not an IPv4 address"):
        source_filter(4, ["::1"], None)
    with pytest.raises(FilterError, match="sample_shift"):
        source_filter(4, [], 40)
    with pytest.raises(FilterError, match="instructions"):
        source_filter(6, [f"2001:db8::{i:x}" for i in range(500)], None)
