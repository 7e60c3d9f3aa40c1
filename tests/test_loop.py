"""The agent loop end to end in a real headless Chromium, driven by a scripted policy that
answers in the released formats: goal reached, parse errors re-asked, loop detection, budgets,
domain rules, sensitive actions, secrets kept out of the recording."""

import base64
import html
import json
import time
from pathlib import Path

import pytest
from _web_utils import LocalServer

from agent.browser import BrowserEnv
from agent.domains import DomainRules
from agent.loop import Agent
from agent.policy import PolicyError, ScriptedPolicy

pytestmark = pytest.mark.browser

W, H = 800, 600
# Absolutely placed controls, so a model-space point is known: x_model = x_css * 1000 / W.
FORM = """<!doctype html><title>Sign in</title><style>body{margin:0} *{position:absolute;box-sizing:border-box}</style>
<form action="/welcome" method="get">
<input name="user" id="user" style="left:100px;top:100px;width:200px;height:40px">
<input name="pw" id="pw" type="password" style="left:100px;top:200px;width:200px;height:40px">
<button id="go" style="left:100px;top:300px;width:200px;height:40px">Next</button>
</form>
<div id="noop" style="left:500px;top:300px;width:200px;height:40px">Nothing</div>"""
WELCOME = "<!doctype html><title>Welcome</title><h1>Welcome</h1>"
USER_FIELD, PW_FIELD, NEXT, NOOP = "[250, 200]", "[250, 366]", "[250, 533]", "[750, 533]"


def desktop(call, reason="Acting."):
    return f"<think>Plan the step.</think>\n{reason}\n<|begin_of_box|>{call}<|end_of_box|>\nMemory:\n[]"


@pytest.fixture(scope="module")
def server():
    with LocalServer() as s:
        s.add("/", FORM)
        s.add("/welcome", WELCOME)
        yield s


@pytest.fixture(scope="module")
def env():
    with BrowserEnv((W, H)) as e:
        yield e


def test_desktop_format_reaches_the_goal(env, server):
    policy = ScriptedPolicy([
        desktop(f"left_click(start_box='{USER_FIELD}', element_info='user name')"),
        desktop("type(content='bob')"),
        desktop(f"left_click(start_box='{NEXT}', element_info='Next')"),
        lambda messages: desktop("DONE()") if "Welcome" in env.page.title() else desktop("FAIL()"),
    ])
    trajectory = Agent(policy=policy, env=env, platform="desktop").run("Sign in as bob", start_url=server.url("/"))
    assert trajectory.status == "done", trajectory.note
    assert [s.status for s in trajectory.steps] == ["executed", "executed", "executed", "terminal"]
    assert env.page.url.endswith("/welcome?user=bob&pw=")
    # the last prompt carries the history in one user message, actions in canonical form
    last = policy.calls[-1]
    assert len(last) == 1
    text = "".join(p["text"] for p in last[0]["content"] if p["type"] == "text")
    assert "Action: type(content='bob')" in text and "Sign in as bob" in text
    assert [p["type"] for p in last[0]["content"]][-1] == "image"
    assert trajectory.steps[0].reason == "Acting." and trajectory.steps[0].thinking == "Plan the step."


def test_web_format_with_set_of_marks_types_and_answers(server):
    def answer(messages):
        text = messages[0]["content"][0]["text"]
        assert '<input>' in text and '<button> "Next"' in text  # element list for note B
        return "Thought: the user field is label 0\nAction: Type [0]; [alice]\nMemory_Updated: {}"

    with BrowserEnv((W, H), set_of_marks=True) as web_env:
        policy = ScriptedPolicy([answer, "Thought: done\nAction: ANSWER; <content>Welcome alice</content>\nMemory_Updated: {}"])
        trajectory = Agent(policy=policy, env=web_env).run("Sign in as alice", start_url=server.url("/"))
        assert trajectory.status == "answered" and trajectory.answer == "Welcome alice"
        assert "user=alice" in web_env.page.url  # Type presses Enter, which submits the form


def test_mobile_format_taps_on_a_phone(server):
    with BrowserEnv(device="Pixel 7") as phone:
        # a phone page lays out at the device width; coordinates then map 1:1 to the screenshot
        page = FORM.split('<div id="noop"')[0]  # drop the wide control: nothing overflows the screen
        phone.goto(server.add("/phone", page.replace("<title>", '<meta name=viewport content="width=device-width"><title>')))
        width, height = phone.viewport
        box = phone.page.locator("#go").bounding_box()
        x1, y1 = int(box["x"] * 1000 / width) + 1, int(box["y"] * 1000 / height) + 1
        x2, y2 = int((box["x"] + box["width"]) * 1000 / width) - 1, int((box["y"] + box["height"]) * 1000 / height) - 1
        policy = ScriptedPolicy([
            f'Memory: none\nReason: tap Next\nAction: {{"action_type": "click", "box_2d": [[{x1},{y1},{x2},{y2}]]}}',
            'Memory: none\nReason: done\nAction: {"action_type": "status", "goal_status": "complete"}'])
        trajectory = Agent(policy=policy, env=phone, platform="mobile").run("Press Next")
        assert trajectory.status == "done"
        assert "/welcome" in phone.page.url


def test_each_step_is_reported_to_on_step_as_it_ends(env, server):
    reported, reported_when_asked = [], []

    def answer(call):
        def ask(messages):
            reported_when_asked.append(len(reported))
            return desktop(call)
        return ask

    policy = ScriptedPolicy([answer(f"left_click(start_box='{USER_FIELD}')"), answer("type(content='bob')"),
                             answer("DONE()")])
    trajectory = Agent(policy=policy, env=env, platform="desktop").run(
        "Sign in as bob", start_url=server.url("/"), on_step=reported.append)
    assert trajectory.status == "done", trajectory.note
    # once per step, with the step's own record
    assert len(reported) == 3 and all(r is s for r, s in zip(reported, trajectory.steps))
    assert reported_when_asked == [0, 1, 2]  # each step was reported before the next one began
    assert [s.status for s in reported] == ["executed", "executed", "terminal"]

    def stop(step):
        raise PolicyError("stopped by the user")
    trajectory = Agent(policy=ScriptedPolicy([answer(f"hover(start_box='{NOOP}')")] * 3), env=env,
                       platform="desktop").run("x", start_url=server.url("/"), on_step=stop)
    assert (trajectory.status, trajectory.note, len(trajectory.steps)) == ("error", "stopped by the user", 1)


def test_parse_errors_are_re_asked_with_the_error(env, server):
    policy = ScriptedPolicy(["I would click the button.", desktop("DONE()")])
    trajectory = Agent(policy=policy, env=env, platform="desktop").run("x", start_url=server.url("/"))
    assert trajectory.status == "done"
    assert trajectory.steps[0].parse_errors == ["no desktop action call found"]
    retry = policy.calls[1]
    assert retry[1] == {"role": "assistant", "content": "I would click the button."}
    assert "no desktop action call found" in retry[2]["content"][0]["text"]

    hopeless = ScriptedPolicy(["a", "b", "c"])
    trajectory = Agent(policy=hopeless, env=env, platform="desktop", parse_retries=2).run("x")
    assert trajectory.status == "parse_error" and len(hopeless.calls) == 3
    assert trajectory.steps[0].action is None and len(trajectory.steps[0].parse_errors) == 3


def test_same_action_on_an_unchanged_screen_is_a_loop(env, server):
    click_noop = desktop(f"left_click(start_box='{NOOP}')")
    policy = ScriptedPolicy([click_noop] * 5)
    trajectory = Agent(policy=policy, env=env, platform="desktop", loop_after=3).run("x", start_url=server.url("/"))
    assert trajectory.status == "loop"
    assert [s.status for s in trajectory.steps] == ["executed", "executed", "loop"]


def test_step_and_time_budgets(env, server):
    wait = desktop(f"hover(start_box='{NOOP}')")
    trajectory = Agent(policy=ScriptedPolicy([wait] * 5), env=env, platform="desktop", loop_after=10).run(
        "x", start_url=server.url("/"), max_steps=2)
    assert trajectory.status == "max_steps" and len(trajectory.steps) == 2

    def slow(messages):
        time.sleep(0.4)
        return wait
    started = time.monotonic()
    trajectory = Agent(policy=ScriptedPolicy([slow] * 10), env=env, platform="desktop", loop_after=10).run(
        "x", max_steps=10, timeout_s=0.6)
    # the budget is checked between steps: a step that starts in time finishes (0.4 s each here)
    assert trajectory.status == "timeout" and 2 <= len(trajectory.steps) <= 3
    assert time.monotonic() - started < 3


def test_redirect_to_a_blocked_domain_stops_the_run(server):
    server.add("/jump", '<a id=go href="/out" style="position:absolute;left:0;top:0;width:800px;height:600px">go</a>')
    server.add("/out", status=302, headers={"Location": server.url("/welcome", host="localhost")})
    with BrowserEnv((W, H), rules=DomainRules(blocked_domains=["localhost"])) as guarded:
        def think_a_while(messages):  # a real model takes seconds; by then the redirect was refused
            deadline = time.monotonic() + 5
            while not guarded.blocked and time.monotonic() < deadline:
                guarded.page.wait_for_timeout(20)
            return desktop("WAIT()")
        policy = ScriptedPolicy([desktop("left_click(start_box='[500, 500]')"), think_a_while, desktop("DONE()")])
        trajectory = Agent(policy=policy, env=guarded, platform="desktop").run("x", start_url=server.url("/jump"))
        assert trajectory.status == "blocked" and "localhost" in trajectory.note
        # the refusal surfaces during the click, or at the next observation: either way, no DONE
        assert [s.status for s in trajectory.steps] in (["blocked"], ["executed"], ["executed", "blocked"])
        assert ("localhost:%d" % server.port, "/welcome") not in server.requests


def test_navigate_outside_the_rules_is_refused_and_the_model_is_told(server):
    with BrowserEnv((W, H), rules=DomainRules(allowed_domains=["127.0.0.1"])) as guarded:
        policy = ScriptedPolicy(["Thought: search\nAction: Bing\nMemory_Updated: {}",
                                 "Thought: ok\nAction: ANSWER; <content>none</content>\nMemory_Updated: {}"])
        trajectory = Agent(policy=policy, env=guarded, platform="web").run("x", start_url=server.url("/"))
        assert trajectory.steps[0].status == "refused" and "bing.com" in trajectory.steps[0].note
        assert "Action: Bing" in policy.calls[1][0]["content"][0]["text"]
        assert "refused" in policy.calls[1][0]["content"][0]["text"]
        assert guarded.page.url == server.url("/")


def test_typing_into_a_password_field_needs_confirmation(env, server):
    steps = [desktop(f"left_click(start_box='{PW_FIELD}')"), desktop("type(content='s3cret')"), desktop("DONE()")]
    trajectory = Agent(policy=ScriptedPolicy(steps), env=env, platform="desktop").run("x", start_url=server.url("/"))
    assert trajectory.steps[1].status == "refused" and "password field" in trajectory.steps[1].note
    assert env.page.input_value("#pw") == ""

    asked = []
    agent = Agent(policy=ScriptedPolicy(steps), env=env, platform="desktop", confirm=lambda s: asked.append(s) or True)
    trajectory = agent.run("x", start_url=server.url("/"))
    assert trajectory.steps[1].status == "executed" and env.page.input_value("#pw") == "s3cret"
    assert asked and asked[0].reason == "typing into a password field"


def test_secrets_reach_the_page_but_not_the_recording(env, server, tmp_path):
    secret = "hunter2-Q7xZ"
    server.add("/echo", FORM.replace("<title>Sign in</title>", "<title>Sign in</title><script>"
               "addEventListener('input', e => document.title = 'typed ' + e.target.value)</script>"))
    policy = ScriptedPolicy([
        desktop(f"left_click(start_box='{USER_FIELD}')"),
        desktop("type(content='{{secret:token}}')", reason="I type the token from the task."),
        desktop(f"type(content='{secret}')", reason=f"The title shows {secret}."),  # read off the screen
        desktop("DONE()"),
    ])
    agent = Agent(policy=policy, env=env, platform="desktop", secrets={"token": secret}, record=str(tmp_path / "run"))
    trajectory = agent.run("Enter the token {{secret:token}}", start_url=server.url("/echo"))
    assert trajectory.status == "done"
    assert env.page.input_value("#user") == secret * 2  # substituted at execution; the echo typed as written
    assert secret not in "".join(str(p) for call in policy.calls for p in call)  # the model never saw it
    files = list(Path(tmp_path / "run").iterdir())
    assert {f.name for f in files} >= {"steps.jsonl", "trajectory.json", "report.html", "step_000.png"}
    for f in files:
        assert secret.encode() not in f.read_bytes(), f.name
    assert trajectory.steps[2].title == "typed {{secret:token}}"
    assert trajectory.steps[1].action.text == trajectory.steps[2].action.text == "{{secret:token}}"


def encodings_of(value):
    """The ways `value` travels in text: what a recording or prompt must not contain."""
    from urllib.parse import quote, quote_plus
    data = value.encode()
    return {
        "raw": value, "form": quote_plus(value), "percent": quote(value, safe=""), "path": quote(value),
        "percent lower-case": quote(value, safe="").lower(), "form twice": quote(quote_plus(value), safe=""),
        "html": html.escape(value), "html decimal": "".join(f"&#{ord(c)};" for c in value),
        "html hex": "".join(f"&#x{ord(c):X};" for c in value),
        "json": json.dumps(value)[1:-1], "json ascii": json.dumps(value, ensure_ascii=True)[1:-1],
        "json all escaped": "".join(f"\\u{ord(c):04x}" for c in value),
        "base64": base64.b64encode(data).decode(), "base64 in basic auth": base64.b64encode(b"bob:" + data).decode(),
        "base64 url-safe": base64.urlsafe_b64encode(b"xy" + data).decode(),
    }


def test_secrets_in_their_encodings_reach_neither_the_recording_nor_the_prompt(env, server, tmp_path):
    secret = "hunter2 pa$$!&<é"
    forms = encodings_of(secret)
    server.add("/form", FORM.replace('action="/welcome"', 'action="/shown"'))
    server.add("/shown", """<!doctype html><script>const v = new URLSearchParams(location.search).get('user');
document.title = 'auth ' + btoa(unescape(encodeURIComponent('bob:' + v)));</script>""")
    echo = "<think>I typed " + " / ".join(forms.values()) + "</think>\nDone.\n<|begin_of_box|>DONE()<|end_of_box|>\nMemory:\n[]"
    policy = ScriptedPolicy([
        desktop(f"left_click(start_box='{USER_FIELD}')"),
        desktop("type(content='{{secret:pw}}')"),
        desktop(f"left_click(start_box='{NEXT}')"),  # a GET form: the next URL carries it form-encoded
        desktop(f"hover(start_box='{NOOP}')", reason=f"The page says {forms['html']} and {forms['json ascii']}."),
        echo,
    ])
    agent = Agent(policy=policy, env=env, platform="desktop", secrets={"pw": secret}, record=str(tmp_path / "run"))
    trajectory = agent.run("Sign in with {{secret:pw}}", start_url=server.url("/form"))
    assert trajectory.status == "done"
    assert forms["form"] in env.page.url and forms["base64 in basic auth"] in env.page.title()  # the leaks exist
    assert "user={{secret:pw}}" in trajectory.steps[3].url and "{{secret:pw}}" in trajectory.steps[3].title
    written = {f.name: f.read_text(errors="replace") for f in Path(tmp_path / "run").iterdir() if f.suffix != ".png"}
    assert set(written) == {"steps.jsonl", "trajectory.json", "report.html"}
    prompts = json.dumps([[part.get("text", "") for m in call for part in (m["content"] if isinstance(m["content"], list)
                                                                          else [{"text": m["content"]}])]
                          for call in policy.calls])
    for where, text in {**written, "prompts": prompts}.items():
        for name, form in forms.items():
            assert form not in text, f"{name} form {form!r} of the secret is in {where}"
    assert "The page says {{secret:pw}} and {{secret:pw}}." in prompts  # its own echo, scrubbed in the history
