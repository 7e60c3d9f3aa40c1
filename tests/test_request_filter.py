"""URL rules on every request and connection of a real Chromium, against real local servers.

The blocked host is a second loopback address, 127.0.0.2, with its own server: whatever reaches
it was sent. Each attempt is made from a page on the allowed host (127.0.0.1) in every class
the browser has (main frame, iframe, fetch, XHR, image, script, WebSocket, a worker's fetch and
WebSocket), directly and through a 302 from the allowed host, with the blocked address written
in its many spellings. A control run without the rule reaches the blocked server with the same
page, so the test would see a leak.
"""

import pytest
from _web_utils import LocalServer

from agent.actions import Box, Click
from agent.browser import BrowserEnv
from agent.domains import BlockedURL, DomainRules

pytestmark = pytest.mark.browser

SECRET = "SECRET-FROM-BLOCKED"
# how a page may write 127.0.0.2 (Chromium canonicalises all of them to one host)
SPELLINGS = ["127.0.0.2", "2130706434", "0x7f000002", "0177.0.0.2", "0x7f.2", "127.2", "127.0.0.%32",
             "[::ffff:127.0.0.2]", "[::ffff:7f00:2]", "[0:0:0:0:0:ffff:7f00:2]"]

# one page on the allowed host tries everything listed in `targets` and reports what it read
PROBE = """<!doctype html><title>probe</title><body><script>
const read = {};
function attempt(kind, url) {
  return new Promise(done => {
    const key = kind + ' ' + url;
    const finish = v => { if (!(key in read)) { read[key] = v; done(); } };
    setTimeout(() => finish('timeout'), 8000);
    if (kind === 'fetch') fetch(url).then(r => r.text()).then(finish, () => finish('error'));
    else if (kind === 'xhr') { const x = new XMLHttpRequest(); x.open('GET', url);
      x.onload = () => finish(x.responseText); x.onerror = () => finish('error'); x.send(); }
    else if (kind === 'img' || kind === 'script') { const e = document.createElement(kind); e.src = url;
      e.onload = () => finish('loaded'); e.onerror = () => finish('error'); document.body.append(e); }
    else if (kind === 'iframe') { const f = document.createElement('iframe'); f.src = url;
      f.onload = () => finish('loaded'); document.body.append(f); }
    else if (kind === 'ws') { const w = new WebSocket(url);
      w.onmessage = m => { finish(m.data); w.close(); }; w.onerror = () => finish('error'); }
    else if (kind.startsWith('worker')) { const w = new Worker('/worker.js');
      w.onmessage = m => finish(m.data); w.postMessage([kind.split('-')[1], url]); }
  });
}
window.probe = targets => Promise.all(targets.map(([k, u]) => attempt(k, u))).then(() => read);
</script>"""
WORKER = """onmessage = ({data: [kind, url]}) => {
  if (kind === 'fetch') fetch(url).then(r => r.text()).then(postMessage, () => postMessage('error'));
  else { const w = new WebSocket(url); w.onmessage = m => postMessage(m.data); w.onerror = () => postMessage('error'); }
};"""


@pytest.fixture(scope="module")
def servers():
    with LocalServer() as allowed, LocalServer("127.0.0.2") as blocked:
        blocked.add("/data", SECRET, headers={"Access-Control-Allow-Origin": "*", "Content-Type": "text/plain"})
        blocked.add("/page", f"<title>{SECRET}</title><body style='background:#f00'>{SECRET}")
        blocked.add("/pixel.png", b"\x89PNG\r\n\x1a\n", headers={"Content-Type": "image/png"})
        blocked.add("/script.js", "window.leaked = true", headers={"Content-Type": "text/javascript"})
        blocked.add_websocket("/ws", SECRET)
        allowed.add("/probe", PROBE)
        allowed.add("/worker.js", WORKER, headers={"Content-Type": "text/javascript"})
        for i, host in enumerate(SPELLINGS):
            for path in ("data", "page", "pixel.png", "script.js"):
                allowed.add(f"/hop/{i}/{path}", status=302, headers={"Location": f"http://{host}:{blocked.port}/{path}"})
        yield allowed, blocked


def targets(allowed, blocked):
    """Per spelling, (kind, url) for every class of attempt, direct and through a redirect."""
    found = []
    for i, host in enumerate(SPELLINGS):
        direct = f"http://{host}:{blocked.port}"
        hop = allowed.url(f"/hop/{i}")
        found.append([("fetch", f"{direct}/data"), ("fetch", f"{hop}/data"), ("xhr", f"{hop}/data"),
                  ("img", f"{hop}/pixel.png"), ("script", f"{hop}/script.js"), ("iframe", f"{hop}/page"),
                  ("iframe", f"{direct}/page"), ("ws", f"ws://{host}:{blocked.port}/ws"),
                  ("worker-fetch", f"{hop}/data"), ("worker-ws", f"ws://{host}:{blocked.port}/ws")])
    return found


def run_probe(env, allowed, blocked):
    env.goto(allowed.url("/probe"))
    read = {}
    for batch in targets(allowed, blocked):  # one spelling's attempts at a time
        read.update(env.page.evaluate("targets => probe(targets)", batch))
    frames = [frame.content() for frame in env.page.frames[1:]]
    return read, frames


@pytest.mark.slow  # 100 attempts: ~20 s here
def test_every_request_and_connection_to_a_blocked_address_is_refused_before_it_is_sent(servers):
    allowed, blocked = servers
    before = len(blocked.requests)
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=["127.0.0.2"])) as env:
        read, frames = run_probe(env, allowed, blocked)
        assert env.page.evaluate("window.leaked") is None
        recorded = list(env.blocked)
    assert blocked.requests[before:] == []  # nothing was sent to the blocked host
    assert {k: v for k, v in read.items() if SECRET in v} == {}  # the page read nothing from it
    assert not any(SECRET in frame for frame in frames)
    # every attempt is recorded with a URL: refused requests, redirect hops and WebSockets
    attempts = sum(len(batch) for batch in targets(allowed, blocked))
    assert len(recorded) == attempts, [b.url for b in recorded]
    assert all("127.0.0.2" in b.rule for b in recorded)


@pytest.mark.slow
def test_control_without_the_rule_the_same_page_reaches_the_blocked_server(servers):
    allowed, blocked = servers
    before = len(blocked.requests)
    with BrowserEnv((800, 600)) as env:
        read, frames = run_probe(env, allowed, blocked)
        assert env.page.evaluate("window.leaked") is True
    assert {k.split()[0] for k, v in read.items() if v == SECRET} == {"fetch", "xhr", "ws", "worker-fetch", "worker-ws"}
    assert sum(SECRET in frame for frame in frames) == 2 * len(SPELLINGS)
    assert len(blocked.requests) - before >= 8 * len(SPELLINGS)


@pytest.mark.parametrize("spelling", [0, 1, 7, 8])
def test_a_main_frame_redirect_to_a_blocked_address_raises_and_is_never_sent(servers, spelling):
    allowed, blocked = servers
    allowed.add("/start", f'<a id=go href="/hop/{spelling}/page" style="display:block;width:300px;height:60px">go</a>')
    before = len(blocked.requests)
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=["0x7f.0.0.2"])) as env:
        with pytest.raises(BlockedURL, match="127.0.0.2") as info:
            env.goto(allowed.url(f"/hop/{spelling}/page"))
        assert info.value.url.endswith(f":{blocked.port}/page")  # the hop, as Chromium spells it
        assert not DomainRules(blocked_domains=["127.0.0.2"]).allows(info.value.url)
        env.goto(allowed.url("/start"))
        with pytest.raises(BlockedURL, match="127.0.0.2"):  # the same hop after a click
            env.execute(Click(Box(0, 0, 300, 80)), env.observe())
        assert SECRET not in env.observe().title
        count = len(env.blocked)
        env.page.evaluate(f"location.href = 'http://{SPELLINGS[spelling]}:{blocked.port}/page'")
        for _ in range(200):  # a script's navigation between actions: raised by the next observe
            if len(env.blocked) > count:
                break
            env.page.wait_for_timeout(50)
        with pytest.raises(BlockedURL, match="127.0.0.2"):
            env.observe()
    assert blocked.requests[before:] == []


def test_a_name_that_resolves_to_a_blocked_address_is_refused(servers):
    allowed, blocked = servers
    before = len(blocked.requests)
    launch_args = ("--host-resolver-rules=MAP rebound.test 127.0.0.2",)
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=["127.0.0.2"]), launch_args=launch_args) as env:
        url = f"http://rebound.test:{blocked.port}/data"
        env.goto(allowed.url("/probe"))
        assert env.page.evaluate("targets => probe(targets)", [["fetch", url]]) == {f"fetch {url}": "error"}
        assert [b.url for b in env.refused_connections if "rebound" in b.url] == [f"rebound.test:{blocked.port}"]
        with pytest.raises(BlockedURL, match="resolves to 127.0.0.2") as info:
            env.goto(f"http://rebound.test:{blocked.port}/page")
        assert info.value.url == f"http://rebound.test:{blocked.port}/page"
    assert blocked.requests[before:] == []
