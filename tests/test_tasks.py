"""Training conversations from rendered pages: answers parse back with the agent's own parsers
and point at the right element."""

import random

import pytest

from agent.actions import Box, Click, Mark, Point, Type
from agent.parsing import parse_box, parse_response
from agent.prompt_text import GROUNDING_TEMPLATE
from synth.agent_steps import Media, Screen, action_samples, decode
from synth.pages import generate_page
from synth.tasks import grounding_samples, qa_samples, reading_samples
from tests._data_engine_utils import renderer  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def rendered_pages(renderer):  # noqa: F811
    out = []
    for seed, viewport in [(1, "desktop"), (2, "phone"), (4, "desktop"), (11, "phone")]:
        page = generate_page(seed)
        tab = renderer.load(page, viewport)
        rendered = renderer.snapshot(tab, page, viewport)
        out.append((rendered, renderer.snapshot_marks(tab, rendered)))
    return out


@pytest.mark.browser
def test_grounding_answers_parse_to_a_box_that_contains_the_element(rendered_pages):
    prompts = set()
    for rendered, _ in rendered_pages:
        for sample in grounding_samples(rendered, "images/x.png", random.Random(0), n=50):
            box = parse_box(sample.messages[1]["content"])
            placed = rendered.find(sample.meta["element"])
            x1, y1, x2, y2 = placed.box_px
            # every CSS pixel of the element is inside the answered 0-999 box
            assert box.x1 <= x1 * 1000 / rendered.width and x2 * 1000 / rendered.width <= box.x2 + 1
            assert box.y1 <= y1 * 1000 / rendered.height and y2 * 1000 / rendered.height <= box.y2 + 1
            assert sample.messages[0]["content"][0] == {"type": "image", "image": "images/x.png"}
            prompts.add(sample.messages[0]["content"][1]["text"].split(" the ")[0])
    assert GROUNDING_TEMPLATE.split(" {")[0] in prompts  # the released wording is among the variants


@pytest.mark.browser
def test_multi_turn_grounding_asks_the_same_questions_about_one_image(rendered_pages):
    rendered, _ = rendered_pages[0]
    single = grounding_samples(rendered, "images/x.png", random.Random(5), n=7)
    multi = grounding_samples(rendered, "images/x.png", random.Random(5), n=7, turns=3)
    assert [len(s.messages) for s in multi] == [6, 6, 2]  # 3 + 3 + 1 questions
    turns = [m for s in multi for m in s.messages]
    assert [m["content"] for m in turns if m["role"] == "assistant"] == [s.messages[1]["content"] for s in single]
    for sample in multi:
        images = [p for m in sample.messages if m["role"] == "user" for p in m["content"] if p["type"] == "image"]
        assert images == [{"type": "image", "image": "images/x.png"}]  # encoded once, before the first question
        answers = [parse_box(m["content"]) for m in sample.messages if m["role"] == "assistant"]
        assert [b.as_list() for b in answers] == sample.meta.get("boxes", [sample.meta["box"]])
    with pytest.raises(ValueError, match="turns=0"):
        grounding_samples(rendered, "images/x.png", random.Random(5), n=7, turns=0)


@pytest.mark.browser
@pytest.mark.parametrize("fmt", ["desktop", "mobile", "web"])
def test_action_answers_parse_back_and_target_the_element(rendered_pages, fmt):
    n = 0
    for rendered, marked in rendered_pages:
        media = Media("t")
        png = marked.png if fmt == "web" else rendered.png
        screen = Screen(decode(png), media.add_png(png))
        for sample in action_samples(rendered, screen, random.Random(1), media, fmt=fmt, marked=marked, n=6):
            assert sample.messages[0]["role"] == "user" and len(sample.messages) == 2  # history in one message
            assert sample.messages[0]["content"][-1] == {"type": "image", "image": screen.path}  # screenshot last
            assert sample.meta["task"] in sample.messages[0]["content"][0]["text"]
            action = parse_response(sample.messages[1]["content"], fmt).action
            element_box = rendered.find(sample.meta["element"]).box
            if isinstance(action, Click):
                target = action.target
            else:
                assert isinstance(action, Type) and action.text == sample.meta["text"]
                target = action.target
            if fmt == "desktop":
                assert isinstance(target, Point) and element_box.contains(target)
            elif fmt == "mobile":
                assert isinstance(target, Box) and target == element_box
            else:
                assert isinstance(target, Mark) and marked.marks[target.id] == sample.meta["element"]
            n += 1
    assert n >= 12


@pytest.mark.browser
def test_questions_only_count_fully_visible_blocks_and_answer_from_the_page(rendered_pages):
    seen = set()
    for rendered, _ in rendered_pages:
        for sample in qa_samples(rendered, "images/x.png", random.Random(2), n=10):
            meta, answer = sample.meta, sample.messages[1]["content"]
            assert answer == meta["answer"]
            seen.add(meta["question_type"])
            if meta["question_type"] == "title":
                assert answer == rendered.page.title
            if meta["question_type"] == "count":
                blocks = [b for b in rendered.page.blocks if b.items and len(b.items) == int(answer)]
                assert any(all(i in {p.element.id for p in rendered.placed} for i in b.items) for b in blocks)
    assert {"title", "text", "effect"} <= seen


@pytest.mark.browser
def test_reading_lists_every_visible_text_in_document_order_each_with_its_box(rendered_pages):
    for rendered, _ in rendered_pages:
        (sample,) = reading_samples(rendered, "images/x.png", random.Random(0))
        assert sample.messages[0]["content"][0] == {"type": "image", "image": "images/x.png"}
        lines = sample.messages[1]["content"].split("\n")
        expected = [p for p in rendered.placed if p.element.text.strip()]
        assert len(lines) == len(expected) > 5
        for line, placed in zip(lines, expected):
            text, _, box = line.partition(" <|begin_of_box|>")
            assert text == placed.element.text
            assert parse_box("<|begin_of_box|>" + box) == placed.box
        assert sample.meta["items"] == [[p.element.text, p.box.as_list()] for p in expected]
