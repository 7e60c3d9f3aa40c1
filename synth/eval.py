"""Evaluation on freshly generated held-out data: `python -m synth.eval grounding --model DIR`.

    python -m synth.eval grounding|action|qa|video|episodes|ui_grounding --model PATH --n N --seed S

Held-out samples come from `synth.dataset` with `split="heldout"`, whose unit seeds are a
different hash stream from the training split's, so no page, video or episode is shared.
A model is any callable `messages -> text` (`ModelFn`, the agent's policy protocol): image
parts carry PIL images, video parts absolute paths. Episodes are three-step form episodes
(two fields, then submit) run by the agent itself, `agent.loop.Agent` driving the agent's
`BrowserEnv` (pages served from 127.0.0.1), with the model as its policy; an episode succeeds
only if the page then reports the requested values.

`ui_grounding` needs no browser, ffmpeg or decord: the same grounding questions on held-out
screens drawn with PIL (`synth.ui`, its Latin-script languages only), for machines that have
none of them (a GPU machine); its numbers are not comparable with `grounding`'s on web pages.

Results are grouped (grounding by viewport, action by format, ...) and the last line printed
is `accuracy: <fraction>`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from PIL import Image

from agent.loop import Agent
from agent.policy import VLMPolicy
from synth import ui
from synth.agent_steps import Format
from synth.dataset import SynthConfig, page_language, parse_languages, synthesize, unit_seed
from synth.episodes import plan_episode
from synth.pages import Page
from synth.render import VIEWPORTS, Viewport, prune
from synth.scoring import score
from synth.vocab import LANGUAGES, Language
from vlm import VLM

if TYPE_CHECKING:
    from agent.browser import BrowserEnv

log = logging.getLogger(__name__)

Task = Literal["grounding", "action", "qa", "video", "episodes", "ui_grounding"]
TASKS: tuple[Task, ...] = ("grounding", "action", "qa", "video", "episodes", "ui_grounding")
BROWSERLESS_TASKS: tuple[Task, ...] = ("ui_grounding",)  # Pillow alone makes their data
ModelFn = Callable[[list[dict[str, Any]]], str]
_GROUP_KEY = {"grounding": "viewport", "action": "format", "qa": "question_type", "video": "question_type",
              "ui_grounding": "viewport"}


@dataclass
class EvalResult:
    task: Task
    correct: int = 0
    total: int = 0
    groups: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def add(self, group: str, ok: bool) -> None:
        self.correct += ok
        self.total += 1
        self.groups[group][0] += ok
        self.groups[group][1] += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def report(self) -> str:
        lines = [f"{self.task}: {g} {c}/{t} = {c / t:.3f}" for g, (c, t) in sorted(self.groups.items())]
        return "\n".join([*lines, f"accuracy: {self.accuracy:.4f}"])


def _resolve(part: dict[str, Any], root: Path) -> dict[str, Any]:
    if part["type"] == "image":
        image = Image.open(root / part["image"])
        image.load()
        return {"type": "image", "image": image}
    if part["type"] == "video":
        return {"type": "video", "video": str(root / part["video"])}
    return part


def with_media(messages_: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Messages as the model is handed them: images loaded (PIL), videos as absolute paths."""
    out = []
    for message in messages_:
        content = message["content"]
        if isinstance(content, list):
            content = [_resolve(p, root) for p in content]
        out.append({**message, "content": content})
    return out


def evaluate_samples(task: Task, model: ModelFn, *, n: int, seed: int, workdir: Path, workers: int = 1,
                     viewport: Literal["desktop", "phone", "both"] = "both",
                     languages: tuple[Language, ...] = LANGUAGES) -> EvalResult:
    """Score `model` on `n` fresh held-out samples of one kind, on pages in `languages`."""
    data = heldout_data(task, n=n, seed=seed, workdir=workdir, workers=workers, viewport=viewport, languages=languages)
    result = EvalResult(task)
    for line in (data / "data.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        answer = model(with_media(record["messages"][:-1], data))
        result.add(str(record["meta"].get(_GROUP_KEY[task])), score(record["meta"], answer))
    return result


def heldout_data(task: Task, *, n: int, seed: int, workdir: Path, workers: int = 1,
                 viewport: Literal["desktop", "phone", "both"] = "both",
                 languages: tuple[Language, ...] = LANGUAGES) -> Path:
    """`workdir/task/`: `n` fresh held-out samples of one kind (`data.jsonl` and media)."""
    if task == "ui_grounding":
        drawn = tuple(lang for lang in languages if lang in ui.UI_LANGUAGES)
        if not drawn:
            raise ValueError(f"ui_grounding draws screens in {list(ui.UI_LANGUAGES)} only; languages {list(languages)} "
                             "have none of them")
        if viewport != "both":
            raise ValueError(f"viewport {viewport!r}: ui_grounding draws every screen size ('both')")
        drawn_config = ui.UIConfig(n=n, seed=seed, kinds=("grounding",), split="heldout",
                                   languages=drawn)  # type: ignore[arg-type]
        return ui.generate(drawn_config, workdir / task, workers=workers, overwrite=True)
    kind = {"grounding": "grounding", "action": "action", "qa": "qa", "video": "video"}[task]
    config = SynthConfig(n=n, seed=seed, kinds=(kind,), viewport=viewport, split="heldout", languages=languages)
    return synthesize(config, workdir / task, workers=workers, overwrite=True)


class PageServer:
    """Serves generated pages at http://127.0.0.1:<port>/p/<seed>.html, so the agent's own
    `BrowserEnv` opens them like any site (it accepts URLs, not HTML strings)."""

    def __init__(self) -> None:
        pages: dict[str, bytes] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = pages.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(body or b"not found")

            def log_message(self, *args: Any) -> None:
                pass

        self._pages = pages
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, page: Page) -> str:
        path = f"/p/{page.seed}.html"
        self._pages[path] = page.html.encode()
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _PILPolicy:
    """The model as an agent policy that is handed PIL screenshots (no PNG round trip)."""

    accepts_pil = True

    def __init__(self, model: ModelFn) -> None:
        self.model = model

    def __call__(self, messages_: list[dict[str, Any]]) -> str:
        return self.model(messages_)


def open_env(viewport: Viewport, *, set_of_marks: bool = False) -> BrowserEnv:
    """The agent's `BrowserEnv` at the data engine's desktop or phone viewport."""
    from agent.browser import BrowserEnv  # needs playwright: only the episodes import it
    return BrowserEnv(device=dict(VIEWPORTS[viewport]), set_of_marks=set_of_marks)


def run_episode(model: ModelFn, env: Any, server: PageServer, seed: int, viewport: Viewport, *,
                fields: int = 2, language: Language | None = None) -> bool:
    """Let `model` fill and submit a held-out form through the agent loop (`agent.loop.Agent`)
    in `env`; whether the page received exactly the requested values."""
    page, goal = plan_episode(seed, "form", fields=fields, language=language)
    fmt: Format = "desktop" if viewport == "desktop" else "mobile"
    env.goto(server.url(page))
    prune(env.page, viewport)
    needed = 2 * len(goal.fills) + 2 if fmt == "desktop" else len(goal.fills) + 2
    # our synthetic pages are harmless: approve what the safety check would ask about (a form
    # titled "Billing" looks like a payment page to it)
    agent = Agent(policy=_PILPolicy(model), env=env, platform=fmt, confirm=lambda sensitive: True)
    trajectory = agent.run(goal.task, max_steps=2 * needed)  # room for a few wasted steps
    ok = goal.achieved(env.page)
    log.info("episode %d (%s): %s after %d steps, %s", seed, viewport, trajectory.status, len(trajectory.steps),
             "success" if ok else "failure")
    return ok


def evaluate_episodes(model: ModelFn, *, n: int, seed: int, languages: tuple[Language, ...] = LANGUAGES) -> EvalResult:
    """`n` held-out form episodes (two fields, then submit), alternating desktop and phone,
    on pages in `languages` (as `synth.dataset` picks them)."""
    result = EvalResult("episodes")
    server = PageServer()
    envs: dict[Viewport, Any] = {}
    try:
        for i in range(n):
            viewport: Viewport = "desktop" if i % 2 == 0 else "phone"
            env = envs.get(viewport) or envs.setdefault(viewport, open_env(viewport))
            page_seed = unit_seed("heldout", seed, i)
            result.add(viewport, run_episode(model, env, server, page_seed, viewport,
                                             language=page_language(languages, page_seed)))
    finally:
        for env in envs.values():
            env.close()
        server.close()
    return result


def evaluate(task: Task, model: ModelFn, *, n: int, seed: int = 0, workdir: str | Path | None = None,
             workers: int = 1, languages: tuple[Language, ...] = LANGUAGES) -> EvalResult:
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    with tempfile.TemporaryDirectory(prefix="glmv-eval-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if task == "episodes":
            return evaluate_episodes(model, n=n, seed=seed, languages=languages)
        return evaluate_samples(task, model, n=n, seed=seed, workdir=root, workers=workers, languages=languages)


def load_model(path: str, *, max_new_tokens: int = 256, thinking: bool | None = None) -> ModelFn:
    """`messages -> text` from a checkpoint directory: the agent's `VLMPolicy`, greedy."""
    return VLMPolicy(VLM.from_pretrained(path), max_new_tokens=max_new_tokens, temperature=0.0, thinking=thinking)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes generating the held-out data")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--languages", default=",".join(LANGUAGES),
                        help="UI languages of the held-out pages (the default model is trained on en)")
    parser.add_argument("--no-thinking", action="store_true", help="thinking off (/nothink) in every prompt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    languages = parse_languages(args.languages)  # a clear error for an unknown language, before the model loads
    model = load_model(args.model, max_new_tokens=args.max_new_tokens, thinking=False if args.no_thinking else None)
    result = evaluate(args.task, model, n=args.n, seed=args.seed, workers=args.workers, languages=languages)
    print(result.report())


if __name__ == "__main__":
    main()
