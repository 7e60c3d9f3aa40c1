"""Multi-step episodes (log in, fill and submit a form, choose from a menu or dropdown) with
expert trajectories recorded in the real page.

The expert is a small policy over the *current* DOM state, not a fixed script: at every step
the page is screenshotted and measured again, the expert picks the next action from what is
visible (a menu already open is not opened again), the action is written in the step's
format with the full history in one user message, and then executed in Chromium through its
model-space coordinates, exactly as the agent would execute a model's answer. An episode
counts only if the page then reports the intended outcome (the submitted values or the
chosen item, recorded by the page's own script); otherwise it yields no samples.

`Goal`, `plan_episode` and `execute` are shared with the evaluation, which lets a model
drive the same pages and checks the same outcome.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from agent.actions import Action, Answer, Click, Done, Mark, Point, Box, Type
from synth.agent_steps import (Format, Media, Screen, action_meta, answer, clock, click, decode,
                               english_label, field_value, messages, past_step, type_into)
from synth.pages import CARD_KINDS, Page, generate_page
from synth.render import Marked, Rendered, Renderer, Viewport
from synth.tasks import Sample
from synth.vocab import Language

log = logging.getLogger(__name__)

EpisodeKind = Literal["login", "form", "menu", "dropdown"]
EPISODE_KINDS: tuple[EpisodeKind, ...] = ("login", "form", "menu", "dropdown")
MAX_STEPS = 12


@dataclass(frozen=True)
class Goal:
    """What an episode must achieve: `fills` (element id, text) in order, then a click on
    `submit`; or a click on `item` (behind `opener` if it is not visible yet)."""

    kind: EpisodeKind
    task: str
    fills: tuple[tuple[str, str], ...] = ()
    submit: str | None = None
    opener: str | None = None
    item: str | None = None
    item_text: str | None = None
    expected: tuple[tuple[str, str], ...] = ()  # (form field name, value) the page must report

    def achieved(self, tab: Any) -> bool:
        """Whether the page reports this goal's outcome."""
        data = tab.evaluate("() => ({...document.body.dataset})")
        if self.kind in ("login", "form"):
            submitted = json.loads(data.get("submitted", "null"))
            return isinstance(submitted, dict) and all(submitted.get(k) == v for k, v in self.expected)
        return data.get("chosen") == self.item_text


def plan_episode(seed: int, kind: EpisodeKind, *, fields: int | None = None,
                 language: Language | None = None) -> tuple[Page, Goal]:
    """A page holding the card `kind` needs, and the goal; `fields` fixes a form's field count,
    `language` the page's UI language (else the seed picks it)."""
    if kind not in EPISODE_KINDS:
        raise ValueError(f"episode kind {kind!r} is not one of {EPISODE_KINDS}")
    rng = random.Random(seed)
    others = [k for k in CARD_KINDS if k not in ("login", "form", "menu", "dropdown")]
    cards = [kind, *rng.sample(others, rng.randint(0, 2))]
    rng.shuffle(cards)
    page = generate_page(seed, cards=tuple(cards), dialog=False, language=language)
    block = next(b for b in page.blocks if b.kind == kind)
    inside = [e for e in page.elements if e.block == block.id]
    if kind in ("login", "form"):
        boxes = [e for e in inside if e.role == "textbox"]
        if kind == "form" and fields is not None:
            if not 1 <= fields <= len(boxes):
                raise ValueError(f"fields={fields} but the form of page {seed} has {len(boxes)} fields")
            boxes = boxes[:fields]
        values = [(e, field_value(english_label(e.text), rng)) for e in boxes]
        names = _field_names(page)
        submit = next(e for e in inside if e.role == "button")
        listed = ", ".join(f'{e.text} "{v}"' for e, v in values)
        if kind == "login":
            task = f'Sign in with username "{values[0][1]}" and password "{values[1][1]}".'
        else:
            task = rng.choice((f"Fill in the form with {listed}, then submit it.",
                               f"Enter {listed} and submit the form."))
        return page, Goal(kind, task, fills=tuple((e.id, v) for e, v in values), submit=submit.id,
                          expected=tuple((names[e.id], v) for e, v in values))
    opener = next(e for e in inside if e.role in ("menu", "dropdown"))
    item = rng.choice([e for e in inside if e.role in ("menuitem", "option")])
    if kind == "menu":
        task = f'Open the "{opener.text}" menu and choose "{item.text}".'
    else:
        task = f'Select "{item.text}" in {opener.description}.'
    return page, Goal(kind, task, opener=opener.id, item=item.id, item_text=item.text)


def _field_names(page: Page) -> dict[str, str]:
    """element id -> the `name` the form submits it under, read from the page's HTML."""
    return {eid: name for name, eid in re.findall(r'<input name="([^"]+)"[^>]*data-el="(e\d+)"', page.html)}


@dataclass
class Expert:
    """The expert policy's memory: how far through the goal it is, which field has focus."""

    goal: Goal
    fmt: Format
    next_fill: int = 0
    focused: str | None = None
    submitted: bool = False
    chosen: bool = False

    def act(self, rendered: Rendered, marks: tuple[str | None, ...], verb: str) -> tuple[Action, str, str | None]:
        """(action, reason, element id) for the current state."""
        def target(eid: str) -> tuple[Any, int | None]:
            return rendered.find(eid), (marks.index(eid) if eid in marks else None)

        g = self.goal
        if self.next_fill < len(g.fills):
            eid, text = g.fills[self.next_fill]
            placed, mark = target(eid)
            if self.fmt == "desktop" and self.focused != eid:
                self.focused = eid
                return click(self.fmt, placed, mark), f"I {verb} {placed.element.description} to type into it.", eid
            self.next_fill += 1
            return type_into(self.fmt, placed, mark, text), f'I type "{text}" into {placed.element.description}.', eid
        if g.submit and not self.submitted:
            self.submitted = True
            placed, mark = target(g.submit)
            return click(self.fmt, placed, mark), f"All fields are filled, so I {verb} {placed.element.description}.", g.submit
        if g.item and not self.chosen:
            if g.item in {p.element.id for p in rendered.placed}:
                self.chosen = True
                placed, mark = target(g.item)
                return click(self.fmt, placed, mark), f"I {verb} {placed.element.description}.", g.item
            placed, mark = target(g.opener)
            return click(self.fmt, placed, mark), f"I {verb} {placed.element.description} to see its items.", g.opener
        if self.fmt == "web":
            return Answer(g.item_text or "done"), "The task is complete.", None
        return Done(), "The task is complete.", None


def execute(tab: Any, action: Action, rendered: Rendered, *, touch: bool) -> None:
    """Perform a Click or Type in `tab`; targets are model space (or marks) of `rendered`."""
    def press(target: Point | Box | Mark) -> None:
        if isinstance(target, Mark):
            raise ValueError("execute() needs marks resolved to boxes; use execute_marked()")
        point = target.center if isinstance(target, Box) else target
        x, y = point.to_pixels(rendered.width, rendered.height)
        tab.touchscreen.tap(x, y) if touch else tab.mouse.click(x, y)

    if isinstance(action, Click):
        press(action.target)
    elif isinstance(action, Type):
        if action.target is not None:
            press(action.target)
        if action.clear:
            tab.keyboard.press("Control+A")
        tab.keyboard.type(action.text)
        if action.press_enter:
            tab.keyboard.press("Enter")
    else:
        raise ValueError(f"execute() cannot perform {action!r} in a page (only Click and Type)")
    tab.wait_for_timeout(30)  # let the page's click handlers run before the next screenshot


def resolve_marks(action: Action, marked: Marked | None, rendered: Rendered) -> Action:
    """The same action with a set-of-marks label replaced by the labelled element's box."""
    target = getattr(action, "target", None)
    if not isinstance(target, Mark):
        return action
    if marked is None or not 0 <= target.id < len(marked.marks) or marked.marks[target.id] is None:
        raise ValueError(f"label [{target.id}] is not on an element of this page")
    box = rendered.find(marked.marks[target.id]).box  # type: ignore[arg-type]
    if isinstance(action, Click):
        return Click(box)
    return Type(action.text, target=box, clear=action.clear, press_enter=action.press_enter)  # type: ignore[union-attr]


def choose_format(kind: EpisodeKind, viewport: Viewport, rng: random.Random) -> Format:
    """The native format of the viewport, or now and then the web format where it can act
    (its Type presses Enter, which would submit a form half filled)."""
    native: Format = "desktop" if viewport == "desktop" else "mobile"
    return "web" if kind in ("menu", "dropdown") and rng.random() < 0.34 else native


def episode_samples(renderer: Renderer, seed: int, viewport: Viewport, rng: random.Random, media: Media, *,
                    kind: EpisodeKind | None = None, fmt: Format | None = None,
                    language: Language | None = None) -> list[Sample]:
    """One expert episode as one sample per step; [] when it cannot be done on this page."""
    kind = kind or rng.choice(EPISODE_KINDS)
    page, goal = plan_episode(seed, kind, language=language)
    fmt = fmt or choose_format(kind, viewport, rng)
    verb = "tap" if viewport == "phone" else "click"
    tab = renderer.load(page, viewport)
    expert, history, samples, now = Expert(goal, fmt), [], [], clock(rng)
    for step in range(MAX_STEPS):
        rendered = renderer.snapshot(tab, page, viewport)
        marked = renderer.snapshot_marks(tab, rendered) if fmt == "web" else None
        png = marked.png if marked else rendered.png
        screen = Screen(decode(png), media.add_png(png))
        try:
            action, reason, eid = expert.act(rendered, marked.marks if marked else (), verb)
        except KeyError:  # the element the expert needs is off screen or hidden on this page
            log.debug("episode %s (%s) skipped at step %d: target not visible", seed, kind, step)
            return []
        mark = marked.mark_of(eid) if marked and eid else None
        if fmt == "web" and eid and mark is None:
            return []
        placed = rendered.find(eid) if eid else None
        prompt = messages(fmt, goal.task, screen, history, media, url=page.url, now=now,
                          web_elements=marked.web_elements if marked else "")
        meta = {"kind": "action", "episode": kind, "step": step, "page_seed": seed, "viewport": viewport,
                "task": goal.task, **action_meta(fmt, action, placed, mark)}
        text = answer(fmt, action, reason)
        samples.append(Sample([*prompt, {"role": "assistant", "content": text}], meta))
        if isinstance(action, (Done, Answer)):
            break
        execute(tab, resolve_marks(action, marked, rendered), rendered, touch=viewport == "phone")
        history.append(past_step(action, text, fmt, screen.image))
    if not goal.achieved(tab):
        log.warning("expert episode %s (%s, %s) did not reach its goal; dropped", seed, kind, viewport)
        return []
    return samples
