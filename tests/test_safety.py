"""Sensitive-action detection, confirmation, and secrets as placeholders."""

import pytest
from _web_utils import LocalServer
from PIL import Image

from agent.actions import Click, Key, Mark, Navigate, Point, Scroll, Type
from agent.environment import ElementInfo, Observation
from agent.safety import Secrets, check, sensitivity


class DescribedEnv:
    """An environment whose `describe` answers from a fixed element; records what was asked."""

    def __init__(self, info=None, platform="web"):
        self.info, self.platform, self.asked = info, platform, []

    def describe(self, target, observation):
        self.asked.append(target)
        return self.info


def _obs(url="http://shop.test/", title="Shop"):
    return Observation(Image.new("RGB", (10, 10)), url=url, title=title)


PASSWORD = ElementInfo(tag="input", input_type="password")
PAY_BUTTON = ElementInfo(tag="button", text="Pay now")
PLAIN_BUTTON = ElementInfo(tag="button", text="Next")


@pytest.mark.parametrize("action, info, obs, expected", [
    (Type("hunter2", target=Point(1, 2)), PASSWORD, _obs(), "password field"),
    (Type("hunter2"), PASSWORD, _obs(), "password field"),  # focused element
    (Type("bob"), ElementInfo(tag="input", input_type="text"), _obs(), None),
    (Click(Point(1, 1)), PAY_BUTTON, _obs(), "'Pay now' on a page that looks like payment"),
    (Click(Point(1, 1)), PLAIN_BUTTON, _obs("http://shop.test/checkout", "Cart"), "page URL mentions 'checkout'"),
    (Click(Point(1, 1)), PLAIN_BUTTON, _obs("http://x.test/settings", "Delete your account"), "page title mentions 'Delete'"),
    (Click(Point(1, 1)), PLAIN_BUTTON, _obs(), None),
    (Click(Point(1, 1)), ElementInfo(tag="div", text="Pay"), _obs(), None),  # not something that submits
    (Click(Point(1, 1), button="right"), PAY_BUTTON, _obs(), None),
    (Key(("enter",)), ElementInfo(tag="input", input_type="text", form_action="http://bank.test/transfer"), _obs(),
     "form action mentions 'transfer'"),
    (Type("1234", target=Mark(3), clear=True, press_enter=True), ElementInfo(tag="input", input_type="text"),
     _obs("http://x.test/payment"), "submitting on a page"),
    (Key(("alt", "f4")), None, _obs(), "closing a window"),
    (Key(("ctrl", "w")), None, _obs(), "closing a window"),
    (Key(("ctrl", "c")), None, _obs(), None),
    (Scroll("down"), PAY_BUTTON, _obs("http://x.test/checkout"), None),
])
def test_sensitivity(action, info, obs, expected):
    reason = sensitivity(action, obs, DescribedEnv(info))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_closing_a_desktop_window_by_its_button():
    action = Click(Point(990, 5), element_info="Close window button")
    assert "closing a window" in sensitivity(action, _obs(None, None), DescribedEnv(platform="desktop"))


def test_confirmation_callback_decides_and_no_callback_refuses():
    action, env = Type("x", target=Point(1, 1)), DescribedEnv(PASSWORD)
    refused = check(action, _obs(), env, confirm=None)
    assert refused is not None and refused.action == action and "password" in refused.reason
    asked = []
    assert check(action, _obs(), env, confirm=lambda s: asked.append(s) or True) is None
    assert asked[0].reason == refused.reason and asked[0].url == "http://shop.test/"
    assert check(action, _obs(), env, confirm=lambda s: False) is not None
    assert check(Type("x", target=Point(1, 1)), _obs(), DescribedEnv(PLAIN_BUTTON), confirm=None) is None


def test_secrets_are_revealed_only_in_the_executed_action_and_scrubbed_from_text():
    secrets = Secrets({"password": "hunter2", "pin": "42"})
    typed = Type("{{secret:password}}", target=Point(1, 1))
    assert secrets.reveal(typed) == Type("hunter2", target=Point(1, 1))
    assert typed.text == "{{secret:password}}"  # the recorded action keeps the placeholder
    assert secrets.reveal(Navigate("https://u:{{secret:pin}}@x.test/")).url == "https://u:42@x.test/"
    assert secrets.scrub("echo hunter2 and 42") == "echo {{secret:password}} and {{secret:pin}}"
    assert "hunter2" not in repr(secrets)
    echoed = Click(Point(1, 1), element_info="the hunter2 link")
    assert secrets.scrub_action(echoed) == Click(Point(1, 1), element_info="the {{secret:password}} link")
    with pytest.raises(ValueError, match="unknown secret 'token'"):
        secrets.reveal(Type("{{secret:token}}"))
    with pytest.raises(ValueError, match="secret name 'a b'"):
        Secrets({"a b": "x"})


@pytest.mark.browser
def test_password_field_detected_in_a_real_browser():
    from agent.browser import BrowserEnv
    with LocalServer() as server, BrowserEnv((400, 300)) as env:
        env.goto(server.add("/", '<style>input{position:absolute;left:0;top:0;width:400px;height:300px}</style>'
                                 '<input type=password id=p>'))
        obs = env.observe()
        assert sensitivity(Type("x", target=Point(500, 500)), obs, env) == "typing into a password field"
        env.page.fill("#p", "")  # focus it: a Type without target types into the focused element
        assert sensitivity(Type("x"), obs, env) == "typing into a password field"


SECRETS = ["hunter2 pa$$!", "s3cret&<>\"'/\\", "pässwörd€😀 x", "tok+en/=%41", "longer-secret-value-1234567890"]


def _encodings(value):
    import base64
    import re
    import html
    import json
    from urllib.parse import quote, quote_plus
    data = value.encode()
    forms = {
        quote_plus(value), quote(value, safe=""), quote(value), quote(value, safe="").lower(),
        quote(quote_plus(value), safe=""), html.escape(value), html.escape(value, quote=False),
        "".join(f"&#{ord(c)};" for c in value), "".join(f"&#x{ord(c):x}" for c in value),
        "".join(f"&#x{ord(c):X};" for c in value), json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=True)[1:-1],
        re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m.group(0)[2:].upper(), json.dumps(value)[1:-1]),
        "".join(f"\\x{ord(c):02x}" if ord(c) < 256 else c for c in value),
    }
    for prefix in (b"", b"a", b"ab", b"bob:"):  # each alignment inside a longer base64 string
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(prefix + data + b"tail").decode())
            forms.add(quote(encode(prefix + data).decode(), safe=""))
    return forms


@pytest.mark.parametrize("value", SECRETS)
def test_scrub_removes_every_common_encoding_of_a_secret(value):
    secrets = Secrets({"pw": value})
    for form in _encodings(value):
        for text in (form, f"before {form} after", f"x={form}&y=1"):
            scrubbed = secrets.scrub(text)
            assert "{{secret:pw}}" in scrubbed, (form, scrubbed)
            for other in _encodings(value) - {value}:
                assert other not in scrubbed or other in text.replace(form, ""), (form, other, scrubbed)


def test_scrub_leaves_other_text_and_placeholders_alone():
    secrets = Secrets({"pw": "hunter2 pa$$!", "pin": "42", "secret": "secret"})
    text = "page 1/42 of {{secret:pw}}: the secret word, Basic Ym9iOnB3"
    assert secrets.scrub(text) == "page 1/{{secret:pin}} of {{secret:pw}}: the {{secret:secret}} word, Basic Ym9iOnB3"
    assert secrets.scrub("hunter2 pa$$") == "hunter2 pa$$"  # a prefix is not the secret
    assert secrets.scrub("NDI=") == "NDI="  # base64 is searched only for secrets of 6 bytes and more
