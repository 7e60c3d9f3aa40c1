"""The OpenAI-compatible server end to end: a real HTTP server in this process, the real
engine on a scripted tiny checkpoint (its greedy answer is known, see `_scripted_checkpoint`),
and plain HTTP clients."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from _scripted_checkpoint import ANSWER, THINKING, build_scripted_checkpoint
from demo.app import EXAMPLES_DIR
from demo.openai_schema import ServerLimits
from demo.serve import create_app, running
from vlm import VLM
from vlm.outputs import strip_special_tokens

MODEL = "scripted-tiny"
SHOWN_ANSWER = strip_special_tokens(ANSWER)  # what a client sees by default (vLLM's skip_special_tokens)
LIMITS = dict(max_body_bytes=2**20, max_images=2, max_image_pixels=512 * 512, max_tokens=256, default_max_tokens=64)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = Image.new("RGB", (96, 64), (200, 30, 30))


def user(text: str = "Where is the red square?", *images: Image.Image) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return VLM.from_pretrained(build_scripted_checkpoint(tmp_path_factory.mktemp("scripted")).path)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def base_url(vlm, media_dir):
    app = create_app(vlm, limits=ServerLimits(**LIMITS, allowed_local_media_path=media_dir), model_name=MODEL)
    with running(app) as url:
        yield url


def chat(base_url: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json={"model": MODEL, **body}, timeout=60)


def stream_events(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE response, `[DONE]` kept as a string."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


def expected_prompt_tokens(vlm: VLM, messages: list, *, thinking: bool) -> int:
    processor = vlm.processor
    images = [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",")[1])))
              for m in messages for p in m["content"] if p["type"] == "image_url"]
    local = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image_url" else p
                                             for p in m["content"]]} for m in messages]
    text = processor.apply_chat_template(local, thinking=thinking)
    return processor(text=text, images=images or None)["input_ids"].shape[1]


def completion_tokens(vlm: VLM, text: str) -> int:
    """Tokens of a scripted continuation, plus the end-of-text token that ends it."""
    return len(vlm.processor.tokenizer.encode(text, add_special_tokens=False)) + 1


def test_models_lists_the_served_model(base_url):
    reply = httpx.get(f"{base_url}/v1/models").json()
    assert [m["id"] for m in reply["data"]] == [MODEL] and reply["object"] == "list"


def test_completion_answers_with_reasoning_and_usage(base_url, vlm):
    messages = [user("Where is the red square?", IMAGE)]
    response = chat(base_url, messages=messages)
    assert response.status_code == 200, response.text
    reply = response.json()
    message = reply["choices"][0]["message"]
    assert message == {"role": "assistant", "content": SHOWN_ANSWER, "reasoning_content": THINKING}
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["object"] == "chat.completion" and reply["model"] == MODEL
    usage = reply["usage"]
    assert usage["prompt_tokens"] == expected_prompt_tokens(vlm, messages, thinking=True)
    assert usage["completion_tokens"] == completion_tokens(vlm, f"<think>{THINKING}</think>\n{ANSWER}")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_enable_thinking_false_is_honoured_as_vllm_does(base_url, vlm):
    messages = [user("Where is the red square?", IMAGE)]
    reply = chat(base_url, messages=messages, chat_template_kwargs={"enable_thinking": False}).json()
    assert reply["choices"][0]["message"]["content"] == SHOWN_ANSWER
    assert reply["choices"][0]["message"]["reasoning_content"] is None
    assert reply["usage"]["prompt_tokens"] == expected_prompt_tokens(vlm, messages, thinking=False)
    assert reply["usage"]["completion_tokens"] == completion_tokens(vlm, ANSWER)


def test_special_tokens_kept_on_request(base_url):
    reply = chat(base_url, messages=[user("Where?", IMAGE)], skip_special_tokens=False).json()
    assert reply["choices"][0]["message"]["content"] == ANSWER


def test_streaming_pieces_join_to_the_whole_answer(base_url, vlm):
    messages = [user("Where is the red square?", IMAGE)]
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        events = stream_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:] if c["choices"]]
    thinking = "".join(d.get("reasoning_content", "") for d in deltas)
    answer = "".join(d.get("content", "") for d in deltas)
    assert thinking.strip() == THINKING and answer.strip() == SHOWN_ANSWER
    assert sum("content" in d for d in deltas) > 3  # streamed in pieces, not in one go
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    usage = chunks[-1]["usage"]  # the include_usage chunk comes last, with no choices
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == completion_tokens(vlm, f"<think>{THINKING}</think>\n{ANSWER}")


def test_max_tokens_cuts_with_finish_reason_length(base_url):
    reply = chat(base_url, messages=[user("Where?", IMAGE)], max_tokens=3,
                 chat_template_kwargs={"enable_thinking": False}).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 3
    assert reply["choices"][0]["message"]["content"] == "Here it is"


def test_stop_strings_reach_the_engine(base_url):
    reply = chat(base_url, messages=[user("Where?", IMAGE)], stop=["804"],
                 chat_template_kwargs={"enable_thinking": False}).json()
    assert reply["choices"][0]["message"]["content"] == "Here it is: [25,36,"
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_local_image_paths_only_under_the_allowed_directory(base_url, media_dir, tmp_path):
    inside = media_dir / "red.png"
    IMAGE.save(inside)
    ok = chat(base_url, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"file://{inside}"}}, {"type": "text", "text": "Where?"}]}])
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == SHOWN_ANSWER
    outside = tmp_path / "red.png"
    IMAGE.save(outside)
    refused = chat(base_url, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": str(outside)}}]}])
    assert refused.status_code == 400 and "outside the allowed media directory" in refused.json()["error"]["message"]


def test_local_video_paths_are_answered(base_url, media_dir):
    video = media_dir / "moving_square.mp4"
    shutil.copy(EXAMPLES_DIR / "moving_square.mp4", video)
    reply = chat(base_url, messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": str(video)}}, {"type": "text", "text": "Where does it go?"}]}])
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == SHOWN_ANSWER
    assert reply.json()["usage"]["prompt_tokens"] > 50  # the frames are in the prompt


def _image_part(url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


BAD_REQUESTS = {
    "messages missing": ({}, 400, "messages"),
    "messages empty": ({"messages": []}, 400, "messages"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    "content not text": ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    "unknown part type": ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
                          "messages[0].content[0].type"),
    "temperature too high": ({"messages": [user()], "temperature": 3}, 400, "temperature"),
    "top_p zero": ({"messages": [user()], "top_p": 0}, 400, "top_p"),
    "max_tokens zero": ({"messages": [user()], "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens over the limit": ({"messages": [user()], "max_tokens": 100_000}, 400, "max_tokens"),
    "max_tokens a boolean": ({"messages": [user()], "max_tokens": True}, 400, "max_tokens"),
    "n > 1": ({"messages": [user()], "n": 2}, 400, "n"),
    "too many stops": ({"messages": [user()], "stop": list("abcde")}, 400, "stop"),
    "thinking not boolean": ({"messages": [user()], "chat_template_kwargs": {"enable_thinking": "no"}}, 400,
                             "chat_template_kwargs.enable_thinking"),
    "bad base64": ({"messages": [_image_part("data:image/png;base64,@@@")]}, 400, "messages[0].content[0]"),
    "not an image": ({"messages": [_image_part("data:image/png;base64," + base64.b64encode(b"hello").decode())]},
                     400, "messages[0].content[0]"),
    "too many images": ({"messages": [user("three", IMAGE, IMAGE, IMAGE)]}, 400, "messages[0].content[2]"),
    "image too many pixels": ({"messages": [user("big", Image.new("RGB", (600, 600)))]}, 400,
                              "messages[0].content[0]"),
    "remote URL": ({"messages": [_image_part("https://example.com/cat.png")]}, 400, "messages[0].content[0]"),
    "video as a data URL": ({"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]}, 400, "messages[0].content[0]"),
    "unknown model": ({"messages": [user()], "model": "gpt-4o"}, 404, "model"),
    # passes the server's checks; the engine refuses it (aspect ratio 250 > 200) before any work
    "image the engine refuses": ({"messages": [user("thin", Image.new("RGB", (500, 2)))]}, 400, None),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_openai_errors(base_url, name):
    body, status, param = BAD_REQUESTS[name]
    for stream in (False, True):  # a streaming request fails the same way, before any event
        response = httpx.post(f"{base_url}/v1/chat/completions", json={"model": MODEL, **body, "stream": stream},
                              timeout=60)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"] and error["type"] in ("invalid_request_error", "not_found_error")
        assert error["param"] == param


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_bodies_get_400(base_url, body):
    response = httpx.post(f"{base_url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_body_over_the_limit_gets_413(base_url):
    text = "x" * (LIMITS["max_body_bytes"] + 1000)
    response = chat(base_url, messages=[user(text)])
    assert response.status_code == 413
    assert "exceeds this server's limit" in response.json()["error"]["message"]


def test_unknown_routes_and_methods_get_json_errors(base_url):
    missing = httpx.get(f"{base_url}/v1/engines")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{base_url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["message"]


@pytest.mark.slow
def test_16_concurrent_requests_all_answered_and_server_healthy(base_url):
    def ask(i: int) -> tuple[bool, str, str | None]:
        thinking = i % 2 == 0
        # a letter, not the number: digits in the prompt would enter the scripted model's history
        body = {"model": MODEL, "messages": [user(f"request {chr(ord('a') + i)}", IMAGE)],
                "chat_template_kwargs": {"enable_thinking": thinking}}
        if i % 4 < 2:
            reply = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120).json()
            message = reply["choices"][0]["message"]
            return thinking, message["content"], message["reasoning_content"]
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True},
                          timeout=120) as response:
            deltas = [e["choices"][0]["delta"] for e in stream_events(response)[:-1] if e["choices"]]
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas).strip()
        return thinking, "".join(d.get("content", "") for d in deltas).strip(), reasoning or None

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(16)))
    for thinking, content, reasoning in results:
        assert content == SHOWN_ANSWER
        assert reasoning == (THINKING if thinking else None)
    health = httpx.get(f"{base_url}/health").json()
    assert health == {"status": "ok", "pending": 0, "running": 0, "image_pixels": 0}
    assert chat(base_url, messages=[user("after", IMAGE)]).status_code == 200


def test_a_full_queue_answers_429_and_then_recovers(vlm):
    app = create_app(vlm, limits=ServerLimits(max_pending=2), model_name=MODEL)
    engine_free = threading.Event()
    engine, admit = app.state.engine, app.state.engine._admit
    engine._admit = lambda job: (engine_free.wait(), admit(job))  # the engine thread is held up
    with running(app) as url, ThreadPoolExecutor(2) as pool:
        queued = [pool.submit(chat, url, messages=[user("queued", IMAGE)]) for _ in range(2)]
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/health").json()["pending"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = chat(url, messages=[user("one too many", IMAGE)])
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        engine_free.set()
        assert [f.result().status_code for f in queued] == [200, 200]
        assert chat(url, messages=[user("again", IMAGE)]).status_code == 200


def test_waiting_requests_are_decoded_together_with_their_own_options(vlm):
    """Continuous batching: requests that arrive while the engine is busy join one batch and each
    gets what it asked (its own max_tokens, thinking switch, stream or not); the batch is bounded."""
    app = create_app(vlm, limits=ServerLimits(max_batch=3), model_name=MODEL)
    engine_free = threading.Event()
    engine, admit, step = app.state.engine, app.state.engine._admit, app.state.engine.batch.step
    engine._admit = lambda job: (engine_free.wait(), admit(job))
    rows_per_step = []
    engine.batch.step = lambda: (rows_per_step.append(len(engine.batch.rows)), step())[1]
    with running(app) as url, ThreadPoolExecutor(4) as pool:
        replies = [pool.submit(chat, url, messages=[user(f"request {c}", IMAGE)], max_tokens=n,
                               chat_template_kwargs={"enable_thinking": c != "b"}) for c, n in zip("abcd", (64, 64, 3, 64))]
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/health").json()["pending"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        engine_free.set()
        bodies = [f.result().json() for f in replies]
    assert max(rows_per_step) == 3  # the first three together, never more than max_batch
    messages = [b["choices"][0]["message"] for b in bodies]
    assert [m["content"] for m in messages] == [SHOWN_ANSWER, SHOWN_ANSWER, "", SHOWN_ANSWER]
    assert [m["reasoning_content"] for m in messages[:2] + messages[3:]] == [THINKING, None, THINKING]
    assert THINKING.startswith(messages[2]["reasoning_content"])  # cut after 3 tokens, inside the reasoning
    assert [b["choices"][0]["finish_reason"] for b in bodies] == ["stop", "stop", "length", "stop"]
    assert bodies[2]["usage"]["completion_tokens"] == 3


def test_a_streaming_client_that_leaves_frees_its_row_at_once(vlm):
    app = create_app(vlm, limits=ServerLimits(max_tokens=1000), model_name=MODEL)
    engine, step = app.state.engine, app.state.engine.batch.step
    steps = []
    engine.batch.step = lambda: (steps.append(len(engine.batch.rows)), time.sleep(0.01), step())[2]
    with running(app) as url:
        body = {"model": MODEL, "messages": [user()], "stream": True, "max_tokens": 1000, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            next(response.iter_lines())  # the first chunk, then the client goes away
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/health").json() != {"status": "ok", "pending": 0, "running": 0, "image_pixels": 0}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert len(steps) < 500  # it left long before its 1000 tokens


def test_ignore_eos_decodes_max_tokens_as_vllm_does(base_url):
    reply = chat(base_url, messages=[user()], max_tokens=40, ignore_eos=True).json()
    assert reply["usage"]["completion_tokens"] == 40 and reply["choices"][0]["finish_reason"] == "length"


def test_queued_image_pixels_are_bounded(vlm):
    app = create_app(vlm, limits=ServerLimits(max_queued_image_pixels=96 * 64 + 10), model_name=MODEL)
    engine_free = threading.Event()
    engine, admit = app.state.engine, app.state.engine._admit
    engine._admit = lambda job: (engine_free.wait(), admit(job))
    with running(app) as url, ThreadPoolExecutor(1) as pool:
        queued = pool.submit(chat, url, messages=[user("queued", IMAGE)])
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/health").json()["pending"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = chat(url, messages=[user("another image", IMAGE)])
        assert refused.status_code == 429 and "image pixels" in refused.json()["error"]["message"]
        engine_free.set()
        assert queued.result().status_code == 200
        assert chat(url, messages=[user("now there is room", IMAGE)]).status_code == 200


def test_openai_policy_of_the_agent_works_against_the_server(base_url):
    from agent.policy import OpenAIPolicy
    from vlm.outputs import parse_boxes

    policy = OpenAIPolicy(f"{base_url}/v1", MODEL, max_tokens=128)
    text = policy([{"role": "user", "content": [{"type": "image", "image": IMAGE},
                                                {"type": "text", "text": "Where is the red square?"}]}])
    assert text == ANSWER  # box tokens kept: the policy asks for skip_special_tokens=false
    assert [b.as_list() for b in parse_boxes(text)] == [[25, 36, 804, 917]]


@pytest.mark.slow
def test_the_serving_benchmark_measures_both_servers(capsys):
    from benchmarks.serve import main

    main(["--clients", "1", "2", "--requests", "1", "--max-tokens", "4", "--threads", "1"])
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.startswith(("serial", "batched"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [("serial", "1", "4"), ("serial", "2", "8"),
                                                  ("batched", "1", "4"), ("batched", "2", "8")]
    assert out[-1].startswith(" 2 clients: batched ")
