"""Safety checks the loop runs before every action: sensitive actions and secrets.

Sensitive actions need a yes from a confirmation callback; without a callback they are refused.
What counts as sensitive (deliberately broad: a false alarm costs one question, a miss may
cost money or data):
- typing into a password field (the element under the target, or the focused one);
- submitting (clicking a button / link / submit input, Enter, typing with Enter) on a page
  that looks like payment or deletion: the URL, title, element text or form action mentions
  pay, checkout, card, purchase, delete, remove, close account, unsubscribe, ...;
- closing windows: alt+f4, ctrl+w, ctrl+q, ctrl+shift+w, super+q, or clicking an element the
  model itself calls "close" on the desktop.

Secrets are given to the agent as a name -> value map and written into tasks and actions as
placeholders `{{secret:name}}`. The model only ever sees the placeholder; `Secrets.reveal`
substitutes values into the action handed to the environment, and `Secrets.scrub` replaces any
value that shows up in text (a model echo, a URL, a page title) by its placeholder before
anything is logged, recorded or put in a prompt: the value as written and in the encodings text
carries it in (URL/percent and form encoding, HTML character references, JSON escapes, base64;
`agent.secret_patterns`), in any mix. Screenshots cannot be scrubbed: a secret typed into a visible
(non-password) field is on the next screenshot.

URL allow / block rules are `agent.domains.DomainRules`; the loop applies them to `Navigate`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.actions import Action, Click, Key, Navigate, Target, Type
from agent.environment import ElementInfo, Environment, Observation
from agent.secret_patterns import secret_pattern

logger = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\{\{secret:([A-Za-z0-9_.\-]+)\}\}")
RISKY_PAGE = re.compile(
    r"\bpay(ment)?|checkout|check-out|billing|purchase|\bbuy\b|place[ _-]?order|credit[ _-]?card|card[ _-]?number"
    r"|\bcvv\b|\bcvc\b|wire|transfer|delete|deletion|remove|erase|destroy|close[ _-]?account|deactivate"
    r"|unsubscribe|cancel[ _-]?subscription|drop[ _-]?table", re.IGNORECASE)
CLOSE_CHORDS = {("alt", "f4"), ("ctrl", "w"), ("ctrl", "q"), ("ctrl", "shift", "w"), ("super", "q"),
                ("ctrl", "f4")}
SUBMIT_TAGS = {"button", "a", "input", "summary"}
CLOSE_ELEMENT = re.compile(r"\bclose\b|\bquit\b|\bexit\b", re.IGNORECASE)


@dataclass(frozen=True)
class SensitiveAction:
    """An action the loop will not run without confirmation; `reason` says why, for a human."""

    action: Action
    reason: str
    url: str | None = None


Confirm = Callable[[SensitiveAction], bool]


def _describe(env: Environment, target: Target | None, observation: Observation) -> ElementInfo | None:
    """The element under `target` (None: the focused element, where the environment can tell)."""
    try:
        return env.describe(target, observation)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001 - e.g. a page navigating away; the URL checks still apply
        logger.warning("could not describe the element under %r: %s", target, error)
        return None


def _is_submit(info: ElementInfo | None) -> bool:
    if info is None:
        return True  # unknown element: assume it may submit
    if info.tag == "input":
        return info.input_type in ("submit", "image", "button")
    return info.tag in SUBMIT_TAGS or info.form_action is not None


def _risky_page(observation: Observation, info: ElementInfo | None) -> str | None:
    for what, text in (("element", info.text if info else None), ("form action", info.form_action if info else None),
                       ("page URL", observation.url), ("page title", observation.title)):
        if text and (match := RISKY_PAGE.search(text)):
            return f"{what} mentions {match.group(0)!r}"
    return None


def sensitivity(action: Action, observation: Observation, env: Environment) -> str | None:
    """Why `action` needs confirmation on this screen, or None when it does not."""
    if isinstance(action, Key) and tuple(action.keys) in CLOSE_CHORDS:
        return f"closing a window ({'+'.join(action.keys)})"
    if isinstance(action, Click) and action.element_info and CLOSE_ELEMENT.search(action.element_info) \
            and env.platform == "desktop":
        return f"closing a window (clicking {action.element_info!r})"
    if isinstance(action, Type):
        info = _describe(env, action.target, observation)
        if info is not None and info.input_type == "password":
            return "typing into a password field"
        if action.press_enter and (risk := _risky_page(observation, info)):
            return f"submitting on a page that looks like payment or deletion ({risk})"
        return None
    if isinstance(action, Key) and action.keys[-1] == "enter":
        info = _describe(env, None, observation)
        if (risk := _risky_page(observation, info)):
            return f"submitting with Enter on a page that looks like payment or deletion ({risk})"
        return None
    if isinstance(action, Click) and action.button == "left":
        info = _describe(env, action.target, observation)
        if _is_submit(info) and (risk := _risky_page(observation, info)):
            return f"clicking {info.text if info and info.text else 'an element'!r} on a page that looks like " \
                   f"payment or deletion ({risk})"
    return None


def check(action: Action, observation: Observation, env: Environment, confirm: Confirm | None) -> SensitiveAction | None:
    """None when `action` may run; else the refused `SensitiveAction` (no callback, or it said no)."""
    reason = sensitivity(action, observation, env)
    if reason is None:
        return None
    sensitive = SensitiveAction(action, reason, observation.url)
    if confirm is None:
        logger.info("refused without a confirmation callback: %s", reason)
        return sensitive
    if confirm(sensitive):
        logger.info("confirmed: %s", reason)
        return None
    logger.info("refused by the confirmation callback: %s", reason)
    return sensitive


class Secrets:
    """Named secret values, used only through placeholders `{{secret:name}}`."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        values = dict(values or {})
        for name, value in values.items():
            if not PLACEHOLDER.fullmatch(f"{{{{secret:{name}}}}}"):
                raise ValueError(f"secret name {name!r} may only use letters, digits, '_', '.', '-'")
            if not isinstance(value, str) or not value:
                raise ValueError(f"secret {name!r} must be a non-empty string")
        self._values = values
        # one pass over all secrets, longest first; placeholders already in the text stay
        names = sorted(values, key=lambda name: -len(values[name]))
        self._groups = {f"s{i}": name for i, name in enumerate(names)}
        self._pattern = re.compile("|".join([PLACEHOLDER.pattern] + [
            f"(?P<{group}>{secret_pattern(values[name])})" for group, name in self._groups.items()]))

    def __repr__(self) -> str:
        return f"Secrets({sorted(self._values)})"  # names only

    def __bool__(self) -> bool:
        return bool(self._values)

    @staticmethod
    def placeholder(name: str) -> str:
        return f"{{{{secret:{name}}}}}"

    def _substitute(self, text: str) -> str:
        def value(match: re.Match) -> str:
            name = match.group(1)
            if name not in self._values:
                raise ValueError(f"unknown secret {name!r}; known: {sorted(self._values)}")
            return self._values[name]
        return PLACEHOLDER.sub(value, text)

    def reveal(self, action: Action) -> Action:
        """`action` with placeholders in typed text and URLs replaced by values (for execution only)."""
        if isinstance(action, Type):
            return dataclasses.replace(action, text=self._substitute(action.text))
        if isinstance(action, Navigate):
            return dataclasses.replace(action, url=self._substitute(action.url))
        return action

    def scrub_action(self, action: Action) -> Action:
        """`action` with secret values in its text fields replaced by placeholders (for records)."""
        if not self._values:
            return action
        changes = {f.name: self.scrub(getattr(action, f.name)) for f in dataclasses.fields(action)
                   if isinstance(getattr(action, f.name), str)}
        return dataclasses.replace(action, **changes)

    def scrub(self, text: str | None) -> str | None:
        """`text` with every secret value, in any of its encodings, replaced by its placeholder
        (longest values first)."""
        if not text or not self._values:
            return text
        return self._pattern.sub(self._placeholder_for, text)

    def _placeholder_for(self, match: re.Match) -> str:
        group = match.lastgroup
        return match.group(0) if group is None else self.placeholder(self._groups[group])
