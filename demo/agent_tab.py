"""The demo's Agent tab: the loaded model drives a real browser, step by step, on screen.

The agent loop (`agent.loop.Agent.run`) reports each step as it ends through its `on_step`
callback, which puts an event on a queue the Gradio generator drains: the screen the model
saw, its reasoning, its answer and the action executed. Playwright's sync API is bound to the
thread that started it, so the whole run (browser included) lives on one worker thread.

Stopping: the Stop button cancels the Gradio event; the generator's `finally` sets a flag, and
the policy raises `StoppedByUser` at the next model call, which ends the run cleanly and
closes the browser.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal

import gradio as gr
from PIL import Image

from agent.policy import PolicyError, to_pil
from vlm.outputs import strip_special_tokens

if TYPE_CHECKING:
    from agent.trajectory import Step
    from vlm import VLM

logger = logging.getLogger(__name__)

Format = Literal["web", "desktop"]
VIEWPORT = (1024, 640)  # CSS pixels; small screenshots keep a CPU model's prompt short


class StoppedByUser(PolicyError):
    """The user pressed Stop; the loop ends the run with this as its note."""


@dataclass
class _Event:
    kind: Literal["step", "end", "error"]
    step: int = 0  # counted from 1, as shown
    screenshot: Image.Image | None = None
    text: str = ""  # the model's answer; the outcome for "end" and "error"
    thinking: str = ""
    action: str = ""  # the executed action in the run's format; empty when none was executed


class _ModelPolicy:
    """The local model as the agent's policy, stopping when `stop` is set. It calls
    `vlm.generate` itself rather than through `VLMPolicy`, which returns only the answer, and
    keeps the reasoning of its latest answer for the tab to show."""

    def __init__(self, vlm: VLM, stop: threading.Event, max_new_tokens: int = 1024) -> None:
        self.vlm, self.stop, self.max_new_tokens = vlm, stop, max_new_tokens
        self.thinking = ""

    def __call__(self, messages: list) -> str:
        if self.stop.is_set():
            raise StoppedByUser("stopped by the user")
        generation = self.vlm.generate(to_pil(messages), max_new_tokens=self.max_new_tokens, temperature=0.0)
        self.thinking = generation.thinking or ""
        return generation.text


def _action_text(action: Any, format: Format) -> str:
    from agent.parsing import serialise_action

    try:
        return serialise_action(action, format)
    except ValueError:
        return repr(action)


def run_agent(vlm: VLM, url: str, task: str, *, max_steps: int, format: Format,
              stop: threading.Event) -> Iterator[_Event]:
    """Run the agent on a worker thread and yield an event per step as each ends, then "end"
    (or "error")."""
    from agent.browser import BrowserEnv
    from agent.loop import Agent

    events: queue.Queue[_Event] = queue.Queue()
    policy = _ModelPolicy(vlm, stop)

    def on_step(step: Step) -> None:
        executed = step.status == "executed" and step.action is not None
        events.put(_Event("step", step.index + 1, screenshot=step.screenshot, text=step.response,
                          thinking=policy.thinking, action=_action_text(step.action, format) if executed else ""))

    def work() -> None:
        try:
            with BrowserEnv(VIEWPORT, set_of_marks=format == "web") as env:
                agent = Agent(policy=policy, env=env, platform=format)
                trajectory = agent.run(task, start_url=url, max_steps=max_steps, on_step=on_step)
            note = f"{trajectory.status}: {trajectory.note or ''}"
            if trajectory.answer:
                note += f"\n\nAnswer: {trajectory.answer}"
            events.put(_Event("end", text=note))
        except Exception as err:  # noqa: BLE001 - shown to the user; the app lives on
            logger.exception("agent run failed")
            events.put(_Event("error", text=f"{type(err).__name__}: {err}"))

    worker = threading.Thread(target=work, name="agent-tab", daemon=True)
    worker.start()
    while True:
        event = events.get()
        yield event
        if event.kind in ("end", "error"):
            break
    worker.join(timeout=30)


def build_agent_tab(vlm: VLM, *, concurrency_id: str) -> None:
    """The tab's components; runs share the Gradio queue `concurrency_id` with other model events."""
    gr.Markdown("The model drives a headless Chromium: each step shows the screen it saw, its "
                "reasoning and the action it took. Only http(s) pages are allowed.")
    with gr.Row():
        url = gr.Textbox(label="Start URL", placeholder="https://example.com", elem_id="agent-url", scale=3)
        format = gr.Radio(["web", "desktop"], value="web", label="Action format",
                          info="web: numbered marks on elements; desktop: 0-999 coordinates", scale=1)
        max_steps = gr.Slider(1, 30, value=10, step=1, label="Max steps", scale=1)
    task = gr.Textbox(label="Task", placeholder="Find the opening hours", elem_id="agent-task")
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id="agent-run")
        stop = gr.Button("Stop", variant="stop", elem_id="agent-stop")
    with gr.Row():
        screen = gr.Image(label="Screen", type="pil", interactive=False, elem_id="agent-screen", scale=3)
        log = gr.Chatbot(label="Steps", height=480, elem_id="agent-log", scale=2)
    status = gr.Markdown(elem_id="agent-status")

    def start(url: str, task: str, format: Format, max_steps: float) -> Iterator[tuple[Any, ...]]:
        if not url.startswith(("http://", "https://")):
            raise gr.Error(f"start URL {url!r} must be an http(s) URL")
        if not task.strip():
            raise gr.Error("Describe the task.")
        flag = threading.Event()
        shown: list[dict[str, Any]] = []
        image = None
        yield image, shown, "Running: step 1"
        try:
            for event in run_agent(vlm, url, task.strip(), max_steps=int(max_steps), format=format, stop=flag):
                if event.kind == "step":
                    image = event.screenshot
                    shown += _step_messages(event)
                yield image, shown, _status(event)
        finally:
            flag.set()  # on Stop (the generator is closed) or at the end

    running = run.click(start, [url, task, format, max_steps], [screen, log, status], concurrency_id=concurrency_id)
    stop.click(None, None, None, cancels=[running])


def _step_messages(event: _Event) -> list[dict[str, Any]]:
    """The chat lines for one step: screen, reasoning (folded), answer, executed action."""
    shown: list[dict[str, Any]] = [{"role": "user", "content": f"Step {event.step}: screen observed"}]
    if event.thinking:
        shown.append({"role": "assistant", "content": event.thinking,
                      "metadata": {"title": f"Step {event.step}: thinking", "status": "done"}})
    shown.append({"role": "assistant", "content": f"Step {event.step}: {strip_special_tokens(event.text)}"})
    if event.action:
        shown.append({"role": "assistant", "content": f"Step {event.step} executed: `{event.action}`"})
    return shown


def _status(event: _Event) -> str:
    if event.kind == "end":
        return f"**Finished** — {event.text}"
    if event.kind == "error":
        return f"**Error** — {event.text}"
    return f"Running: step {event.step + 1}"  # the event reports the step that just ended
