"""The relay's header rules that are not actions: hop by hop, framing, forwarding."""

from __future__ import annotations

from meshd.relay.httpheaders import (append_header, authority, content_length, end_to_end,
                                     forwarded_element, framed_as, has_chunked_body, head_bytes)


def test_end_to_end_drops_hop_by_hop_and_what_connection_names():
    raw = [(b"Host", b"a"), (b"Connection", b"keep-alive, X-Hop ,x-other"), (b"X-Hop", b"1"),
           (b"x-other", b"2"), (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Upgrade", b"h2c"),
           (b"Proxy-Connection", b"x"), (b"Trailer", b"X"), (b"Expect", b"100-continue"),
           (b"Content-Length", b"3"), (b"X-End", b"e")]
    assert end_to_end(raw) == ((b"Host", b"a"), (b"Content-Length", b"3"), (b"X-End", b"e"))


def test_framing_is_the_parsed_one_whatever_the_actions_left():
    after_actions = [(b"X-A", b"1"), (b"Content-Length", b"999"), (b"transfer-encoding", b"chunked")]
    parsed = [(b"host", b"h"), (b"content-length", b"5")]
    assert framed_as(after_actions, parsed) == [(b"X-A", b"1"), (b"content-length", b"5")]
    assert framed_as([], [(b"transfer-encoding", b"chunked")]) == [(b"transfer-encoding", b"chunked")]


def test_lengths():
    parsed = [(b"content-length", b"12"), (b"host", b"h")]
    assert content_length(parsed) == 12 and not has_chunked_body(parsed)
    assert content_length([(b"transfer-encoding", b"chunked")]) is None
    assert has_chunked_body([(b"transfer-encoding", b"chunked")])
    assert head_bytes(b"/x", [(b"a", b"bc")]) == 2 + 1 + 2 + 4


def test_append_header_extends_the_last_occurrence_without_case():
    headers = [(b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2")]
    append_header(headers, b"X-Forwarded-For", b"192.0.2.7")
    assert headers == [(b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2, 192.0.2.7")]
    headers = []
    append_header(headers, b"Forwarded", b"for=1.2.3.4")
    assert headers == [(b"Forwarded", b"for=1.2.3.4")]


def test_forwarded_element_quotes_ipv6_and_names_the_scheme():
    assert forwarded_element("192.0.2.7", "198.51.100.1", False) == "for=192.0.2.7;by=198.51.100.1;proto=http"
    assert forwarded_element("2001:db8::7", "2001:db8::1", True) == \
        'for="[2001:db8::7]";by="[2001:db8::1]";proto=https'
    assert forwarded_element("unix", "198.51.100.1", True).startswith('for="unix";')


def test_authority():
    assert authority("10.0.0.1", 8080) == "10.0.0.1:8080"
    assert authority("2001:db8::1", 80) == "[2001:db8::1]:80"
