"""The synthetic data engine: a dataset directory from a seed (`python -m synth` is its CLI).

Work is cut into *units* (one rendered page, one episode or one video, each giving a few
samples). Unit j is made from its own seed, derived from (split, --seed, j) alone, and
results are collected in unit order, so the output is the same for any number of workers;
the train and held-out splits draw from disjoint seed streams. Each worker process keeps one
Chromium for all its pages. Units are handed out in rounds until N samples exist; media of
the surplus samples are deleted, so nothing depends on how far the workers ran ahead.

Output: `DIR/data.jsonl` (training conversations with `meta` ground truth), `DIR/images/`,
`DIR/videos/`. Everything is written into a hidden staging directory next to DIR and renamed
into place at the end, so DIR is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
from dataclasses import dataclass
from multiprocessing import util
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from tqdm import tqdm

from synth import agent_steps, episodes, tasks, videos
from synth.pages import generate_page
from synth.render import Renderer, Viewport
from synth.tasks import Sample
from synth.vocab import LANGUAGES, Language

log = logging.getLogger(__name__)

Kind = Literal["grounding", "read", "action", "qa", "episode", "video"]
KINDS: tuple[Kind, ...] = ("grounding", "read", "action", "qa", "episode", "video")
Split = Literal["train", "heldout"]
ViewportMode = Literal["desktop", "phone", "both"]
SAMPLES_PER_UNIT = {"grounding": 4, "qa": 3, "action": 2, "video": 3}  # actions: per format


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; `kinds` are cycled unit by unit, so they come in equal shares of units."""

    n: int
    seed: int = 0
    kinds: tuple[Kind, ...] = KINDS
    viewport: ViewportMode = "both"
    split: Split = "train"
    grounding_turns: int = 1  # grounding questions per conversation (one image, several turns)
    languages: tuple[Language, ...] = LANGUAGES  # of the pages' UI text; a unit's seed picks one
    nothink: float = 0.0  # share of conversations whose user turns end with /nothink

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n={self.n} must be at least 1")
        if self.grounding_turns < 1:
            raise ValueError(f"grounding_turns={self.grounding_turns} must be at least 1")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds {list(self.kinds)} must be a non-empty subset of {list(KINDS)}")
        if self.viewport not in ("desktop", "phone", "both"):
            raise ValueError(f"viewport {self.viewport!r} is not 'desktop', 'phone' or 'both'")
        if self.split not in ("train", "heldout"):
            raise ValueError(f"split {self.split!r} is not 'train' or 'heldout'")
        check_languages(self.languages)
        if not 0.0 <= self.nothink <= 1.0:
            raise ValueError(f"nothink={self.nothink} is a share of conversations: expected 0 to 1")

    def language(self, seed: int) -> Language | None:
        return page_language(self.languages, seed)


def page_language(languages: tuple[Language, ...], seed: int) -> Language | None:
    """The UI language of the page of unit `seed`; None (the page's own seeded choice among
    all languages) when every language is allowed, so that stream stays what it always was."""
    if languages == LANGUAGES:
        return None
    return languages[seed % len(languages)]


def check_languages(languages: tuple[str, ...]) -> None:
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise ValueError(f"languages {list(languages)} must be a non-empty subset of {list(LANGUAGES)}")


def unit_seed(split: Split, seed: int, index: int) -> int:
    """The seed of unit `index`: a hash, so the two splits' streams never meet."""
    digest = hashlib.sha256(f"{split}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


_renderer: Renderer | None = None


def _worker_renderer() -> Renderer:
    """This process's browser, started on first use and closed when the process exits."""
    global _renderer
    if _renderer is None:
        _renderer = Renderer()
        util.Finalize(None, _renderer.close, exitpriority=10)
    return _renderer


def _close_renderer() -> None:
    global _renderer
    if _renderer is not None:
        _renderer.close()
        _renderer = None


def make_unit(config: SynthConfig, index: int, out: Path) -> list[dict[str, Any]]:
    """The samples of unit `index`, its media written under `out`."""
    seed = unit_seed(config.split, config.seed, index)
    rng = random.Random(seed)
    kind = config.kinds[index % len(config.kinds)]
    viewport: Viewport = rng.choice(("desktop", "phone")) if config.viewport == "both" else config.viewport
    prefix = f"{index:07d}"
    media = agent_steps.Media(prefix)
    if kind == "video":
        script = videos.make_script(seed)
        path = f"videos/{prefix}.mp4"
        videos.write_video(script, out / path)
        samples = videos.video_samples(script, path, rng, n=SAMPLES_PER_UNIT["video"])
    elif kind == "episode":
        samples = episodes.episode_samples(_worker_renderer(), seed, viewport, rng, media,
                                           language=config.language(seed))
    else:
        samples = _page_unit(kind, seed, viewport, rng, media, grounding_turns=config.grounding_turns,
                             language=config.language(seed))
    for path, data in media.files.items():
        (out / path).write_bytes(data)
    return switch_thinking([s.to_json() for s in samples], seed=seed, share=config.nothink)


def switch_thinking(records: list[dict[str, Any]], *, seed: int, share: float) -> list[dict[str, Any]]:
    """Turn thinking off (`thinking_off`) in a `share` of unit `seed`'s records, drawn from the
    unit's own stream, so the samples are the same for any share."""
    if share:
        switch = random.Random(f"nothink/{seed}")
        for record in records:
            if switch.random() < share:
                thinking_off(record["messages"])
    return records


def thinking_off(messages: list[dict[str, Any]]) -> None:
    """End every user turn with /nothink, as the chat template does for enable_thinking=False."""
    for message in messages:
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            message["content"] = content + "/nothink"
        elif content and content[-1]["type"] == "text":
            content[-1]["text"] += "/nothink"
        else:  # the template appends it after the turn's media too
            content.append({"type": "text", "text": "/nothink"})


def _page_unit(kind: Kind, seed: int, viewport: Viewport, rng: random.Random, media: agent_steps.Media, *,
               grounding_turns: int, language: Language | None) -> list[Sample]:
    renderer = _worker_renderer()
    page = generate_page(seed, language=language)
    tab = renderer.load(page, viewport)
    rendered = renderer.snapshot(tab, page, viewport)
    image = media.add_png(rendered.png)
    if kind == "grounding":
        n = max(SAMPLES_PER_UNIT["grounding"], grounding_turns)
        return tasks.grounding_samples(rendered, image, rng, n=n, turns=grounding_turns)
    if kind == "qa":
        return tasks.qa_samples(rendered, image, rng, n=SAMPLES_PER_UNIT["qa"])
    if kind == "read":
        return tasks.reading_samples(rendered, image, rng)
    screen = agent_steps.Screen(agent_steps.decode(rendered.png), image)
    marked = renderer.snapshot_marks(tab, rendered)
    marked_screen = agent_steps.Screen(agent_steps.decode(marked.png), media.add_png(marked.png))
    native = "desktop" if viewport == "desktop" else "mobile"
    return [*agent_steps.action_samples(rendered, screen, rng, media, fmt=native, n=SAMPLES_PER_UNIT["action"]),
            *agent_steps.action_samples(rendered, marked_screen, rng, media, fmt="web", marked=marked,
                                        n=SAMPLES_PER_UNIT["action"])]


MakeUnit = Callable[[Any, int, Path], list[dict[str, Any]]]  # (config, index, out) -> the unit's records


def _run(job: tuple[MakeUnit, Any, int, str]) -> list[dict[str, Any]]:
    make, config, index, out = job
    return make(config, index, Path(out))


def _units(make: MakeUnit, config: Any, out: Path, workers: int) -> Iterator[list[dict[str, Any]]]:
    """Unit results in index order, produced in rounds of a few units per worker."""
    if workers == 1:
        try:
            index = 0
            while True:
                yield make(config, index, out)
                index += 1
        finally:
            _close_renderer()  # the caller's thread may want its own Playwright afterwards
    # spawn, not fork: Playwright's driver threads do not survive a fork. The pool is closed,
    # not terminated, so each worker's exit finalizer closes its Chromium.
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        round_size, start = 4 * workers, 0
        while True:
            jobs = [(make, config, i, str(out)) for i in range(start, start + round_size)]
            yield from pool.imap(_run, jobs)
            start += round_size
    finally:
        pool.close()
        pool.join()


def _media(sample: dict[str, Any]) -> set[str]:
    return {part.get("image") or part.get("video") for m in sample["messages"] if isinstance(m["content"], list)
            for part in m["content"] if part["type"] in ("image", "video")}


def synthesize(config: SynthConfig, out: str | os.PathLike[str], *, workers: int = 1,
               progress: bool = True, overwrite: bool = False) -> Path:
    """Generate `config.n` samples into directory `out`; returns its path."""
    return write_dataset(make_unit, config, config.n, out, workers=workers, progress=progress, overwrite=overwrite)


def write_dataset(make: MakeUnit, config: Any, n: int, out: str | os.PathLike[str], *, workers: int = 1,
                  progress: bool = True, overwrite: bool = False) -> Path:
    """The first `n` samples of units `make(config, 0, dir)`, `make(config, 1, dir)`, ... as
    directory `out` (data.jsonl, images/, videos/), written atomically; `make` must be a
    module-level function (worker processes import it by name)."""
    out = Path(out)
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    (staging / "videos").mkdir()
    samples: list[dict[str, Any]] = []
    try:
        with tqdm(total=n, unit="sample", disable=not progress, desc="synth") as bar:
            for unit in _units(make, config, staging, workers):
                take = unit[: n - len(samples)]
                samples += take
                bar.update(len(take))
                if len(samples) >= n:
                    break
        kept = set().union(*(_media(s) for s in samples))
        for folder in ("images", "videos"):
            for path in (staging / folder).iterdir():
                if f"{folder}/{path.name}" not in kept:
                    path.unlink()
        with open(staging / "data.jsonl", "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %d samples to %s", len(samples), out)
    return out


def parse_kinds(text: str) -> tuple[Kind, ...]:
    """`"grounding:3,qa,video"` -> the unit cycle (grounding, grounding, grounding, qa, video)."""
    kinds: list[Kind] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        if not weight.isdigit() or int(weight) < 1:
            if weight:
                raise ValueError(f"kind weight {item!r} is not name:<positive integer>")
            weight = "1"
        kinds += [name] * int(weight)  # type: ignore[list-item]  (SynthConfig checks the names)
    return tuple(kinds)


def parse_languages(text: str) -> tuple[Language, ...]:
    """`"en,de"` -> ("en", "de"); unknown names are a ValueError naming them."""
    languages = tuple(part.strip() for part in text.split(",") if part.strip())
    check_languages(languages)
    return languages  # type: ignore[return-value]
