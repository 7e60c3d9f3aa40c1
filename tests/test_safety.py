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
