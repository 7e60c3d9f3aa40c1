"""The evaluation harness: a perfect model scores 1, a useless one 0, on fresh held-out data,
and the episode loop lets a model drive real Chromium to the goal."""

import json

import pytest

from train.agent_steps import answer
from train.episodes import _Expert, plan_episode
from train.eval import EvalResult, evaluate, run_episode
from train.synth import unit_seed
from tests._data_engine_utils import renderer  # noqa: F401  (fixture)


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


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_an_expert_driving_the_episode_loop_succeeds_and_giving_up_fails(renderer, viewport, tmp_path):  # noqa: F811
    seed = unit_seed("heldout", 0, 1)
    page, goal = plan_episode(seed, "form", fields=2)
    fmt = "desktop" if viewport == "desktop" else "mobile"
    expert = _Expert(goal, fmt)

    def scripted(messages):  # looks at the live page, as a perfect model would look at the screenshot
        rendered = renderer.snapshot(renderer.tab(viewport), page, viewport)
        action, reason, _ = expert.act(rendered, (), "click")
        return answer(fmt, action, reason)

    assert run_episode(scripted, renderer, seed, viewport, tmp_path)
    gives_up = {"desktop": "done\n<|begin_of_box|>DONE()<|end_of_box|>\nMemory:\n[]",
                "mobile": 'Memory: \nReason: done\nAction: {"action_type": "status", "goal_status": "complete"}'}[fmt]
    assert not run_episode(lambda messages: gives_up, renderer, seed, viewport, tmp_path)
    assert not run_episode(lambda messages: "I am not sure what to do.", renderer, seed, viewport, tmp_path)


def test_result_groups_and_accuracy():
    result = EvalResult("grounding")
    for ok, group in [(True, "desktop"), (False, "desktop"), (True, "phone")]:
        result.add(group, ok)
    assert result.report().splitlines() == ["grounding: desktop 1/2 = 0.500", "grounding: phone 1/1 = 1.000",
                                            "accuracy: 0.6667"]
