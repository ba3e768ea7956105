"""The HTTP relay's actions on plain values: every op on every entity, order,
variables, case, repeats, encodings, and malformed input that must not raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.relay.httpactions import (HttpRequest, HttpResponse, Verdict, apply_request,
                                     apply_response, canonical_path)
from meshd.relay.httpspec import REQUEST_OPS, HttpAction
from meshd.relay.interface import SessionVars

SESSION = SessionVars("192.0.2.7", 40123, "198.51.100.1", 80, 600.0)


def req(target: bytes = b"/", headers=((b"Host", b"www.example.com"),), method=b"GET") -> HttpRequest:
    return HttpRequest(method, target, tuple(headers))


def run(actions, request: HttpRequest):
    return apply_request(tuple(HttpAction(*a) for a in actions), request, SESSION)


def header(request: HttpRequest, name: bytes) -> list[bytes]:
    return [v for n, v in request.headers if n.lower() == name.lower()]


# --- headers ---------------------------------------------------------------

def test_header_append_creates_then_extends_the_last_occurrence():
    out = run([("header", "append", "X-Forwarded-For", "$REMOTE_ADDR")], req())
    assert header(out.request, b"X-Forwarded-For") == [b"192.0.2.7"]
    two = req(headers=[(b"x-forwarded-for", b"10.0.0.1"), (b"X-Forwarded-For", b"10.0.0.2")])
    out = run([("header", "append", "X-Forwarded-For", "$REMOTE_ADDR")], two)
    assert header(out.request, b"x-forwarded-for") == [b"10.0.0.1", b"10.0.0.2, 192.0.2.7"]


def test_header_change_replaces_every_occurrence_with_one_in_place():
    r = req(headers=[(b"A", b"1"), (b"keep-alive", b"x"), (b"B", b"2"), (b"Keep-Alive", b"y")])
    out = run([("header", "change", "Keep-Alive", "timeout=$TIMEOUT")], r)
    assert out.request.headers == ((b"A", b"1"), (b"keep-alive", b"timeout=600"), (b"B", b"2"))
    out = run([("header", "change", "X-New", "$SERVER_ADDR:$SERVER_PORT")], req())
    assert header(out.request, b"x-new") == [b"198.51.100.1:80"]


def test_header_remove_by_glob_without_case():
    r = req(headers=[(b"Host", b"h"), (b"X-Internal-A", b"1"), (b"x-internal-b", b"2"), (b"X-Other", b"3")])
    out = run([("header", "remove", "x-INTERNAL-*", None)], r)
    assert out.request.headers == ((b"Host", b"h"), (b"X-Other", b"3"))


def test_header_expect_refuses_403_unless_a_value_matches():
    assert run([("header", "expect", "host", "www.example.com")], req()).verdict is Verdict.PASS
    assert run([("header", "expect", "Host", "*.example.com")], req()).verdict is Verdict.PASS
    out = run([("header", "expect", "Host", "www.example.org")], req())
    assert (out.verdict, out.status) == (Verdict.REFUSE, 403)
    assert "expect" in out.reason and "Host" in out.reason
    # expect = true: the header has to be there, with any value
    assert run([("header", "expect", "Host", None)], req()).verdict is Verdict.PASS
    assert run([("header", "expect", "X-Token", None)], req()).verdict is Verdict.REFUSE


def test_header_expect_with_repeated_headers_takes_any_occurrence():
    r = req(headers=[(b"X-Role", b"user"), (b"X-Role", b"admin")])
    assert run([("header", "expect", "X-Role", "admin")], r).verdict is Verdict.PASS


def test_header_filter_closes_when_the_value_matches():
    r = req(headers=[(b"User-Agent", b"curl/8.0")])
    assert run([("header", "filter", "user-agent", "curl*")], r).verdict is Verdict.CLOSE
    assert run([("header", "filter", "User-Agent", "wget*")], r).verdict is Verdict.PASS
    assert run([("header", "filter", "User-Agent", None)], r).verdict is Verdict.CLOSE
    assert run([("header", "filter", "X-Absent", None)], r).verdict is Verdict.PASS


def test_header_hash_and_log():
    r = req(headers=[(b"Host", b"www.example.com"), (b"X-User", b"alice")])
    out = run([("header", "hash", "x-user", None), ("header", "log", "*", None)], r)
    assert out.hash_key == b"alice"
    assert out.logs == ("request header Host: www.example.com", "request header X-User: alice")


def test_log_value_is_bounded():
    r = req(headers=[(b"X-Long", b"a" * 5000)])
    (line,) = run([("header", "log", "X-Long", None)], r).logs
    assert len(line) < 400 and line.endswith("...")


def test_written_values_cannot_split_a_header():
    session = SessionVars("192.0.2.7\r\nX-Evil: 1", 1, "s", 2, 1.0)
    out = apply_request((HttpAction("header", "change", "X-A", "$REMOTE_ADDR"),), req(), session)
    assert header(out.request, b"x-a") == [b"192.0.2.7X-Evil: 1"]


def test_header_value_not_utf8_is_matched_as_latin1():
    r = req(headers=[(b"X-Name", b"caf\xe9")])
    assert run([("header", "expect", "X-Name", "caf\u00e9")], r).verdict is Verdict.PASS


# --- cookies ---------------------------------------------------------------

COOKIES = [(b"Host", b"h"), (b"Cookie", b"a=1; SID=abc123;theme=dark")]


def test_cookie_hash_feeds_the_value_of_one_pair_among_several():
    out = run([("cookie", "hash", "SID", None)], req(headers=COOKIES))
    assert out.hash_key == b"abc123"
    assert run([("cookie", "hash", "NONE", None)], req(headers=COOKIES)).hash_key is None


def test_cookie_change_append_remove_rewrite_one_header():
    out = run([("cookie", "change", "theme", "light")], req(headers=COOKIES))
    assert header(out.request, b"cookie") == [b"a=1; SID=abc123; theme=light"]
    out = run([("cookie", "append", "via", "$SERVER_PORT")], req(headers=COOKIES))
    assert header(out.request, b"cookie") == [b"a=1; SID=abc123; theme=dark; via=80"]
    out = run([("cookie", "remove", "SID", None)], req(headers=COOKIES))
    assert header(out.request, b"cookie") == [b"a=1; theme=dark"]
    out = run([("cookie", "remove", "*", None)], req(headers=COOKIES))
    assert header(out.request, b"cookie") == []
    out = run([("cookie", "change", "new", "1")], req())
    assert header(out.request, b"cookie") == [b"new=1"]


def test_cookie_headers_repeated_are_merged_when_written():
    r = req(headers=[(b"Cookie", b"a=1"), (b"X", b"y"), (b"cookie", b"b=2")])
    assert run([("cookie", "hash", "b", None)], r).hash_key == b"2"
    out = run([("cookie", "remove", "a", None)], r)
    assert out.request.headers == ((b"Cookie", b"b=2"), (b"X", b"y"))


def test_cookie_expect_filter_log():
    r = req(headers=COOKIES)
    assert run([("cookie", "expect", "SID", "abc*")], r).verdict is Verdict.PASS
    assert run([("cookie", "expect", "SID", "zzz*")], r).verdict is Verdict.REFUSE
    assert run([("cookie", "filter", "theme", "dark")], r).verdict is Verdict.CLOSE
    assert run([("cookie", "log", "SID", None)], r).logs == ("request cookie SID: abc123",)


def test_cookie_names_are_case_sensitive():
    assert run([("cookie", "hash", "sid", None)], req(headers=COOKIES)).hash_key is None


def test_malformed_cookie_header_never_raises_and_keeps_its_pieces():
    r = req(headers=[(b"Cookie", b"garbage;; =x; SID=1; ;novalue; \xff\xfe=\x00")])
    out = run([("cookie", "hash", "SID", None), ("cookie", "log", "*", None),
               ("cookie", "expect", "novalue", None)], r)
    assert out.verdict is Verdict.PASS and out.hash_key == b"1"
    out = run([("cookie", "remove", "SID", None)], r)
    assert b"garbage" in header(out.request, b"cookie")[0]
    assert b"novalue" in header(out.request, b"cookie")[0]
    assert b"SID" not in header(out.request, b"cookie")[0]


# --- query -----------------------------------------------------------------

def test_query_matched_decoded():
    r = req(b"/search?q=caf%C3%A9+au+lait&lang=fr&empty&k%3Dx=v%26w")
    assert run([("query", "hash", "q", None)], r).hash_key == "café au lait".encode()
    assert run([("query", "expect", "k=x", "v&w")], r).verdict is Verdict.PASS
    assert run([("query", "filter", "empty", None)], r).verdict is Verdict.CLOSE
    assert run([("query", "log", "lang", None)], r).logs == ("request query lang: fr",)


def test_query_change_append_remove_keep_the_other_pairs_as_they_were():
    r = req(b"/p?a=1&b=%41&a=2&c")
    out = run([("query", "change", "a", "x y/$REMOTE_PORT")], r)
    assert out.request.target == b"/p?a=x%20y/40123&b=%41&c"
    out = run([("query", "append", "via", "relay&1")], r)
    assert out.request.target == b"/p?a=1&b=%41&a=2&c&via=relay%261"
    out = run([("query", "remove", "a", None)], r)
    assert out.request.target == b"/p?b=%41&c"
    out = run([("query", "remove", "*", None)], r)
    assert out.request.target == b"/p"
    out = run([("query", "append", "x", "1")], req(b"/nothing"))
    assert out.request.target == b"/nothing?x=1"


def test_bad_percent_escapes_never_raise():
    r = req(b"/%zz%?q=%G1%&%=%%")
    out = run([("query", "log", "*", None), ("path", "log", "*", None), ("query", "hash", "q", None)], r)
    assert out.verdict is Verdict.PASS and out.hash_key == b"%G1%"


# --- path and url -------------------------------------------------------------

@pytest.mark.parametrize("target", [b"/admin", b"/admin/users", b"/%61dmin/x", b"//admin",
                                    b"/x/../admin", b"/./admin?x=1", b"/a/b/../../admin/"])
def test_path_filter_cannot_be_walked_around(target):
    assert run([("path", "filter", "/admin*", None)], req(target)).verdict is Verdict.CLOSE


def test_path_filter_leaves_other_paths():
    assert run([("path", "filter", "/admin*", None)], req(b"/public/admin")).verdict is Verdict.PASS


def test_path_with_a_value_globs_the_query_as_relayd():
    r = req(b"/cgi-bin/index.cgi?cmd=rm%20-rf")
    assert run([("path", "filter", "/cgi-bin/index.cgi", "*cmd=rm*")], r).verdict is Verdict.CLOSE
    assert run([("path", "filter", "/cgi-bin/index.cgi", "*cmd=ls*")], r).verdict is Verdict.PASS


def test_path_expect_is_a_whitelist():
    assert run([("path", "expect", "/api/*", None)], req(b"/api/v1")).verdict is Verdict.PASS
    out = run([("path", "expect", "/api/*", None)], req(b"/etc/passwd"))
    assert (out.verdict, out.status) == (Verdict.REFUSE, 403)


def test_path_change_and_append_keep_the_query():
    out = run([("path", "change", "/old/*", "/new/page")], req(b"/old/page?x=1"))
    assert out.request.target == b"/new/page?x=1"
    out = run([("path", "append", "*", ".html")], req(b"/page?x=1"))
    assert out.request.target == b"/page.html?x=1"
    out = run([("path", "change", "/other", "/new")], req(b"/old?x=1"))
    assert out.request.target == b"/old?x=1"


def test_path_hash_and_log():
    out = run([("path", "hash", "*", None), ("path", "log", "/img/*", None)], req(b"/img/%7Ea.png?s=1"))
    assert out.hash_key == b"/img/~a.png"
    assert out.logs == ("request path /img/*: /img/~a.png?s=1",)


def test_url_is_host_and_path_host_without_case_or_port():
    r = req(b"/Private/x?k=v", headers=[(b"Host", b"WWW.Example.COM.:8080")])
    assert run([("url", "filter", "www.example.com/Private/*", None)], r).verdict is Verdict.CLOSE
    assert run([("url", "filter", "www.example.com/private/*", None)], r).verdict is Verdict.PASS
    assert run([("url", "filter", "*.example.com", "k=v")], r).verdict is Verdict.CLOSE
    out = run([("url", "hash", "*", None), ("url", "log", "*", None)], r)
    assert out.hash_key == b"www.example.com/Private/x"
    assert out.logs == ("request url *: www.example.com/Private/x?k=v",)


def test_url_of_an_absolute_form_target_and_ipv6_host():
    r = req(b"http://Backend.example:81/a?b", headers=[(b"Host", b"ignored")])
    assert run([("url", "expect", "backend.example/a", None)], r).verdict is Verdict.PASS
    out = run([("path", "append", "*", "x")], r)
    assert out.request.target == b"http://Backend.example:81/ax?b"
    r6 = req(b"/", headers=[(b"Host", b"[2001:DB8::1]:8443")])
    assert run([("url", "expect", "[[]2001:db8::1]/", None)], r6).verdict is Verdict.PASS


def test_url_without_a_host_header_is_the_path_alone():
    assert run([("url", "hash", "*", None)], req(b"/x", headers=())).hash_key == b"/x"


# --- order, verdicts, responses ------------------------------------------------

def test_actions_run_in_order_and_the_first_verdict_stops_them():
    r = req(b"/admin", headers=[(b"Host", b"h"), (b"Cookie", b"SID=9")])
    out = run([("cookie", "hash", "SID", None), ("header", "log", "Host", None),
               ("path", "filter", "/admin", None), ("header", "change", "X-After", "1")], r)
    assert out.verdict is Verdict.CLOSE
    assert out.hash_key == b"9" and out.logs == ("request header Host: h",)
    assert header(out.request, b"x-after") == []


def test_a_later_action_sees_what_an_earlier_one_wrote():
    out = run([("header", "change", "X-Tag", "a"), ("header", "expect", "X-Tag", "a")], req())
    assert out.verdict is Verdict.PASS
    out = run([("header", "remove", "Host", None), ("header", "expect", "Host", None)], req())
    assert out.verdict is Verdict.REFUSE


def test_hash_values_of_several_actions_are_joined():
    r = req(b"/p?u=7", headers=[(b"Cookie", b"SID=s")])
    assert run([("cookie", "hash", "SID", None), ("query", "hash", "u", None)], r).hash_key == b"s\x007"


def test_no_actions_pass_the_request_unchanged():
    r = req(b"/x?y")
    out = apply_request((), r, SESSION)
    assert out.verdict is Verdict.PASS and out.request is r and out.hash_key is None


def test_response_header_actions():
    resp = HttpResponse(200, ((b"Server", b"nginx/1.2"), (b"Content-Type", b"text/html"),
                              (b"X-Powered-By", b"PHP")))
    actions = (HttpAction("header", "remove", "Server"), HttpAction("header", "remove", "x-powered-*"),
               HttpAction("header", "change", "X-Relay", "$SERVER_ADDR"),
               HttpAction("header", "append", "Cache-Control", "no-store"),
               HttpAction("header", "log", "content-type"))
    out = apply_response(actions, resp, SESSION)
    assert out.verdict is Verdict.PASS
    assert out.response.headers == ((b"Content-Type", b"text/html"), (b"X-Relay", b"198.51.100.1"),
                                    (b"Cache-Control", b"no-store"))
    assert out.logs == ("response header Content-Type: text/html",)


def test_response_expect_refuses_502_and_filter_closes():
    resp = HttpResponse(200, ((b"Content-Type", b"text/html"),))
    out = apply_response((HttpAction("header", "expect", "Content-Type", "application/json"),), resp, SESSION)
    assert (out.verdict, out.status) == (Verdict.REFUSE, 502)
    out = apply_response((HttpAction("header", "filter", "Content-Type", "text/*"),), resp, SESSION)
    assert out.verdict is Verdict.CLOSE


def test_canonical_path():
    assert canonical_path("/a/./b//c/../d/") == "/a/b/d/"
    assert canonical_path("/../../x") == "/x"
    assert canonical_path("/%2e%2e/%2Fetc") == "/etc"
    assert canonical_path("/") == "/"


# --- anything a client sends --------------------------------------------------

_ACTION = st.builds(
    lambda entity, op, key, value: HttpAction(entity, op, key, value),
    st.sampled_from(list(REQUEST_OPS)), st.sampled_from(["append", "change", "remove", "expect",
                                                          "filter", "hash", "log"]),
    st.sampled_from(["*", "SID", "Host", "/a*", "[", "x=y", "*.example.com/*", "Cookie"]),
    st.one_of(st.none(), st.sampled_from(["v", "$REMOTE_ADDR", "*", "[!", "%zz", "a;b,c"])))
_BYTES = st.binary(max_size=40) | st.sampled_from([b"a=1; b", b";;=", b"%", b"%%2", b"\xff\xfe", b"a=b=c"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_ACTION, max_size=6), _BYTES,
       st.lists(st.tuples(st.sampled_from([b"Host", b"Cookie", b"cookie", b"X-A", b"\xff"]), _BYTES),
                max_size=5))
def test_no_input_makes_the_actions_raise(actions_, target, headers):
    actions_ = [a for a in actions_ if a.op in REQUEST_OPS[a.entity]]
    out = apply_request(actions_, HttpRequest(b"GET", b"/" + target, tuple(headers)), SESSION)
    assert out.verdict in Verdict
    for name, value in out.request.headers:     # what an action wrote cannot split a header
        assert (b"\r" not in value and b"\n" not in value) or (name, value) in headers
