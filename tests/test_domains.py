"""URL policy: the default scheme rules, domain and subdomain matching, ports, precedence."""

import re

import pytest

from agent.domains import BlockedURL, DomainRules


@pytest.mark.parametrize("url", [
    "http://example.com/", "https://sub.example.org/path?q=1#x", "wss://socket.example.com/ws",
    "about:blank", "https://127.0.0.1:8443/", "blob:https://example.com/3f1c-uuid",
])
def test_default_allows_network_urls(url):
    assert DomainRules().allows(url)
    DomainRules().check(url)


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "data:text/html,<script>alert(1)</script>", "javascript:alert(1)",
    "chrome://settings", "about:config", "about:srcdoc", "view-source:https://example.com/",
    "chrome-extension://abc/page.html", "devtools://devtools/bundled/inspector.html",
    "ftp://example.com/file", "example.com", "", "blob:null/1234", "http:///nohost",
])
def test_default_refuses_local_and_internal_urls(url):
    rules = DomainRules()
    assert not rules.allows(url)
    with pytest.raises(BlockedURL) as info:
        rules.check(url)
    assert info.value.url == url and repr(url) in str(info.value)


def test_subdomains_match_their_domain_but_lookalikes_do_not():
    rules = DomainRules(allowed_domains=["example.com"])
    assert rules.allows("https://example.com/")
    assert rules.allows("https://deep.www.EXAMPLE.com./x")
    assert not rules.allows("https://badexample.com/")
    assert not rules.allows("https://example.com.evil.net/")
    # userinfo is not the host: this URL goes to evil.net
    assert not rules.allows("https://example.com@evil.net/")


def test_wildcard_and_dot_prefixes_mean_the_same_as_the_bare_domain():
    for rule in ("*.example.com", ".example.com", "example.com"):
        rules = DomainRules(blocked_domains=[rule])
        assert not rules.allows("http://example.com/") and not rules.allows("http://a.example.com/")
        assert rules.allows("http://example.co/")


def test_blocked_wins_over_allowed_and_the_error_names_the_rule():
    rules = DomainRules(allowed_domains=["example.com"], blocked_domains=["ads.example.com"])
    assert rules.allows("https://www.example.com/")
    with pytest.raises(BlockedURL, match=r"ads\.example\.com"):
        rules.check("https://x.ads.example.com/banner.js")
    with pytest.raises(BlockedURL, match=r"not in allowed domains \[example\.com\]"):
        rules.check("https://other.org/")


def test_empty_allow_list_allows_no_domain_but_about_blank():
    rules = DomainRules(allowed_domains=[])
    assert not rules.allows("https://example.com/")
    assert rules.allows("about:blank")


def test_ports_and_ip_addresses():
    rules = DomainRules(allowed_domains=["127.0.0.1:8000"])
    assert rules.allows("http://127.0.0.1:8000/a")
    assert not rules.allows("http://127.0.0.1:8001/a")
    assert not rules.allows("http://localhost:8000/a")  # a different host name, even if it resolves here
    assert DomainRules(allowed_domains=["example.com:443"]).allows("https://example.com/")
    # IPs match exactly, never as a "subdomain"
    assert DomainRules(blocked_domains=["0.0.1"]).allows("http://127.0.0.1/")
    assert not DomainRules(blocked_domains=["[::1]"]).allows("http://[::1]:9000/")


def test_unicode_rules_match_punycode_hosts():
    rules = DomainRules(blocked_domains=["bücher.example"])
    assert not rules.allows("https://xn--bcher-kva.example/")
    assert not rules.allows("https://www.bücher.example/")


@pytest.mark.parametrize("rule", ["https://example.com", "example.com/path", "", "*", "example.com:99999"])
def test_bad_rules_are_refused_with_the_rule_named(rule):
    with pytest.raises(ValueError, match="domain rule"):
        DomainRules(blocked_domains=[rule])


def test_a_single_string_is_not_taken_as_a_list_of_characters():
    with pytest.raises(TypeError):
        DomainRules(allowed_domains="example.com")


# every spelling of 127.0.0.2 a browser accepts (WHATWG host parser), and of IPv6 ::1
SPELLINGS_OF_127_0_0_2 = [
    "127.0.0.2", "2130706434", "0x7f000002", "0X7F000002", "017700000002", "0177.0.0.2", "0x7f.0.0.2",
    "0x7f.0x0.0x0.0x2", "0177.0.0.02", "127.2", "127.0.2", "0x7f.2", "0177.2", "127.0.0.2.", "127.0.0.%32",
    "%31%32%37.0.0.2", "１２７.０.０.２", "127。0。0。2", "[::ffff:127.0.0.2]", "[::ffff:7f00:2]",
    "[0:0:0:0:0:ffff:7f00:2]", "[::FFFF:7F00:0002]", "[0000:0000:0000:0000:0000:ffff:127.0.0.2]",
]
SPELLINGS_OF_LOOPBACK_V6 = ["[::1]", "[0:0:0:0:0:0:0:1]", "[0000::0001]", "[::0:1]", "[0::1]"]


@pytest.mark.parametrize("host", SPELLINGS_OF_127_0_0_2)
@pytest.mark.parametrize("rule", ["127.0.0.2", "2130706434", "[::ffff:127.0.0.2]", "0x7f.2"])
def test_every_spelling_of_a_blocked_address_is_blocked(rule, host):
    rules = DomainRules(blocked_domains=[rule])
    with pytest.raises(BlockedURL, match="blocked domain 127.0.0.2"):
        rules.check(f"http://{host}:8000/x")
    assert not rules.allows(f"ws://{host}/socket")
    assert rules.allows("http://127.0.0.3:8000/x")
    # the same address is one host for an allow-list too
    assert DomainRules(allowed_domains=[rule]).allows(f"https://{host}/")


@pytest.mark.parametrize("host", SPELLINGS_OF_LOOPBACK_V6)
def test_every_spelling_of_an_ipv6_address_is_one_host(host):
    assert not DomainRules(blocked_domains=["::1"]).allows(f"http://{host}:9000/")
    assert not DomainRules(blocked_domains=["[0::01]:9000"]).allows(f"http://{host}:9000/")
    assert DomainRules(blocked_domains=["[0::01]:9000"]).allows(f"http://{host}:9001/")
    assert DomainRules(allowed_domains=["[::1]"]).allows(f"http://{host}/")


@pytest.mark.parametrize("host", [
    "0.0.0.0", "0", "[::]", "[::127.0.0.1]", "[64:ff9b::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]"])
def test_addresses_that_reach_a_blocked_address_are_blocked_too(host):
    with pytest.raises(BlockedURL, match="matches blocked domain 127.0.0.1"):
        DomainRules(blocked_domains=["127.0.0.1"]).check(f"http://{host}/")
    # an allow-list names addresses exactly: an alias is not the allowed address
    assert not DomainRules(allowed_domains=["127.0.0.1"]).allows(f"http://{host}/")


@pytest.mark.parametrize("url", [
    "http://1.2.3.4.5/", "http://0x7f.1.2.3.4/", "http://08.0.0.1/", "http://256.256.256.256/",
    "http://1.16777216/", "http://4294967296/", "http://[::ffff:127.0.0.1:80/", "http://[fe80::1%25eth0]/",
    "http://example.0x7f/", "http://example.123/",
])
def test_hosts_a_browser_would_refuse_are_refused_by_name(url):
    with pytest.raises(BlockedURL, match="unparsable"):
        DomainRules().check(url)


def test_ip_rules_in_any_spelling_are_shown_canonically_and_bad_ones_named():
    assert repr(DomainRules(blocked_domains=["0x7f.1:80", "[::ffff:10.0.0.1]", "[0::1]"])) == (
        "DomainRules(allowed_domains=None, blocked_domains=['127.0.0.1:80', '10.0.0.1', '[::1]'])")
    for rule in ["1.2.3.4.5", "[::g]", "[::1]:0"]:
        with pytest.raises(ValueError, match=rf"domain rule '{re.escape(rule)}'"):
            DomainRules(blocked_domains=[rule])
