"""The mobile (Android / AndroidWorld) format: three sections, the action as one JSON object.

    Memory: the code is 4821
    Reason: the search field is at the top
    Action: {"action_type": "input_text", "text": "4821", "box_2d": [[120, 80, 880, 130]], "override": true}

`box_2d` is `[[x1,y1,x2,y2]]` in model space; a swipe's `direction` is where the finger moves.
Tolerated: the JSON inside box tokens, `box_2d` with one bracket level less or as a point,
Python-style literals (`'...'`, `True`), missing sections. `status` maps to Done / Fail.
"""

from __future__ import annotations

import json
import re

from agent.actions import (Action, Answer, Back, Box, Click, Done, Fail, Home, Key, LongPress,
                           OpenApp, Point, Swipe, Type, Wait)
from agent.formats.common import (BOX_BEGIN, BOX_END, ParsedResponse, ParseError,
                                  escape_markup, split_thinking, strip_box_tokens, to_target)

# `[^\S\n]` (blanks, not newlines): `^\s*` would scan every following blank line from every line start.
_SECTION = re.compile(r"(?im)^[^\S\n]*(Memory|Reason|Action)[^\S\n]*:")


def _load_json(fragment: str, text: str) -> dict:
    start, end = fragment.find("{"), fragment.rfind("}")
    if start < 0 or end < start:
        raise ParseError(text, 'no JSON object {"action_type": ...} found after Action:')
    candidate = fragment[start:end + 1]
    try:  # the first complete object, ignoring whatever the model wrote after it
        value, _ = json.JSONDecoder().raw_decode(fragment, start)
        if isinstance(value, dict):
            return value
    except (ValueError, RecursionError):
        pass
    for attempt in (candidate, _pythonic_to_json(candidate)):
        try:
            value = json.loads(attempt)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    raise ParseError(text, f"the action {candidate[:120]!r} is not a JSON object")


def _pythonic_to_json(candidate: str) -> str:
    """`{'action_type': 'click', 'override': True}` -> JSON; only used when JSON parsing failed."""
    if '"' not in candidate:
        candidate = candidate.replace("'", '"')
    return re.sub(r"\b(True|False|None)\b", lambda m: {"True": "true", "False": "false", "None": "null"}[m.group(1)], candidate)


def _box(data: dict, text: str, *, required: bool) -> Point | Box | None:
    value = data.get("box_2d")
    if value is None or value == [] or value == [[]]:
        if required:
            raise ParseError(text, f"{data.get('action_type')!r} needs box_2d [[x1,y1,x2,y2]]")
        return None
    if isinstance(value, str):
        value = re.findall(r"-?\d+(?:\.\d+)?", value)
    while isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if not isinstance(value, list):
        raise ParseError(text, f"box_2d {value!r} is not a list of numbers")
    if any(isinstance(v, (list, dict)) for v in value):
        raise ParseError(text, f"box_2d {value!r} holds more than one box")
    return to_target(value, text)


def _string(data: dict, key: str, text: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ParseError(text, f"{data.get('action_type')!r} needs a string {key!r}, got {value!r}")
    return value


def _dict_to_action(data: dict, text: str) -> Action:
    kind = data.get("action_type")
    if not isinstance(kind, str):
        raise ParseError(text, f"action_type {kind!r} is not a string")
    kind = kind.strip().lower()
    if kind in ("click", "tap"):
        return Click(_box(data, text, required=True))  # type: ignore[arg-type]
    if kind == "long_press":
        return LongPress(_box(data, text, required=True))  # type: ignore[arg-type]
    if kind in ("input_text", "type"):
        override = data.get("override", False)
        if isinstance(override, str):
            override = override.strip().lower() == "true"
        return Type(_string(data, "text", text), target=_box(data, text, required=False), clear=bool(override))
    if kind == "swipe" or kind == "scroll":
        direction = str(data.get("direction", "")).strip().lower()
        if direction not in ("up", "down", "left", "right"):
            raise ParseError(text, f"swipe direction {direction!r} is not up/down/left/right")
        return Swipe(direction, target=_box(data, text, required=False))  # type: ignore[arg-type]
    if kind == "keyboard_enter":
        return Key(("enter",))
    if kind == "navigate_home":
        return Home()
    if kind == "navigate_back":
        return Back()
    if kind == "open_app":
        return OpenApp(_string(data, "app_name", text))
    if kind == "wait":
        return Wait()
    if kind == "answer":
        return Answer(_string(data, "text", text))
    if kind == "status":
        status = str(data.get("goal_status", "")).strip().lower()
        if status in ("complete", "completed", "success"):
            return Done()
        if status in ("infeasible", "fail", "failed"):
            return Fail()
        raise ParseError(text, f"goal_status {status!r} is not complete or infeasible")
    raise ParseError(text, f"unknown mobile action_type {kind!r}")


def parse_action(action_text: str, *, text: str | None = None) -> Action:
    """One JSON action such as `{"action_type": "click", "box_2d": [[1,2,3,4]]}`."""
    text = action_text if text is None else text
    return _dict_to_action(_load_json(strip_box_tokens(action_text), text), text)


def _sections(body: str) -> dict[str, str]:
    marks = list(_SECTION.finditer(body))
    sections = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        name = mark.group(1).lower()
        if name == "action" or name not in sections:  # the last Action: wins
            sections[name] = body[mark.end():end].strip()
    return sections


def parse_response(text: str) -> ParsedResponse:
    thinking, body = split_thinking(text)
    sections = _sections(body)
    action = parse_action(sections.get("action", body), text=text)
    return ParsedResponse(action, thinking=thinking, reason=sections.get("reason") or None,
                          memory=sections.get("memory") or None)


def _box_json(target: object) -> list[list[int]]:
    if isinstance(target, Box):
        return [target.as_list()]
    if isinstance(target, Point):  # a point is the one-cell box around it
        return [[target.x, target.y, target.x, target.y]]
    raise ValueError(f"mobile actions need a Point or Box target, got {target!r}")


def _action_dict(action: Action) -> dict:
    if isinstance(action, Click):
        if action.button != "left" or action.count != 1:
            raise ValueError(f"the mobile format has only single taps, got button={action.button} count={action.count}")
        return {"action_type": "click", "box_2d": _box_json(action.target)}
    if isinstance(action, LongPress):
        return {"action_type": "long_press", "box_2d": _box_json(action.target)}
    if isinstance(action, Type):
        if action.press_enter:
            raise ValueError("mobile input_text does not press Enter; add a keyboard_enter action")
        data: dict = {"action_type": "input_text", "text": action.text}
        if action.target is not None:
            data["box_2d"] = _box_json(action.target)
        data["override"] = action.clear
        return data
    if isinstance(action, Swipe):
        data = {"action_type": "swipe", "direction": action.direction}
        if action.target is not None:
            data["box_2d"] = _box_json(action.target)
        return data
    if isinstance(action, Key) and action.keys == ("enter",):
        return {"action_type": "keyboard_enter"}
    simple = {Home: "navigate_home", Back: "navigate_back", Wait: "wait"}
    if type(action) in simple:
        return {"action_type": simple[type(action)]}
    if isinstance(action, OpenApp):
        return {"action_type": "open_app", "app_name": action.name}
    if isinstance(action, Answer):
        return {"action_type": "answer", "text": action.text}
    if isinstance(action, Done):
        return {"action_type": "status", "goal_status": "complete"}
    if isinstance(action, Fail):
        return {"action_type": "status", "goal_status": "infeasible"}
    raise ValueError(f"the mobile format cannot express {action!r}")


def serialise_action(action: Action) -> str:
    return escape_markup(json.dumps(_action_dict(action), ensure_ascii=False))


def serialise_response(parsed: ParsedResponse) -> str:
    """`Memory: ...\\nReason: ...\\nAction: <|begin_of_box|>{json}<|end_of_box|>`."""
    head = f"<think>{parsed.thinking}</think>\n" if parsed.thinking is not None else ""
    return (f"{head}Memory: {parsed.memory or ''}\nReason: {parsed.reason or ''}\n"
            f"Action: {BOX_BEGIN}{serialise_action(parsed.action)}{BOX_END}")
