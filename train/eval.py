"""Evaluation on freshly generated held-out data: `python -m train.eval grounding --model DIR`.

    python -m train.eval grounding|action|qa|video|episodes --model PATH --n N --seed S

Held-out samples come from `train.synth` with `split="heldout"`, whose unit seeds are a
different hash stream from the training split's, so no page, video or episode is shared.
A model is any callable `messages -> text` (`ModelFn`); image parts carry absolute file
paths. Episodes are three-step form episodes (two fields, then submit) that the model drives
itself in Chromium: each step it sees the agent prompt with its own history, its answer is
parsed by the agent's parser and executed in the page, and the episode succeeds only if the
page then reports the requested values.

Results are grouped (grounding by viewport, action by format, ...) and the last line printed
is `accuracy: <fraction>`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from agent.actions import Answer, Click, Done, Type
from agent.parsing import ParseError, parse_response, serialise_action
from agent.prompts import PastStep
from train.agent_steps import Format, Media, Screen, clock, decode, messages
from train.episodes import execute, plan_episode, resolve_marks
from train.render import Renderer, Viewport
from train.scoring import score
from train.synth import SynthConfig, synthesize, unit_seed

log = logging.getLogger(__name__)

Task = Literal["grounding", "action", "qa", "video", "episodes"]
TASKS: tuple[Task, ...] = ("grounding", "action", "qa", "video", "episodes")
ModelFn = Callable[[list[dict[str, Any]]], str]
_GROUP_KEY = {"grounding": "viewport", "action": "format", "qa": "question_type", "video": "question_type"}


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


def _absolute(messages_: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    out = []
    for message in messages_:
        content = message["content"]
        if isinstance(content, list):
            content = [{**p, p["type"]: str(root / p[p["type"]])} if p["type"] in ("image", "video") else p
                       for p in content]
        out.append({**message, "content": content})
    return out


def evaluate_samples(task: Task, model: ModelFn, *, n: int, seed: int, workdir: Path, workers: int = 1,
                     viewport: Literal["desktop", "phone", "both"] = "both") -> EvalResult:
    """Score `model` on `n` fresh held-out samples of one kind."""
    kind = {"grounding": "grounding", "action": "action", "qa": "qa", "video": "video"}[task]
    data = synthesize(SynthConfig(n=n, seed=seed, kinds=(kind,), viewport=viewport, split="heldout"),
                      workdir / task, workers=workers, overwrite=True)
    result = EvalResult(task)
    for line in (data / "data.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        answer = model(_absolute(record["messages"][:-1], data))
        result.add(str(record["meta"].get(_GROUP_KEY[task])), score(record["meta"], answer))
    return result


def run_episode(model: ModelFn, renderer: Renderer, seed: int, viewport: Viewport, workdir: Path, *,
                fields: int = 2) -> bool:
    """Let `model` drive one form episode in Chromium; whether the page got the right values."""
    page, goal = plan_episode(seed, "form", fields=fields)
    fmt: Format = "desktop" if viewport == "desktop" else "mobile"
    tab = renderer.load(page, viewport)
    media, history, now = Media(f"episode{seed}"), [], clock(random.Random(seed))
    needed = 2 * len(goal.fills) + 2 if fmt == "desktop" else len(goal.fills) + 2
    for _ in range(2 * needed):  # room for a few wasted steps, not for wandering forever
        rendered = renderer.snapshot(tab, page, viewport)
        screen = Screen(decode(rendered.png), media.add_png(rendered.png))
        prompt = messages(fmt, goal.task, screen, history, media, url=page.url, now=now)
        for path, data in media.files.items():
            (workdir / path).parent.mkdir(parents=True, exist_ok=True)
            (workdir / path).write_bytes(data)
        text = model(_absolute(prompt, workdir))
        try:
            parsed = parse_response(text, fmt)
        except ParseError as error:
            log.info("episode %d: unparsable answer (%s)", seed, error.reason)
            return False
        if isinstance(parsed.action, (Done, Answer)):
            return goal.achieved(tab)
        if not isinstance(parsed.action, (Click, Type)):
            log.info("episode %d: %r cannot be executed in a page", seed, parsed.action)
            return False
        execute(tab, resolve_marks(parsed.action, None, rendered), rendered, touch=viewport == "phone")
        history.append(PastStep(serialise_action(parsed.action, fmt), reason=parsed.reason, memory=parsed.memory,
                                screenshot=screen.image))
    return goal.achieved(tab)


def evaluate_episodes(model: ModelFn, *, n: int, seed: int, workdir: Path) -> EvalResult:
    """`n` held-out form episodes, alternating desktop and phone viewports."""
    result = EvalResult("episodes")
    with Renderer() as renderer:
        for i in range(n):
            viewport: Viewport = "desktop" if i % 2 == 0 else "phone"
            ok = run_episode(model, renderer, unit_seed("heldout", seed, i), viewport, workdir)
            result.add(viewport, ok)
    return result


def evaluate(task: Task, model: ModelFn, *, n: int, seed: int = 0, workdir: str | Path | None = None,
             workers: int = 1) -> EvalResult:
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    with tempfile.TemporaryDirectory(prefix="glmv-eval-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if task == "episodes":
            return evaluate_episodes(model, n=n, seed=seed, workdir=root)
        return evaluate_samples(task, model, n=n, seed=seed, workdir=root, workers=workers)


def load_model(path: str, *, max_new_tokens: int = 256) -> ModelFn:
    """`messages -> text` from a checkpoint directory, through `VLM.generate` (greedy)."""
    from vlm import VLM

    vlm = VLM.from_pretrained(path)
    generate = getattr(vlm, "generate", None)
    if generate is None:
        raise RuntimeError(f"VLM loaded from {path} has no generate(messages) method; "
                           "train.eval needs VLM.generate(messages, max_new_tokens=...) -> str")
    return lambda msgs: generate(msgs, max_new_tokens=max_new_tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes generating the held-out data")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = evaluate(args.task, load_model(args.model, max_new_tokens=args.max_new_tokens), n=args.n,
                      seed=args.seed, workers=args.workers)
    print(result.report())


if __name__ == "__main__":
    main()
