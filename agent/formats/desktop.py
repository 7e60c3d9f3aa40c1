"""The desktop (Ubuntu / OSWorld) format: Python-call-like actions inside box tokens.

    I need to confirm the dialog. <|begin_of_box|>left_click(start_box='[586, 446]', element_info='OK button')<|end_of_box|>
    Memory:
    []

The call is parsed with a small hand-written scanner, never `eval` (model output is not code).
Real outputs quote with ' or ", sometimes not at all, put unescaped quotes inside `content`
(`type(content='it's')`), write points as `[x,y]`, `[x, y]` or `(x,y)`, and occasionally give a
four-number box where a point is expected; all of that is accepted. Canonical output (what
`serialise` writes) is the form the released model emits in its own history:
`left_click(start_box='[586, 446]', element_info='OK button')`.
"""

from __future__ import annotations

import re

from agent.actions import (Action, Answer, Click, Done, Drag, Fail, Hover, Key, Point, Box,
                           Scroll, Type, Wait)
from agent.formats.common import (BOX_BEGIN, BOX_END, ParsedResponse, ParseError, boxed,
                                  escape_markup, format_point_or_box, numbers_in, split_thinking,
                                  strip_box_tokens, to_target)

_CLICKS = {
    "left_click": ("left", 1), "click": ("left", 1), "right_click": ("right", 1),
    "middle_click": ("middle", 1), "left_double_click": ("left", 2), "double_click": ("left", 2),
}
_NAMES = (*_CLICKS, "hover", "left_drag", "drag", "key", "hotkey", "type", "scroll", "wait",
          "done", "fail")
_CALL = re.compile(r"\b(" + "|".join(_NAMES) + r")\s*\(", re.IGNORECASE)
_ARG_NAME = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}

# One name per key everywhere: the vocabulary's lower-case names, whatever the model wrote.
KEY_ALIASES = {"return": "enter", "esc": "escape", "control": "ctrl", "del": "delete",
               "cmd": "super", "win": "super", "meta": "super", "pgup": "pageup",
               "pgdn": "pagedown", "page_up": "pageup", "page_down": "pagedown"}


def normalise_key(name: str) -> str:
    name = name.strip().lower()
    return KEY_ALIASES.get(name, name)


def _unescape(value: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return chr(int(code[1:], 16)) if code.startswith("u") and len(code) == 5 else _ESCAPES.get(code, m.group(0))
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, value)


def _escape(value: str) -> str:
    return escape_markup(value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n"))


_AFTER_VALUE = re.compile(r"\s*(?:,\s*[A-Za-z_]\w*\s*=|\Z)")


def _closing_quote(inner: str, start: int, quote: str) -> int | None:
    j = start
    while j < len(inner):
        if inner[j] == "\\":
            j += 2
            continue
        if inner[j] == quote and _AFTER_VALUE.match(inner, j + 1):
            return j
        j += 1
    return None


def _parse_args(inner: str, text: str) -> dict[str, str]:
    """`k='v', k2=[1,2], k3=5` -> {k: v, ...}; values stay strings."""
    args: dict[str, str] = {}
    closers: dict[str, int] = {}
    i = 0
    while i < len(inner):
        if inner[i] in ", \t\n":
            i += 1
            continue
        match = _ARG_NAME.match(inner, i)
        if match is None:
            raise ParseError(text, f"expected name=value in the argument list, got {inner[i:i + 40]!r}")
        name, i = match.group(1).lower(), match.end()
        if i < len(inner) and inner[i] in "'\"":
            # A quoted value ends at the quote that is followed by `, name=` or by the end: this
            # keeps unescaped quotes and commas inside the text where the model put them.
            quote, start = inner[i], i + 1
            close = _closing_quote(inner, start, quote)
            if close is None:
                raise ParseError(text, f"unterminated {quote}-quoted value for {name!r}")
            args[name] = _unescape(inner[start:close])
            i = close + 1
        else:
            end = _bare_end(inner, i, closers)
            args[name] = inner[i:end].strip()
            i = end
    return args


def _bare_end(inner: str, i: int, closers: dict[str, int]) -> int:
    """Where an unquoted value starting at `i` ends: after the `]` / `)` closing a bracket it opens
    with, else at the next comma. `closers` remembers the next `]` and `)` found (-1: none left),
    so a long run of unclosed `[` is scanned once, not once per value (that was quadratic)."""
    closer = {"[": "]", "(": ")"}.get(inner[i:i + 1])
    if closer is not None:
        if -1 < closers.get(closer, -2) < i or closer not in closers:
            closers[closer] = inner.find(closer, i)
        if closers[closer] != -1:
            return closers[closer] + 1
    comma = inner.find(",", i)
    return len(inner) if comma == -1 else comma


def _target(args: dict[str, str], name: str, text: str) -> Point | Box:
    if name not in args:
        raise ParseError(text, f"missing {name}=")
    return to_target(numbers_in(strip_box_tokens(args[name])), text)


def _call_to_action(name: str, args: dict[str, str], text: str) -> Action:
    info = args.get("element_info") or None
    if name in _CLICKS:
        button, count = _CLICKS[name]
        return Click(_target(args, "start_box", text), button=button, count=count, element_info=info)
    if name == "hover":
        return Hover(_target(args, "start_box", text), element_info=info)
    if name in ("left_drag", "drag"):
        return Drag(_target(args, "start_box", text), _target(args, "end_box", text), element_info=info)
    if name in ("key", "hotkey"):
        keys = args.get("keys", args.get("key", ""))
        parts = tuple(normalise_key(k) for k in keys.strip().split("+"))  # normalise_key strips
        if not keys.strip() or not all(parts):
            raise ParseError(text, f"key chord {keys!r} is empty or has an empty key")
        return Key(parts)
    if name == "type":
        if "content" not in args:
            raise ParseError(text, "type() without content=")
        return Type(args["content"])
    if name == "scroll":
        direction = args.get("direction", "").strip().lower()
        if direction not in ("up", "down", "left", "right"):
            raise ParseError(text, f"scroll direction {direction!r} is not up/down/left/right")
        step = args.get("step", "5").strip()
        if not step.isdigit() or not 0 < int(step) <= 100:
            raise ParseError(text, f"scroll step {step!r} is not an integer in 1..100")
        target = _target(args, "start_box", text) if "start_box" in args else None
        return Scroll(direction, target=target, steps=int(step), element_info=info)  # type: ignore[arg-type]
    if name == "wait":
        return Wait(5.0)  # the prompt promises 5 seconds
    if name == "done":
        return Done()
    return Fail()


def parse_action(action_text: str, *, text: str | None = None) -> Action:
    """One call such as `left_click(start_box='[1, 2]')` (box tokens allowed around it)."""
    text = action_text if text is None else text
    call = strip_box_tokens(action_text)
    match = _CALL.search(call)
    if match is None:
        raise ParseError(text, f"no desktop action call found (expected one of {', '.join(_NAMES)})")
    close = call.rfind(")")
    if close < match.end() - 1:
        raise ParseError(text, f"call {match.group(1)}( is never closed with ')'")
    args = _parse_args(call[match.end():close], text)
    return _call_to_action(match.group(1).lower(), args, text)


def parse_response(text: str) -> ParsedResponse:
    thinking, body = split_thinking(text)
    # Memory follows the action: look for it after the last box, so that a `Memory:` inside
    # the reason or the typed text does not cut the answer short.
    after = body.rfind(BOX_END) + 1 if BOX_END in body else 0
    split = body.find("Memory:", after)
    body, memory = (body, "") if split < 0 else (body[:split], body[split + len("Memory:"):])
    inner = boxed(body)
    if inner is not None and _CALL.search(inner):
        action = parse_action(inner, text=text)
        reason = body[:body.rfind(BOX_BEGIN)] if BOX_BEGIN in body else body.split("<|", 1)[0]
    else:  # no box, or a box around the coordinates only: `left_click(start_box='<|begin_of_box|>[1,2]...')`
        body = strip_box_tokens(body)
        calls = list(_CALL.finditer(body))
        if not calls:
            raise ParseError(text, "no desktop action call found")
        action = parse_action(body[calls[-1].start():], text=text)
        reason = body[:calls[-1].start()]
    return ParsedResponse(action, thinking=thinking, reason=reason.strip() or None,
                          memory=memory.strip() if memory.strip() else None)


def serialise_action(action: Action) -> str:
    def point(target: object) -> str:
        if not isinstance(target, (Point, Box)):
            raise ValueError(f"desktop actions need a Point or Box target, got {target!r}")
        return f"'{format_point_or_box(target)}'"

    def info(element_info: str | None) -> str:
        return "" if element_info is None else f", element_info='{_escape(element_info)}'"

    if isinstance(action, Click):
        names = {value: name for name, value in _CLICKS.items() if name not in ("click", "double_click")}
        name = names.get((action.button, action.count))
        if name is None:
            raise ValueError(f"the desktop format has no {action.button} click with count={action.count}")
        return f"{name}(start_box={point(action.target)}{info(action.element_info)})"
    if isinstance(action, Hover):
        return f"hover(start_box={point(action.target)}{info(action.element_info)})"
    if isinstance(action, Drag):
        return f"left_drag(start_box={point(action.start)}, end_box={point(action.end)}{info(action.element_info)})"
    if isinstance(action, Key):
        return f"key(keys='{_escape('+'.join(action.keys))}')"
    if isinstance(action, Type):
        if action.target is not None or action.clear or action.press_enter:
            raise ValueError("desktop type() only types into the focused field: "
                             f"got target={action.target!r}, clear={action.clear}, press_enter={action.press_enter}")
        return f"type(content='{_escape(action.text)}')"
    if isinstance(action, Scroll):
        if action.target is None:
            raise ValueError("desktop scroll() needs a start_box target, got None")
        return (f"scroll(start_box={point(action.target)}, direction='{action.direction}', "
                f"step={action.steps}{info(action.element_info)})")
    if isinstance(action, Wait):
        return "WAIT()"
    if isinstance(action, Done):
        return "DONE()"
    if isinstance(action, Fail):
        return "FAIL()"
    if isinstance(action, Answer):
        raise ValueError("the desktop format has no answer action (use DONE() and put the answer in the reason)")
    raise ValueError(f"the desktop format cannot express {action!r}")


def serialise_response(parsed: ParsedResponse) -> str:
    """`<think>..</think>reason\\n<|begin_of_box|>action<|end_of_box|>\\nMemory:\\nmemory`."""
    head = f"<think>{parsed.thinking}</think>\n" if parsed.thinking is not None else ""
    reason = f"{parsed.reason}\n" if parsed.reason else ""
    memory = parsed.memory if parsed.memory is not None else "[]"
    return f"{head}{reason}{BOX_BEGIN}{serialise_action(parsed.action)}{BOX_END}\nMemory:\n{memory}"
