"""The demo's Agent tab: the loaded model drives a real browser, step by step, on screen.

The agent loop (`agent.loop.Agent`) returns its trajectory only at the end, so the tab watches
it through thin wrappers instead: `_Watched` wraps the environment (each observation's
screenshot, each executed action) and the policy (each model response), and puts events on a
queue the Gradio generator drains. Playwright's sync API is bound to the thread that started
it, so the whole run (browser included) lives on one worker thread.

Stopping: the Stop button cancels the Gradio event; the generator's `finally` sets a flag, and
the wrappers raise at the next observation or model call, which ends the run cleanly and
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
    from vlm import VLM

logger = logging.getLogger(__name__)

Format = Literal["web", "desktop"]
VIEWPORT = (1024, 640)  # CSS pixels; small screenshots keep a CPU model's prompt short


class StoppedByUser(PolicyError):
    """The user pressed Stop; the loop ends the run with this as its note."""


@dataclass
class _Event:
    kind: Literal["screen", "response", "action", "end", "error"]
    step: int = 0
    screenshot: Image.Image | None = None
    text: str = ""
    thinking: str = ""


class _Watched:
    """An environment and a policy (the local model) that report to `events` and stop when
    `stop` is set. The policy calls `vlm.generate` itself rather than through `VLMPolicy`,
    which returns only the answer: the tab shows the reasoning too."""

    def __init__(self, env: Any, vlm: VLM, events: queue.Queue[_Event], stop: threading.Event,
                 format: Format, max_new_tokens: int = 1024) -> None:
        self.env, self.vlm, self.events, self.stop, self.format = env, vlm, events, stop, format
        self.max_new_tokens = max_new_tokens
        self.platform = env.platform
        self.step = 0

    # --- Environment protocol ---
    def observe(self) -> Any:
        self._check()
        observation = self.env.observe()
        self.step += 1
        self.events.put(_Event("screen", self.step, screenshot=observation.screenshot))
        return observation

    def execute(self, action: Any, observation: Any) -> None:
        self.env.execute(action, observation)
        self.events.put(_Event("action", self.step, text=_action_text(action, self.format)))

    def describe(self, target: Any, observation: Any) -> Any:
        return self.env.describe(target, observation)

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str) -> Any:  # goto, rules, page: the environment's own
        return getattr(self.env, name)

    # --- Policy ---
    def ask(self, messages: list) -> str:
        self._check()
        generation = self.vlm.generate(to_pil(messages), max_new_tokens=self.max_new_tokens, temperature=0.0)
        self.events.put(_Event("response", self.step, text=generation.text, thinking=generation.thinking or ""))
        return generation.text

    def _check(self) -> None:
        if self.stop.is_set():
            raise StoppedByUser("stopped by the user")


def _action_text(action: Any, format: Format) -> str:
    from agent.parsing import serialise_action

    try:
        return serialise_action(action, format)
    except ValueError:
        return repr(action)


def run_agent(vlm: VLM, url: str, task: str, *, max_steps: int, format: Format,
              stop: threading.Event) -> Iterator[_Event]:
    """Run the agent on a worker thread and yield its events as they happen."""
    from agent.browser import BrowserEnv
    from agent.loop import Agent

    events: queue.Queue[_Event] = queue.Queue()

    def work() -> None:
        try:
            with BrowserEnv(VIEWPORT, set_of_marks=format == "web") as env:
                watched = _Watched(env, vlm, events, stop, format)
                agent = Agent(policy=watched.ask, env=watched, platform=format)
                trajectory = agent.run(task, start_url=url, max_steps=max_steps)
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
        try:
            for event in run_agent(vlm, url, task.strip(), max_steps=int(max_steps), format=format, stop=flag):
                if event.kind == "screen":
                    image = event.screenshot
                    shown.append({"role": "user", "content": f"Step {event.step}: screen observed"})
                elif event.kind == "response":
                    if event.thinking:
                        shown.append({"role": "assistant", "content": event.thinking,
                                      "metadata": {"title": f"Step {event.step}: thinking", "status": "done"}})
                    shown.append({"role": "assistant",
                                  "content": f"Step {event.step}: {strip_special_tokens(event.text)}"})
                elif event.kind == "action":
                    shown.append({"role": "assistant", "content": f"Step {event.step} executed: `{event.text}`"})
                yield image, shown, _status(event)
        finally:
            flag.set()  # on Stop (the generator is closed) or at the end

    running = run.click(start, [url, task, format, max_steps], [screen, log, status], concurrency_id=concurrency_id)
    stop.click(None, None, None, cancels=[running])


def _status(event: _Event) -> str:
    if event.kind == "end":
        return f"**Finished** — {event.text}"
    if event.kind == "error":
        return f"**Error** — {event.text}"
    return f"Running: step {event.step}"
