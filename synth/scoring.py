"""Scoring model answers against the data engine's ground truth (`Sample.meta`). Pure functions.

Answers are parsed with the agent's own parsers (`agent.parsing`), so an answer counts only
if the live agent could have executed it. The rules:

- grounding: the centre of the answered box (or the answered point) lies in the element's box;
- action: same action type, and the target hits the element: a point inside its box (desktop),
  a box whose centre is inside it (mobile), the same set-of-marks label (web); typed text equal;
- qa / video "what" and "order": equal after normalising case, punctuation and articles,
  counts by their first integer;
- video "when": the first number in the answer within 1 s of the event's second.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from agent.actions import Answer, Box, Click, Mark, Point, Type
from agent.formats.common import split_thinking, strip_box_tokens
from agent.parsing import ParseError, parse_box, parse_response

WHEN_TOLERANCE_S = 1.0


def normalise(text: str) -> str:
    """Lower case, no thinking, no box tokens, no punctuation, no leading article, single spaces."""
    _, text = split_thinking(text)
    text = unicodedata.normalize("NFKC", strip_box_tokens(text)).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    text = " ".join(text.split())
    return re.sub(r"^(the|a|an) ", "", text)


def _first_number(text: str) -> float | None:
    _, text = split_thinking(text)
    match = re.search(r"-?\d+(?:\.\d+)?", strip_box_tokens(text))
    return float(match.group()) if match else None


def score_grounding(meta: dict[str, Any], answer: str) -> bool:
    try:
        predicted = parse_box(answer)
    except ParseError:
        return False
    return Box(*meta["box"]).contains(predicted.center)


def _hits(target: object, meta: dict[str, Any]) -> bool:
    truth = Box(*meta["box"])
    if isinstance(target, Point):
        return truth.contains(target)
    if isinstance(target, Box):
        return truth.contains(target.center)
    if isinstance(target, Mark):
        return meta["mark"] is not None and target.id == meta["mark"]
    return False


def score_action(meta: dict[str, Any], answer: str) -> bool:
    try:
        action = parse_response(answer, meta["format"]).action
    except ParseError:
        return False
    kind = meta["action_type"]
    if kind == "click":
        return isinstance(action, Click) and action.button == "left" and action.count == 1 and _hits(action.target, meta)
    if kind == "type":
        if not isinstance(action, Type) or action.text.strip() != meta["text"].strip():
            return False
        return action.target is None if meta["format"] == "desktop" else _hits(action.target, meta)
    if kind == "answer":
        return isinstance(action, Answer) and normalise(action.text) == normalise(meta["text"])
    return type(action).__name__.lower() == kind  # done


def score_qa(meta: dict[str, Any], answer: str) -> bool:
    if meta.get("question_type") == "count":
        number = _first_number(answer)
        return number is not None and number == float(meta["answer"])
    return normalise(answer) == normalise(meta["answer"])


def score_video(meta: dict[str, Any], answer: str) -> bool:
    if meta["question_type"] == "when":
        number = _first_number(answer)
        return number is not None and abs(number - meta["second"]) <= WHEN_TOLERANCE_S
    return normalise(answer) == normalise(meta["answer"])


_SCORERS = {"grounding": score_grounding, "action": score_action, "qa": score_qa, "video": score_video}


def score(meta: dict[str, Any], answer: str) -> bool:
    """Whether `answer` (raw model text) is right for the sample whose ground truth is `meta`."""
    kind = meta.get("kind")
    if kind not in _SCORERS:
        raise ValueError(f"sample kind {kind!r} has no scorer; expected one of {sorted(_SCORERS)}")
    if not isinstance(answer, str):
        raise TypeError(f"answer must be the model's text (str), got {type(answer).__name__}")
    return _SCORERS[kind](meta, answer)
