"""BrowserEnv's URL rules in a real headless Chromium against local pages: a refused popup,
redirect hop, navigation or sub-resource is never requested and raises `BlockedURL` where the
agent sees it; `execute` waits for the navigation its click started; our resolver rules come
first. (Every request class and address spelling, through the proxy: test_request_filter.py.)
"""

import time

import pytest
from _browser_utils import POPUPS, box_of, server  # noqa: F401
from _web_utils import local_server, resolve_to_local  # noqa: F401

from agent.actions import Click, Navigate
from agent.browser import BrowserEnv
from agent.domains import BlockedURL, DomainRules

pytestmark = pytest.mark.browser

OTHER = "blocked.test"  # a second domain served by the same local server
RESOLVE = resolve_to_local(OTHER)


def execute_until_blocked(env, action, timeout_s=10.0):
    """The env raises a refused navigation from `execute`, or from the next `observe` when it
    started after the action settled (a popup on a loaded machine): allow for both."""
    env.execute(action, env.observe())
    deadline = time.monotonic() + timeout_s
    while not env.blocked and time.monotonic() < deadline:
        env.page.wait_for_timeout(50)
    env.observe()


def test_popup_to_a_blocked_domain_is_not_requested(server):
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE) as env:
        env.goto(server.add("/popups", POPUPS))
        before = len(server.requests)
        with pytest.raises(BlockedURL, match=OTHER):
            execute_until_blocked(env, Click(box_of(env, "#bad")))
        assert not any(host.startswith(OTHER) for host, _ in server.requests[before:])
        assert any(OTHER in b.url for b in env.blocked)


def test_redirect_to_a_blocked_domain_is_stopped(local_server):
    s = local_server
    s.add("/final", "<title>final</title>")
    s.add("/redirect", status=302, headers={"Location": s.url("/final", host=OTHER)})
    s.add("/twice", status=302, headers={"Location": "/redirect"})
    s.add("/start", '<a id=go href="/twice" style="display:block;width:200px;height:40px">go</a>')
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE) as env:
        env.goto(s.url("/start"))
        with pytest.raises(BlockedURL, match=OTHER) as info:  # blocked at the second hop
            execute_until_blocked(env, Click(box_of(env, "#go")))
        assert info.value.url == s.url("/final", host=OTHER)
        assert "/final" not in env.page.url
        with pytest.raises(BlockedURL):
            env.goto(s.url("/redirect"))
    assert (f"{OTHER}:{s.port}", "/final") not in s.requests  # never sent
    with BrowserEnv((800, 600), launch_args=RESOLVE) as env:  # control: followed without the rule
        env.goto(s.url("/twice"))
        assert env.observe().title == "final"
    assert (f"{OTHER}:{s.port}", "/final") in s.requests


def test_execute_waits_for_the_navigation_its_click_started_with_no_settle_time(local_server):
    # a followed link reaches the network milliseconds after the click returns (seconds on a
    # busy machine): with settle_ms=0 only the env's wait for the requested navigation sees it
    s = local_server
    s.add("/next", "<title>next</title>next")
    s.add("/away", status=302, headers={"Location": s.url("/final", host=OTHER)})
    links = "".join(f'<a id={name} href="{href}" style="display:block;width:200px;height:40px">{name}</a>'
                    for name, href in [("next", "/next"), ("away", "/away"), ("hash", "#part")])
    s.add("/links", f"<title>links</title>{links}")
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE, settle_ms=0) as env:
        for _ in range(5):
            env.goto(s.url("/links"))
            env.execute(Click(box_of(env, "#next")), env.observe())
            assert env.observe().title == "next"
            env.goto(s.url("/links"))
            with pytest.raises(BlockedURL, match=OTHER):  # from execute itself, not a later call
                env.execute(Click(box_of(env, "#away")), env.observe())
            env.goto(s.url("/links"))
            env.execute(Click(box_of(env, "#hash")), env.observe())  # same document: nothing to wait for
            assert env.observe().url == s.url("/links#part")
    assert (f"{OTHER}:{s.port}", "/final") not in s.requests


def test_allowed_domains_refuse_navigation_elsewhere_before_any_request(local_server):
    s = local_server
    s.add("/page", "<title>ok</title>")
    with BrowserEnv((800, 600), rules=DomainRules(allowed_domains=["127.0.0.1"]), launch_args=RESOLVE) as env:
        env.goto(s.url("/page"))
        for url in [s.url("/page", host=OTHER), "file:///etc/passwd", "data:text/html,hi", "chrome://version"]:
            with pytest.raises(BlockedURL):
                env.execute(Navigate(url), env.observe())
        assert env.observe().title == "ok"
    assert (f"{OTHER}:{s.port}", "/page") not in s.requests


def test_sub_resources_from_a_blocked_domain_are_not_requested(local_server):
    s = local_server
    s.add("/pixel.png", b"\x89PNG\r\n\x1a\n", headers={"Content-Type": "image/png"})
    s.add("/script.js", "window.loaded = true", headers={"Content-Type": "text/javascript"})
    s.add("/hop.js", status=302, headers={"Location": s.url("/script.js?hop", host=OTHER)})
    s.add("/page", "<title>frame</title>")
    s.add("/with-resources", f'<img src="{s.url("/pixel.png", host=OTHER)}">'
                             f'<script src="{s.url("/script.js", host=OTHER)}"></script>'
                             f'<script src="/hop.js"></script>'
                             f'<iframe src="{s.url("/page", host=OTHER)}"></iframe>')
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE) as env:
        env.goto(s.url("/with-resources"))
        env.page.wait_for_load_state("load")
        assert env.page.evaluate("window.loaded === undefined")
        assert {b.url.split(str(s.port))[1] for b in env.blocked} == {"/pixel.png", "/script.js", "/script.js?hop", "/page"}
    assert [p for h, p in s.requests if h.startswith(OTHER)] == []
    with BrowserEnv((800, 600), launch_args=RESOLVE) as env:  # control: loaded when allowed
        env.goto(s.url("/with-resources"))
        env.page.wait_for_load_state("load")
        assert env.page.evaluate("window.loaded === true")
    assert {p for h, p in s.requests if h.startswith(OTHER)} == {"/pixel.png", "/script.js", "/script.js?hop", "/page"}


def test_resolver_rules_put_ours_first():
    from agent.request_filter import with_resolver_rules
    args = with_resolver_rules(("--foo", "--host-resolver-rules=MAP a.test 127.0.0.1"),
                               DomainRules(allowed_domains=["ok.com", "10.0.0.1"], blocked_domains=["bad.ok.com"]))
    assert args == ("--foo", "--host-resolver-rules=MAP bad.ok.com ~NOTFOUND, MAP *.bad.ok.com ~NOTFOUND, "
                    "EXCLUDE ok.com, EXCLUDE *.ok.com, EXCLUDE 10.0.0.1, MAP * ~NOTFOUND, MAP a.test 127.0.0.1")
