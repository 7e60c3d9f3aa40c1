"""Parse model output into actions and write actions back, in the released model's formats.

Pure functions, no I/O. `platform` picks the format: "desktop" (OSWorld-style calls),
"mobile" (AndroidWorld JSON) or "web" (WebVoyager set-of-marks); the per-format details live in
`agent.formats.<platform>`. Malformed output raises `ParseError` (a `ValueError`) carrying the
text, and nothing else: the loop feeds the error back to the model and asks again.

    parse_response(text, platform) -> ParsedResponse(action, thinking, reason, memory)
    parse_action(action_text, platform) -> Action           # just the action part
    serialise_action(action, platform) -> str               # canonical action text
    serialise_response(parsed, platform) -> str             # a whole canonical answer
    parse_box(text) -> Box                                  # a grounding answer's box

`serialise_action(parse_action(x)) == x` and `serialise_response(parse_response(x)) == x` for
canonical text; serialising an action the format cannot express raises `ValueError`.
"""

from __future__ import annotations

from types import ModuleType

from agent.actions import Action
from agent.environment import Platform
from agent.formats import desktop, mobile, web
from agent.formats.common import ParsedResponse, ParseError, parse_box

__all__ = ["ParseError", "ParsedResponse", "parse_action", "parse_box", "parse_response",
           "serialise_action", "serialise_response"]

_FORMATS: dict[str, ModuleType] = {"desktop": desktop, "mobile": mobile, "web": web}


def _format(platform: Platform) -> ModuleType:
    try:
        return _FORMATS[platform]
    except (KeyError, TypeError):
        raise ValueError(f"platform {platform!r} is not one of {sorted(_FORMATS)}") from None


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"model output must be a str, got {type(text).__name__}")
    return text


def parse_response(text: str, platform: Platform) -> ParsedResponse:
    """A whole model answer (thinking, sections, action) in `platform`'s format."""
    fmt = _format(platform)
    text = _check_text(text)
    try:
        return fmt.parse_response(text)
    except ParseError:
        raise
    except (ValueError, RecursionError) as error:  # an action dataclass rejected a value
        raise ParseError(text, str(error)) from error


def parse_action(action_text: str, platform: Platform) -> Action:
    """Only the action (e.g. `Click [3]`), box tokens allowed around it."""
    fmt = _format(platform)
    action_text = _check_text(action_text)
    try:
        return fmt.parse_action(action_text)
    except ParseError:
        raise
    except (ValueError, RecursionError) as error:
        raise ParseError(action_text, str(error)) from error


def serialise_action(action: Action, platform: Platform) -> str:
    return _format(platform).serialise_action(action)


def serialise_response(parsed: ParsedResponse, platform: Platform) -> str:
    return _format(platform).serialise_response(parsed)
