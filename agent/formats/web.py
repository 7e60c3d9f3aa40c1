"""The web (WebVoyager, set-of-marks) format: numbered labels instead of coordinates.

    Thought: the search box is label 4
    Action: Type [4]; [cheap flights]
    Memory_Updated: {}

Actions: `Click [N]`, `Type [N]; [text]` (the system clears the field first and presses Enter
after, as the prompt tells the model), `Scroll [N|WINDOW]; [up|down]`, `Wait`, `GoBack`,
`Bing`, `Key; [Return]`, `ANSWER; <content>...</content>`. The official example parser only
reads answers wrapped in `<answer>` tags, which GLM-4.5V no longer emits; this one reads the
sections wherever they are. Brackets, a trailing full stop, case and spacing may vary.
"""

from __future__ import annotations

import re

from agent.actions import Action, Answer, Back, Click, Key, Mark, Navigate, Scroll, Type, Wait
from agent.formats.common import ParsedResponse, ParseError, split_thinking, strip_box_tokens
from agent.formats.desktop import normalise_key

BING_URL = "https://www.bing.com/"
# `[^\S\n]` (blanks, not newlines): `^\s*` would scan every following blank line from every line start.
_SECTION = re.compile(r"(?im)^[^\S\n]*(Thought|Action|Memory_Updated)[^\S\n]*:")
# Each optional bracket owns the blanks after it (`(?:\[\s*)?`, never `\[?\s*`): two `\s*` around
# an optional character can split a run of blanks in n ways, and a failed match tries them all.
_LABEL = r"(?:\[\s*)?(\d{1,6})\s*(?:\]\s*)?"
_WEB_KEY_NAMES = {"enter": "Return"}  # the prompt's only key; others keep our names


def _strip_brackets(value: str) -> str:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        return value[1:-1]
    return value


def _key_chord(line: str) -> str | None:
    r"""`Key; [ctrl+a]` -> "ctrl+a" (brackets and separator optional), else None. Written out
    rather than as one regex: `\[?\s*(.+?)\s*\]?` is quadratic in a run of blanks."""
    head = re.match(r"(?is)key\s*(?:[;:,]\s*)?", line)
    if head is None:
        return None
    rest = line[head.end():].removeprefix("[")
    chord = (rest[:-1] if rest.endswith("]") else rest).strip()
    return chord if chord and "]" not in chord else None


def parse_action(action_text: str, *, text: str | None = None) -> Action:
    """One action line such as `Click [3]` or `ANSWER; <content>42</content>`."""
    text = action_text if text is None else text
    line = strip_box_tokens(action_text).strip().strip("`").strip()
    answer = re.match(r"(?is)answer\s*[;:]?\s*(.*)$", line)
    if answer:
        content = re.search(r"(?s)<content>(.*?)(?:</content>|$)", answer.group(1))
        body = content.group(1) if content else _strip_brackets(answer.group(1).rstrip("."))
        return Answer(body.strip())
    line = line.rstrip(".").strip()
    if (m := re.fullmatch(r"(?is)click\s*" + _LABEL, line)):
        return Click(Mark(int(m.group(1))))
    if (m := re.fullmatch(r"(?is)type\s*" + _LABEL + r"[;:,]\s*(.*)", line)):
        return Type(_strip_brackets(m.group(2)), target=Mark(int(m.group(1))), clear=True, press_enter=True)
    if (m := re.fullmatch(r"(?is)scroll\s*(?:\[\s*)?(\d{1,6}|window)\s*(?:\]\s*)?[;:,]\s*(?:\[\s*)?(up|down)\s*\]?", line)):
        target = None if m.group(1).lower() == "window" else Mark(int(m.group(1)))
        return Scroll(m.group(2).lower(), target=target)  # type: ignore[arg-type]
    if (chord := _key_chord(line)) is not None:
        keys = tuple(normalise_key(k) for k in chord.split("+"))
        if not all(keys):
            raise ParseError(text, f"key chord {chord!r} has an empty key")
        return Key(keys)
    simple = {"wait": Wait(5.0), "goback": Back(), "go back": Back(), "bing": Navigate(BING_URL)}
    if line.lower() in simple:
        return simple[line.lower()]
    raise ParseError(text, f"{line[:80]!r} is not a web action (Click [N], Type [N]; [text], "
                           "Scroll [N|WINDOW]; [up|down], Wait, GoBack, Bing, Key; [Return], ANSWER; <content>..</content>)")


def _sections(body: str) -> dict[str, str]:
    marks = list(_SECTION.finditer(body))
    sections = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        sections.setdefault(mark.group(1).lower(), body[mark.end():end].strip())
    return sections


def parse_response(text: str) -> ParsedResponse:
    thinking, body = split_thinking(text)
    sections = _sections(body)
    if "action" not in sections:
        raise ParseError(text, "no 'Action:' line found")
    if not sections["action"]:
        raise ParseError(text, "the 'Action:' line is empty")
    try:
        action = parse_action(sections["action"], text=text)
    except ParseError:  # an explanation after the action line: the first line alone may be it
        first = sections["action"].splitlines()[0]
        if first == sections["action"]:
            raise
        action = parse_action(first, text=text)
    return ParsedResponse(action, thinking=thinking, reason=sections.get("thought") or None,
                          memory=sections.get("memory_updated") or None)


def _label(target: object) -> str:
    if not isinstance(target, Mark):
        raise ValueError(f"web actions point at set-of-marks labels (Mark), got {target!r}")
    return f"[{target.id}]"


def serialise_action(action: Action) -> str:
    if isinstance(action, Click):
        if action.button != "left" or action.count != 1:
            raise ValueError(f"the web format has only left single clicks, got {action.button} x{action.count}")
        return f"Click {_label(action.target)}"
    if isinstance(action, Type):
        if not (action.clear and action.press_enter):
            raise ValueError("web Type always clears the field and presses Enter: "
                             f"got clear={action.clear}, press_enter={action.press_enter}")
        return f"Type {_label(action.target)}; [{action.text}]"
    if isinstance(action, Scroll):
        if action.direction not in ("up", "down"):
            raise ValueError(f"web Scroll goes up or down, got {action.direction!r}")
        where = "[WINDOW]" if action.target is None else _label(action.target)
        return f"Scroll {where}; [{action.direction}]"
    if isinstance(action, Wait):
        return "Wait"
    if isinstance(action, Back):
        return "GoBack"
    if isinstance(action, Navigate) and action.url == BING_URL:
        return "Bing"
    if isinstance(action, Key):
        return f"Key; [{'+'.join(_WEB_KEY_NAMES.get(k, k) for k in action.keys)}]"
    if isinstance(action, Answer):
        return f"ANSWER; <content>{action.text}</content>"
    raise ValueError(f"the web format cannot express {action!r}")


def serialise_response(parsed: ParsedResponse) -> str:
    head = f"<think>{parsed.thinking}</think>\n" if parsed.thinking is not None else ""
    return (f"{head}Thought: {parsed.reason or ''}\nAction: {serialise_action(parsed.action)}\n"
            f"Memory_Updated: {parsed.memory if parsed.memory is not None else '{}'}")
