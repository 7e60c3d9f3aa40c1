"""The evaluation harness: a perfect model scores 1, a useless one 0, on fresh held-out data,
and the agent loop lets a model drive a real Chromium to the episode's goal."""

import io
import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from agent.loop import Agent
from agent.policy import ScriptedPolicy
from synth.agent_steps import Media, answer
from synth.episodes import Expert, episode_samples, plan_episode
from synth.eval import EvalResult, PageServer, evaluate, open_env, run_episode
from synth.render import Renderer, measure, prune
from synth.dataset import unit_seed


def _assert_same_screenshot(live, recorded, step):
    """The same page state in both: equal sizes and every pixel equal, up to Chromium's
    anti-aliasing, which on a loaded machine moves a few text-edge pixels by a level or two."""
    live_HWC = np.asarray(live.convert("RGB"), dtype=np.int16)
    recorded_HWC = np.asarray(recorded.convert("RGB"), dtype=np.int16)
    assert live_HWC.shape == recorded_HWC.shape, (step, live_HWC.shape, recorded_HWC.shape)
    diff_HW = np.abs(live_HWC - recorded_HWC).max(-1)
    assert int((diff_HW > 4).sum()) == 0 and (diff_HW > 0).mean() < 1e-3, (
        f"step {step}: {int((diff_HW > 0).sum())} pixels differ, up to {int(diff_HW.max())} levels")


def _same_but_url_and_time(text):
    text = re.sub(r"https?://\S+", "<url>", text)
    return re.sub(r"\d{4}-\d{2}-\d{2}, \d{2}:00 [AP]M", "<time>", text)


def _text(messages):
    return "".join(p.get("text", "") for m in messages for p in m["content"] if isinstance(p, dict))


@pytest.mark.slow
@pytest.mark.browser
def test_a_model_that_knows_the_answers_scores_one_and_a_silent_one_zero(tmp_path):
    answers = {}

    def perfect(messages):  # reads the reference answers of the data the harness just generated
        if not answers:
            for line in (tmp_path / "a" / "grounding" / "data.jsonl").read_text().splitlines():
                record = json.loads(line)
                answers[_text(record["messages"][:-1])] = record["messages"][-1]["content"]
        return answers[_text(messages)]

    result = evaluate("grounding", perfect, n=8, seed=3, workdir=tmp_path / "a")
    assert (result.correct, result.total) == (8, 8)
    assert set(result.groups) <= {"desktop", "phone"}
    silent = evaluate("grounding", lambda m: "I don't know.", n=8, seed=3, workdir=tmp_path / "b")
    assert silent.accuracy == 0.0 and silent.report().splitlines()[-1] == "accuracy: 0.0000"


@pytest.mark.browser
def test_held_out_pages_are_in_the_languages_asked_for(tmp_path):
    evaluate("grounding", lambda m: "", n=6, seed=3, workdir=tmp_path, languages=("es",))
    records = [json.loads(line) for line in (tmp_path / "grounding" / "data.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["meta"]["language"] for r in records} == {"es"}


def test_browserless_grounding_scores_drawn_held_out_screens_without_chromium(tmp_path):
    answers = {}

    def perfect(messages):
        if not answers:
            for line in (tmp_path / "a" / "ui_grounding" / "data.jsonl").read_text().splitlines():
                record = json.loads(line)
                answers[_text(record["messages"][:-1])] = record["messages"][-1]["content"]
        return answers[_text(messages)]

    result = evaluate("ui_grounding", perfect, n=8, seed=3, workdir=tmp_path / "a", languages=("de", "zh"))
    assert (result.correct, result.total) == (8, 8)
    records = [json.loads(line) for line in (tmp_path / "a" / "ui_grounding" / "data.jsonl").read_text().splitlines()]
    assert {r["meta"]["renderer"] for r in records} == {"ui"} and {r["meta"]["language"] for r in records} == {"de"}
    heldout = {unit_seed("heldout", 3, i) for i in range(8)}
    assert {r["meta"]["page_seed"] for r in records} <= heldout  # the eval's own seed stream, not training's
    assert evaluate("ui_grounding", lambda m: "", n=4, seed=3, workdir=tmp_path / "b").accuracy == 0.0
    with pytest.raises(ValueError, match="languages \\['zh'\\] have none"):
        evaluate("ui_grounding", perfect, n=4, seed=3, workdir=tmp_path / "c", languages=("zh",))


@pytest.mark.slow
@pytest.mark.browser
def test_the_agent_loop_driven_by_an_expert_fills_the_form_and_giving_up_fails():
    # phone only: the desktop loop is exercised by the replay test below
    viewport = "phone"
    seed = unit_seed("heldout", 0, 1)
    page, goal = plan_episode(seed, "form", fields=2)
    fmt = "desktop" if viewport == "desktop" else "mobile"
    server, env = PageServer(), open_env(viewport)
    try:
        expert = Expert(goal, fmt)

        def scripted(messages):  # reads the live page, as a perfect model would read the screenshot
            assert messages[0]["content"][-1]["type"] == "image"
            rendered = measure(env.page, page, viewport, b"")
            action, reason, _ = expert.act(rendered, (), "click")
            return answer(fmt, action, reason)

        assert run_episode(scripted, env, server, seed, viewport)
        gives_up = {"desktop": "done\n<|begin_of_box|>DONE()<|end_of_box|>\nMemory:\n[]",
                    "mobile": 'Memory: \nReason: done\nAction: {"action_type": "status", "goal_status": "complete"}'}[fmt]
        assert not run_episode(lambda messages: gives_up, env, server, seed, viewport)
        assert not run_episode(lambda messages: "I am not sure what to do.", env, server, seed, viewport)
    finally:
        env.close()
        server.close()


def test_result_groups_and_accuracy():
    result = EvalResult("grounding")
    for ok, group in [(True, "desktop"), (False, "desktop"), (True, "phone")]:
        result.add(group, ok)
    assert result.report().splitlines() == ["grounding: desktop 1/2 = 0.500", "grounding: phone 1/1 = 1.000",
                                            "accuracy: 0.6667"]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("viewport,kind,fmt", [("desktop", "form", "desktop"), ("phone", "login", "mobile"),
                                                ("desktop", "dropdown", "web")])
def test_recorded_episode_prompts_equal_what_the_agent_loop_sends(viewport, kind, fmt):
    # Training data and the live agent must show the model the same text and screenshots:
    # replay the recorded answers through the agent loop and compare every prompt.
    seed, media = 5, Media("t")
    with Renderer() as renderer:
        samples = episode_samples(renderer, seed, viewport, random.Random(0), media, kind=kind, fmt=fmt)
    assert samples
    page, goal = plan_episode(seed, kind)
    policy = ScriptedPolicy([s.messages[-1]["content"] for s in samples])
    server, env = PageServer(), open_env(viewport, set_of_marks=fmt == "web")
    try:
        env.goto(server.url(page))
        prune(env.page, viewport)
        agent = Agent(policy=policy, env=env, platform=fmt, confirm=lambda s: True)
        trajectory = agent.run(goal.task, max_steps=20)
        assert trajectory.status in ("done", "answered") and goal.achieved(env.page)
    finally:
        env.close()
        server.close()
    assert len(policy.calls) == len(samples)
    for step, (live, recorded) in enumerate(zip(policy.calls, samples)):
        live_parts, recorded_parts = live[0]["content"], recorded.messages[0]["content"]
        assert [p["type"] for p in live_parts] == [p["type"] for p in recorded_parts]
        for a, b in zip(live_parts, recorded_parts):
            if a["type"] == "text":  # the web prompt's URL and clock differ by construction
                assert _same_but_url_and_time(a["text"]) == _same_but_url_and_time(b["text"])
            else:
                recorded_image = Image.open(io.BytesIO(media.files[b["image"]]))
                _assert_same_screenshot(a["image"], recorded_image, step)
