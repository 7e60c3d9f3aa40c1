"""Policies: OpenAIPolicy against a local server speaking the OpenAI chat API, the VLM adapter,
the scripted policy and the image-part conversions."""

from dataclasses import dataclass

import pytest
from _agent_utils import FakeOpenAI
from PIL import Image

from agent.policy import OpenAIPolicy, PolicyError, ScriptedPolicy, VLMPolicy, as_policy, to_data_urls, to_pil
from agent.prompts import build_messages


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


def _messages(images="pil"):
    return build_messages("web", "find it", Image.new("RGB", (64, 32), "blue"), url="http://x/", images=images)


def test_openai_policy_posts_the_chat_request_and_returns_the_text(server):
    policy = OpenAIPolicy(server.base_url, "glm-4.5v", api_key="sk-test")
    assert policy(_messages()) == server.reply
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "glm-4.5v" and body["skip_special_tokens"] is False
    content = body["messages"][0]["content"]
    image = next(p for p in content if p["type"] == "image_url")
    assert image["image_url"]["url"].startswith("data:image/png;base64,")  # PIL parts were encoded
    decoded = to_pil([{"role": "user", "content": [image]}])[0]["content"][0]["image"]
    assert decoded.size == (64, 32) and decoded.getpixel((0, 0)) == (0, 0, 255)
    assert "sk-test" not in repr(policy)


def test_openai_policy_without_key_sends_no_authorization(server):
    OpenAIPolicy(server.base_url + "/chat/completions", "m")(_messages("data_url"))
    assert server.requests[0][0] == "/v1/chat/completions"
    assert "Authorization" not in server.requests[0][1]


def test_openai_policy_errors_are_clear():
    failing = FakeOpenAI(status=404)
    try:
        with pytest.raises(PolicyError, match="HTTP 404.*model not found"):
            OpenAIPolicy(failing.base_url, "m")(_messages())
    finally:
        failing.close()
    with pytest.raises(PolicyError, match="could not reach"):
        OpenAIPolicy("http://127.0.0.1:9/v1", "m", timeout_s=2)(_messages())
    with pytest.raises(ValueError, match="not an http"):
        OpenAIPolicy("127.0.0.1:8000", "m")


def test_openai_policy_without_a_model_name_takes_the_servers_first():
    fake = FakeOpenAI(models=["glmv-default", "other"])
    try:
        policy = OpenAIPolicy(fake.base_url)
        policy(_messages())
        policy(_messages())
        assert [(path, body.get("model")) for path, _, body in fake.requests] == [
            ("/v1/models", None), ("/v1/chat/completions", "glmv-default"), ("/v1/chat/completions", "glmv-default")]
    finally:
        fake.close()


@pytest.mark.parametrize("message, fits", [
    ("prompt of 1721 tokens + max_new_tokens=2048 exceeds the model's 2048 positions", 327),  # this project's server
    ("max_tokens=2048 is outside [1, 1000] (this server's limit)", 1000),
    ("This model's maximum context length is 2048 tokens. However, you requested 3769 tokens (1721 in the messages, "
     "2048 in the completion). Please reduce the length of the messages or completion.", 327),  # vLLM
    ("'max_tokens' or 'max_completion_tokens' is too large: 2048. This model's maximum context length is 2048 tokens "
     "and your request has 1721 input tokens (2048 > 2048 - 1721).", 327),  # newer vLLM
    ("Requested token count exceeds the model's maximum context length of 2048 tokens. You requested a total of "
     "3769 tokens: 1721 tokens from the input messages and 2048 tokens for the completion.", 327),  # SGLang
])
def test_openai_policy_retries_once_with_the_limit_a_400_names(message, fits):
    fake = FakeOpenAI(errors=[(400, message)])
    try:
        assert OpenAIPolicy(fake.base_url, "m")(_messages()) == fake.reply
        assert [body["max_tokens"] for _, _, body in fake.requests] == [2048, fits]
    finally:
        fake.close()


def test_openai_policy_gives_up_on_a_400_that_names_no_limit_or_recurs():
    fake = FakeOpenAI(errors=[(400, "temperature=9 is outside [0.0, 2.0]")])
    try:
        with pytest.raises(PolicyError, match="HTTP 400: .*temperature=9"):
            OpenAIPolicy(fake.base_url, "m")(_messages())
        assert len(fake.requests) == 1
        fake.errors = [(400, "max_tokens=2048 is outside [1, 100] (this server's limit)")] * 2
        with pytest.raises(PolicyError, match=r"after retrying with max_tokens=100"):
            OpenAIPolicy(fake.base_url, "m")(_messages())
    finally:
        fake.close()
    with pytest.raises(ValueError, match="max_tokens=0"):
        OpenAIPolicy("http://127.0.0.1:8000/v1", max_tokens=0)


@dataclass
class _Generated:
    text: str


class FakeVLM:
    """Stands in for `VLM`: records what generate() received."""

    def __init__(self):
        self.seen = None

    def generate(self, messages, *, max_new_tokens, temperature, thinking):
        self.seen = (messages, max_new_tokens, temperature, thinking)
        return _Generated("DONE()")

    def __call__(self, *args):  # like an nn.Module: callable, but not a policy
        raise AssertionError("the VLM must be driven through generate()")


def test_vlm_adapter_passes_pil_images_and_options():
    vlm = FakeVLM()
    policy = as_policy(vlm)
    assert isinstance(policy, VLMPolicy)
    assert policy(_messages("data_url")) == "DONE()"
    messages, max_new_tokens, temperature, thinking = vlm.seen
    images = [p for p in messages[0]["content"] if p["type"] == "image"]
    assert isinstance(images[0]["image"], Image.Image) and max_new_tokens == 2048 and temperature == 0.0
    assert thinking is None  # the checkpoint's default
    VLMPolicy(vlm, thinking=False)(_messages("data_url"))
    assert vlm.seen[3] is False


def test_scripted_policy_answers_in_order_and_runs_out_loudly():
    policy = ScriptedPolicy(["a", lambda messages: f"saw {len(messages)}"])
    assert policy([]) == "a" and policy([{}]) == "saw 1"
    with pytest.raises(PolicyError, match="ran out of answers after 2"):
        policy([])


def test_image_part_conversions_round_trip():
    pil = _messages("pil")
    back = to_pil(to_data_urls(pil))
    original = next(p for p in pil[0]["content"] if p["type"] == "image")["image"]
    restored = next(p for p in back[0]["content"] if p["type"] == "image")["image"]
    assert original.tobytes() == restored.tobytes()
    with pytest.raises(TypeError, match="is not a policy"):
        as_policy(42)
