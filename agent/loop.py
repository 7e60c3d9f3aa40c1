"""The agent loop: observe, prompt, ask the policy, parse, check, execute, record.

    agent = Agent(policy=OpenAIPolicy(url, "glm-4.5v"), env=BrowserEnv((1280, 720)), platform="desktop")
    trajectory = agent.run("Sign in as bob", start_url="https://example.com", max_steps=20)

A run stops on Done / Fail / Answer, on the step or time budget, when the model proposes the
same action on an unchanged screen `loop_after` times in a row, when an environment reports a
refused URL (`BlockedURL`: a redirect, popup or request to a blocked domain), or when an
answer still does not parse after `parse_retries` re-asks. A parse error is re-asked by
appending the bad answer and the error to the conversation, the only time the conversation
has more than one turn.

A refused action (sensitive without confirmation, a `Navigate` outside the URL rules, an action
the environment cannot perform) is not fatal: it is recorded, and the next prompt's history
says it was refused, so the model can choose differently; repeating it runs into the loop
detector or the budget.

`platform` picks the released format the model answers in. It need not equal the environment's:
a browser can be driven in the desktop (coordinate) format as well as in the web (set-of-marks)
format; the web format needs `BrowserEnv(set_of_marks=True)`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageChops
from agent.actions import Action, Answer, Done, Fail, Mark, Navigate
from agent.domains import BlockedURL, DomainRules
from agent.environment import Environment, Observation, Platform
from agent.parsing import ParsedResponse, ParseError, parse_response, serialise_action
from agent.policy import PolicyError, as_policy
from agent.prompts import PastStep, build_messages, describe_marks
from agent.safety import Confirm, Secrets, check
from agent.trajectory import Recorder, Step, Trajectory

logger = logging.getLogger(__name__)

PARSE_RETRY_PROMPT = ("Your previous answer could not be used: {reason}. Answer again, with exactly one action in the "
                      "required output format.")
MAX_DESCRIBED_MARKS = 80  # element text for the web prompt; beyond this the screenshot must do
OBSERVE_RETRY_S = 0.5


@dataclass
class _State:
    history: list[PastStep] = field(default_factory=list)
    memory: str | None = None
    last_action: Action | None = None
    last_screen: Image.Image | None = None
    repeats: int = 0


class Agent:
    """Drives `env` with `policy` in one of the released formats.

    `policy` is any callable messages -> text, or a `VLM`. `rules` limits `Navigate` targets
    (default: the environment's own `rules`, else `DomainRules()`). `confirm` is asked before
    sensitive actions; without it they are refused. `secrets` maps names to values used as
    `{{secret:name}}` placeholders. `record` is a directory for the recording.
    """

    def __init__(self, *, policy: Any, env: Environment, platform: Platform | None = None,
                 rules: DomainRules | None = None, confirm: Confirm | None = None,
                 secrets: Mapping[str, str] | Secrets | None = None, record: str | None = None,
                 parse_retries: int = 2, loop_after: int = 3) -> None:
        platform = platform or env.platform
        if platform not in ("desktop", "mobile", "web"):
            raise ValueError(f"platform={platform!r}; expected 'desktop', 'mobile' or 'web'")
        if parse_retries < 0 or loop_after < 2:
            raise ValueError(f"parse_retries={parse_retries} must be >= 0 and loop_after={loop_after} >= 2")
        self.policy: Callable[[list], str] = as_policy(policy)
        self.env = env
        self.platform: Platform = platform
        self.rules = rules or env.rules or DomainRules()
        self.confirm = confirm
        self.secrets = secrets if isinstance(secrets, Secrets) else Secrets(secrets)
        self.record = record
        self.parse_retries = parse_retries
        self.loop_after = loop_after
        self._images = "pil" if getattr(self.policy, "accepts_pil", False) else "data_url"

    # --- the run --------------------------------------------------------------------------

    def run(self, task: str, *, start_url: str | None = None, max_steps: int = 30, timeout_s: float = 600.0,
            on_step: Callable[[Step], None] | None = None) -> Trajectory:
        """Run `task` to completion or budget; the returned `Trajectory` has the steps and status.

        `on_step` is called with each step's record as soon as the step ends (after it is
        recorded), for live display. An exception it raises ends the run: a `PolicyError`
        with status "error" and its message as the note (the demo's Stop button), any other
        after recording it, as an environment's error would.
        """
        if max_steps < 1 or timeout_s <= 0:
            raise ValueError(f"max_steps={max_steps} must be >= 1 and timeout_s={timeout_s} > 0")
        trajectory = Trajectory(task=self.secrets.scrub(task) or "", platform=self.platform)
        recorder = Recorder(self.record) if self.record else None
        deadline = time.monotonic() + timeout_s
        try:
            if start_url is not None:
                self._start(start_url)
            state = _State()
            while trajectory.status is None:
                if len(trajectory.steps) >= max_steps:
                    self._stop(trajectory, "max_steps", f"step budget of {max_steps} used up")
                elif time.monotonic() >= deadline:
                    self._stop(trajectory, "timeout", f"time budget of {timeout_s:g} s used up")
                else:
                    step = self._step(task, len(trajectory.steps), state, trajectory)
                    trajectory.steps.append(step)
                    if recorder:
                        recorder.add(step)
                    if on_step is not None:
                        on_step(step)
        except BlockedURL as error:
            self._stop(trajectory, "blocked", self.secrets.scrub(str(error)))
        except PolicyError as error:
            self._stop(trajectory, "error", self.secrets.scrub(str(error)))
        except Exception as error:
            self._stop(trajectory, "error", self.secrets.scrub(f"{type(error).__name__}: {error}") or "")
            raise
        finally:
            if recorder:
                recorder.finish(trajectory)
        return trajectory

    def _start(self, url: str) -> None:
        self.rules.check(url)
        self.env.goto(url)

    @staticmethod
    def _stop(trajectory: Trajectory, status: str, note: str) -> None:
        trajectory.status, trajectory.note = status, note  # type: ignore[assignment]
        logger.info("run stopped: %s (%s)", status, note)

    def _step(self, task: str, index: int, state: _State, trajectory: Trajectory) -> Step:
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = (now - clock) * 1000
            clock = now

        observation = self._observe()
        lap("observe")
        messages = self._prompt(task, observation, state)
        lap("prompt")
        responses, errors, parsed = self._ask(messages, timings)
        clock = time.perf_counter()
        scrub = self.secrets.scrub
        step = Step(index=index, status="parse_error", response=scrub(responses[-1]) or "",
                    parse_errors=[scrub(e) or "" for e in errors], url=scrub(observation.url),
                    title=scrub(observation.title), timings_ms=timings, screenshot=observation.screenshot)
        if parsed is None:
            self._stop(trajectory, "parse_error", f"no parsable answer after {1 + self.parse_retries} tries")
            return step
        action = parsed.action
        step.action, step.thinking = self.secrets.scrub_action(action), scrub(parsed.thinking)
        step.reason, step.memory = scrub(parsed.reason), scrub(parsed.memory)
        state.memory = parsed.memory if parsed.memory is not None else state.memory

        if isinstance(action, (Done, Fail, Answer)):
            step.status = "terminal"
            status = {Done: "done", Fail: "failed", Answer: "answered"}[type(action)]
            self._stop(trajectory, status, f"the model chose {type(action).__name__}")
            trajectory.answer = scrub(action.text) if isinstance(action, Answer) else None
            return step
        if self._is_loop(action, observation, state):
            step.status, step.note = "loop", f"same action {self.loop_after} times on an unchanged screen"
            self._stop(trajectory, "loop", step.note)
            return step
        lap("bookkeeping")  # the record, secret scrubbing, the loop detector
        step.status, step.note = self._act(action, observation, timings)
        state.history.append(self._past(action, parsed, step, observation))
        if step.status == "blocked":  # the environment stopped a navigation the action caused
            self._stop(trajectory, "blocked", step.note or "")
        return step

    def _observe(self) -> Observation:
        """`env.observe()`, once more after a pause if it fails (a page still navigating
        destroys the script context a screenshot or the marks need). BlockedURL, which says a
        navigation since the last step was refused, is never retried."""
        try:
            return self.env.observe()
        except BlockedURL:
            raise
        except Exception as error:  # noqa: BLE001 - environment-specific transient errors
            logger.info("observe failed (%s); retrying once", error)
            time.sleep(OBSERVE_RETRY_S)
            return self.env.observe()

    def _prompt(self, task: str, observation: Observation, state: _State) -> list:
        web_elements = ""
        if self.platform == "web" and observation.marks:
            infos = {}
            try:
                for mark_id in sorted(observation.marks)[:MAX_DESCRIBED_MARKS]:
                    info = self.env.describe(Mark(mark_id), observation)
                    if info is not None:
                        infos[mark_id] = info
            except BlockedURL:
                raise
            except Exception as error:  # noqa: BLE001 - the page moved on; the screenshot still has the labels
                logger.info("could not describe the marks (%s); prompting without element text", error)
            web_elements = describe_marks(infos)
        messages = build_messages(self.platform, task, observation.screenshot, state.history, memory=state.memory,
                                  url=observation.url, web_elements=web_elements, images=self._images)
        if self.secrets:  # a secret can come back in a URL or element text; the model gets placeholders
            for part in messages[0]["content"]:
                if part["type"] == "text":
                    part["text"] = self.secrets.scrub(part["text"])
        return messages

    def _ask(self, messages: list, timings: dict[str, float]) -> tuple[list[str], list[str], ParsedResponse | None]:
        """Ask, parse, and re-ask with the error up to `parse_retries` times."""
        responses, errors = [], []
        timings["policy"] = timings["parse"] = 0.0
        for _ in range(1 + self.parse_retries):
            start = time.perf_counter()
            text = self.policy(messages)
            middle = time.perf_counter()
            responses.append(text)
            try:
                parsed = parse_response(text, self.platform)
            except ParseError as error:
                errors.append(error.reason)
                logger.info("unparsable answer (%s); re-asking", error.reason)
                messages = [*messages, {"role": "assistant", "content": text},
                            {"role": "user", "content": [{"type": "text",
                                                          "text": PARSE_RETRY_PROMPT.format(reason=error.reason)}]}]
                parsed = None
            timings["policy"] += (middle - start) * 1000
            timings["parse"] += (time.perf_counter() - middle) * 1000
            if parsed is not None:
                return responses, errors, parsed
        return responses, errors, None

    def _is_loop(self, action: Action, observation: Observation, state: _State) -> bool:
        """The same action on an unchanged (pixel-identical) screen `loop_after` times in a row?
        Pixels are compared only when the action repeats, so a normal step pays nothing."""
        screen = observation.screenshot
        same = (action == state.last_action and state.last_screen is not None
                and state.last_screen.size == screen.size and state.last_screen.mode == screen.mode
                and ImageChops.difference(state.last_screen, screen).getbbox() is None)
        state.repeats = state.repeats + 1 if same else 1
        state.last_action, state.last_screen = action, screen
        return state.repeats >= self.loop_after

    def _act(self, action: Action, observation: Observation, timings: dict[str, float]) -> tuple[str, str | None]:
        """Safety checks, then execution; returns the step status and a note."""
        start = time.perf_counter()
        try:
            return self._check_and_execute(action, observation, timings, start)
        finally:
            timings["execute"] = (time.perf_counter() - start) * 1000 - timings.get("safety", 0.0)

    def _check_and_execute(self, action: Action, observation: Observation, timings: dict[str, float],
                           start: float) -> tuple[str, str | None]:
        scrub = self.secrets.scrub
        try:
            revealed = self.secrets.reveal(action)
        except ValueError as error:  # an unknown {{secret:name}}
            return "error", f"error: {error}"
        if isinstance(revealed, Navigate):
            try:
                self.rules.check(revealed.url)
            except BlockedURL as error:  # refused before anything was loaded: the model may try elsewhere
                return "refused", f"refused: {scrub(str(error))}"
        refused = check(action, observation, self.env, self.confirm)
        timings["safety"] = (time.perf_counter() - start) * 1000
        if refused is not None:
            return "refused", f"refused: {refused.reason} needs confirmation"
        try:
            self.env.execute(revealed, observation)
        except BlockedURL as error:
            return "blocked", scrub(str(error))
        except Exception as error:  # noqa: BLE001 - any failure of one action is reported to the model
            note = scrub(f"error: {type(error).__name__}: {error}")
            logger.warning("action %r failed: %s", self.secrets.scrub_action(action), note)
            return "error", note
        return "executed", None

    def _past(self, action: Action, parsed: ParsedResponse, step: Step, observation: Observation) -> PastStep:
        try:
            text = serialise_action(action, self.platform)
        except ValueError:
            text = repr(action)
        reason = parsed.reason or ""
        if step.note:  # tell the model what became of the action
            reason = f"{reason} (Observation: {step.note})".strip()
        return PastStep(text, reason=reason, memory=parsed.memory, screenshot=observation.screenshot)
