"""Training conversations from a rendered page: grounding and screenshot questions.

Each `Sample` is one conversation in the project's training JSONL shape (user turn with the
image part first, assistant answer) plus `meta`, the ground truth `synth.scoring` grades
answers against. Images are referred to by the path the caller will write them to.

Grounding uses the released model's prompt ("Help me to locate ... and give me its bounding
boxes.") and some paraphrases, answered with one box inside the box tokens; the box is the
element's DOM box in model space. Questions only ask what the screenshot shows: a count is
asked only when every counted item is visible, a text only for elements that show text.
A reading conversation asks for every visible element's text with its box, in document
order: dense supervision of reading the screen, and each box in it is a grounding answer
conditioned on the text just read.
GUI actions in the three agent formats live in `synth.agent_steps`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

from agent.actions import Box
from agent.formats.common import BOX_BEGIN, BOX_END
from agent.prompt_text import GROUNDING_TEMPLATE
from synth.render import Placed, Rendered

GROUNDING_PROMPTS = (  # the first is the agent's (the released model's) own wording
    GROUNDING_TEMPLATE,
    "Help me to locate {description} in the image and give me its bounding boxes.",
    "Please locate {description} in this screenshot and give me its bounding box.",
    "Where is {description}? Answer with its bounding box.",
    "Find {description} and output its bounding box.",
)
READING_PROMPTS = (
    "Read the text of every element on this screen, each followed by its bounding box.",
    "List the texts in this screenshot in reading order, each with its bounding box.",
    "What does this screen say? Give each element's text and bounding box.",
)
_SHOWS_TEXT = ("heading", "link", "button", "tab", "menu", "menuitem", "dropdown", "option",
               "listitem", "cell")


class Screen(Protocol):
    """What grounding and reading need of a screenshot, whichever renderer drew it (Chromium's
    `synth.render.Rendered`, PIL's `synth.ui.Drawn`): its visible elements in reading order, each
    with its box in model space, and the ground truth every sample's `meta` starts with."""

    @property
    def placed(self) -> tuple[Placed, ...]: ...

    @property
    def meta(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Sample:
    """One training conversation and the ground truth needed to score an answer to it."""

    messages: list[dict[str, Any]]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "meta": self.meta}


def format_box(box: Box) -> str:
    """A grounding answer: `<|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>` in model space."""
    return f"{BOX_BEGIN}[{box.x1},{box.y1},{box.x2},{box.y2}]{BOX_END}"


def conversation(media: list[dict[str, str]], question: str, answer: str) -> list[dict[str, Any]]:
    """User turn (media parts first, then the text) and the assistant's answer."""
    return [{"role": "user", "content": [*media, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer}]


def _base_meta(screen: Screen, kind: str) -> dict[str, Any]:
    return {"kind": kind, **screen.meta}


def unique_targets(screen: Screen) -> list[Placed]:
    """Visible elements whose description names exactly one visible element."""
    counts: dict[str, int] = {}
    for placed in screen.placed:
        counts[placed.element.description] = counts.get(placed.element.description, 0) + 1
    return [p for p in screen.placed if counts[p.element.description] == 1]


def grounding_samples(rendered: Screen, image: str, rng: random.Random, *, n: int, turns: int = 1) -> list[Sample]:
    """Up to `n` grounding questions about different visible elements of `rendered`, `turns`
    per conversation: the first question follows the image, the others follow the previous
    answer, so the image is encoded once for all of them (`meta["box"]` is the first's box,
    `meta["boxes"]` every turn's)."""
    if turns < 1:
        raise ValueError(f"turns={turns}: expected at least one question per conversation")
    targets = unique_targets(rendered)
    chosen = rng.sample(targets, min(n, len(targets)))
    samples = []
    for start in range(0, len(chosen), turns):
        group = chosen[start:start + turns]
        messages: list[dict[str, Any]] = []
        for placed in group:
            question = rng.choice(GROUNDING_PROMPTS).format(description=placed.element.description)
            media = [] if messages else [{"type": "image", "image": image}]
            messages += conversation(media, question, format_box(placed.box))
        meta = {**_base_meta(rendered, "grounding"), "element": group[0].element.id,
                "role": group[0].element.role, "box": group[0].box.as_list()}
        if len(group) > 1:
            meta["boxes"] = [p.box.as_list() for p in group]
        samples.append(Sample(messages, meta))
    return samples


def reading_samples(rendered: Screen, image: str, rng: random.Random) -> list[Sample]:
    """One conversation: every visible element that shows text, in document order, one per
    line as `text <|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>` (`meta["items"]`: [text, box])."""
    items = [(p.element.text, p.box) for p in rendered.placed if p.element.text.strip()]
    if not items:
        return []
    answer = "\n".join(f"{text} {format_box(box)}" for text, box in items)
    return [Sample(conversation([{"type": "image", "image": image}], rng.choice(READING_PROMPTS), answer),
                   {**_base_meta(rendered, "read"), "items": [[text, box.as_list()] for text, box in items]})]


def _questions(rendered: Rendered, rng: random.Random) -> list[tuple[str, str, str]]:
    """Every (question type, question, answer) the screenshot supports."""
    page, visible = rendered.page, {p.element.id for p in rendered.placed}
    verb = "tap" if rendered.viewport == "phone" else "click"
    found = [("title", rng.choice(("What is the title of this page?", "What is the page's heading?")), page.title)]
    for placed in unique_targets(rendered):
        el = placed.element
        if el.role in _SHOWS_TEXT:
            found.append(("text", f"What text is shown in the region {format_box(placed.box)}?", el.text))
        if el.role == "checkbox":
            found.append(("checkbox", f"Is {el.description} checked? Answer yes or no.", "Yes" if el.checked else "No"))
        if el.role != "heading":
            found.append(("effect", f"What happens if I {verb} {el.description}?", el.effect))
    for block in page.blocks:
        if block.items and block.id in rendered.blocks and all(i in visible for i in block.items):
            if block.kind == "list":
                question = f'How many items are in the "{block.title}" list?'
            else:
                question = "How many rows does the table have, not counting the header?"
            found.append(("count", question, str(len(block.items))))
    return found


def qa_samples(rendered: Rendered, image: str, rng: random.Random, *, n: int) -> list[Sample]:
    """Up to `n` screenshot questions of different types where possible."""
    by_type: dict[str, list[tuple[str, str, str]]] = {}
    for item in _questions(rendered, rng):
        by_type.setdefault(item[0], []).append(item)
    types = rng.sample(sorted(by_type), len(by_type))
    chosen = [rng.choice(by_type[t]) for t in types][:n]
    return [Sample(conversation([{"type": "image", "image": image}], question, answer),
                   {**_base_meta(rendered, "qa"), "question_type": qtype, "answer": answer})
            for qtype, question, answer in chosen]
