"""The evaluation harness: a perfect model scores 1, a useless one 0, on fresh held-out data,
and the agent loop lets a model drive a real Chromium to the episode's goal."""

import json

import pytest

from train.agent_steps import answer
from train.episodes import Expert, plan_episode
from train.eval import EvalResult, PageServer, evaluate, open_env, run_episode
from train.synth import unit_seed
from train.render import measure


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
def test_the_agent_loop_driven_by_an_expert_fills_the_form_and_giving_up_fails(viewport):
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
