"""Expert episodes in a real Chromium: they reach their goal, and every step is a valid answer
in its format with the earlier steps written into the one user message."""

import random

import pytest

from agent.actions import Answer, Done
from agent.parsing import parse_response
from synth.agent_steps import Media
from synth.episodes import EPISODE_KINDS, episode_samples, plan_episode
from tests._data_engine_utils import renderer  # noqa: F401  (fixture)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_expert_episodes_reach_the_goal_and_write_history_into_the_prompt(renderer, viewport):  # noqa: F811
    for seed, kind in enumerate(EPISODE_KINDS):
        fmt = "web" if kind == "dropdown" else ("desktop" if viewport == "desktop" else "mobile")
        samples = episode_samples(renderer, seed, viewport, random.Random(seed), Media("t"), kind=kind, fmt=fmt)
        assert samples, (kind, viewport)  # [] would mean the goal was not reached in the page
        actions = [parse_response(s.messages[-1]["content"], fmt).action for s in samples]
        assert isinstance(actions[-1], Done if fmt != "web" else Answer)
        assert not any(isinstance(a, (Done, Answer)) for a in actions[:-1])
        for step, sample in enumerate(samples):
            assert [m["role"] for m in sample.messages] == ["user", "assistant"]
            prompt = " ".join(p["text"] for p in sample.messages[0]["content"] if p["type"] == "text")
            for earlier in samples[:step]:
                assert earlier.meta["expected"] in prompt  # the history carries every earlier action
        if kind in ("login", "form"):
            typed = [s.meta["text"] for s in samples if s.meta["action_type"] == "type"]
            assert len(typed) == len(plan_episode(seed, kind)[1].fills)


def test_a_form_goal_fixes_the_number_of_fields_and_rejects_too_many():
    page, goal = plan_episode(3, "form", fields=2)
    assert len(goal.fills) == 2 and goal.submit is not None
    assert all(f'"{value}"' in goal.task for _, value in goal.fills)
    with pytest.raises(ValueError, match="fields=9"):
        plan_episode(3, "form", fields=9)
    pinned, pinned_goal = plan_episode(3, "form", fields=2, language="ja")
    assert pinned.language == "ja" and not any(pinned.element(eid).text.isascii() for eid, _ in pinned_goal.fills)
    with pytest.raises(ValueError, match="'signup'"):
        plan_episode(3, "signup")
