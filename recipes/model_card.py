"""The default model's card: `README.md` of the shipped checkpoint, from what the recipe
(`recipes.default_model`) recorded: its options, data counts, training plan and time, and the
held-out numbers against the issue's targets, with the image-reliance check.
"""

from __future__ import annotations

import textwrap
from typing import Any

from recipes.recipe import EVAL_SEED, EVERY_LANGUAGE, UI_GROUNDING, VIDEO_MAX_PIXELS, Recipe
from synth.dataset import parse_kinds, parse_languages
from synth.vocab import LANGUAGES
from vlm import VLM
from vlm.config import VLMConfig
from vlm.images import smart_resize

FIRST_USE = "first_use"  # its result (recipes.first_use) is counted on the card, not a share of a held-out set
TARGETS = {  # (task, group or None for the whole task) -> the minimum
    ("grounding", "desktop"): 0.90, ("grounding", "phone"): 0.80, ("action", None): 0.85,
    ("episodes", None): 0.60, ("video", "when"): 0.80,
}


def target_rows(results: dict[str, Any]) -> list[tuple[str, float | None, float, bool | None]]:
    """(what, measured, target, met) for each of the issue's targets."""
    rows = []
    for (task, group), target in TARGETS.items():
        measured = None
        if task in results:
            if group is None:
                measured = results[task]["accuracy"]
            elif group in results[task]["groups"]:
                g = results[task]["groups"][group]
                measured = g["correct"] / g["total"]
        name = f"{task} ({group})" if group else task
        rows.append((name, measured, target, None if measured is None else measured >= target))
    return rows


def model_card(recipe: Recipe, *, command: str, config: VLMConfig, plan: dict[str, Any], data_stats: dict[str, Any],
               train_stats: dict[str, Any], results: dict[str, Any], reliance: dict[str, Any] | None = None,
               reading: dict[str, Any] | None = None, copying: dict[str, Any] | None = None,
               grounding: dict[str, Any] | None = None, budgets: dict[str, Any] | None = None,
               not_run: list[str] | None = None) -> str:
    """`not_run`: the evals left out (a browserless eval's Chromium and video tasks), named on the card;
    `budgets`: the step-bounded stages' planned and done steps (`recipes.stages.budgets`)."""
    params = sum(p.numel() for p in VLM.from_config(config).model.parameters())
    rows = "\n".join(f"| {name} | {'not run' if m is None else f'{m:.1%}'} | {t:.0%} | "
                     f"{'n/a' if ok is None else ('yes' if ok else f'no (short by {t - m:.1%})')} |"
                     for name, m, t, ok in target_rows(results))
    label = {EVERY_LANGUAGE: "grounding on pages in all six languages",
             UI_GROUNDING: "grounding on held-out screens drawn with PIL (`synth.ui`, not web pages)"}
    details = "\n".join(f"- {label.get(task, task)}: {r['accuracy']:.1%} of {r['n']} ("
                        + ", ".join(f"{g} {v['correct']}/{v['total']}" for g, v in r["groups"].items()) + ")"
                        + (f"; {r['measured']}" if "measured" in r else "")
                        for task, r in results.items() if task != FIRST_USE)
    details += _first_use_line(results) + _not_run_sentence(results, not_run or [])
    t, v = config.text, config.vision
    where = f" on {train_stats['machine']}" if "machine" in train_stats else ""
    return f"""# glmv default model

A small model with GLM-4.5V's architecture and checkpoint layout (`model_type` `glm4v_moe`:
native-resolution ViT, 2x2-merge MLP projector, MoE language model with 3-axis M-RoPE),
trained from scratch on this project's synthetic GUI and video data only, to ground, answer
and act on synthetic web pages and shape videos; it knows nothing else.

- Parameters: {params / 1e6:.1f}M, float32 safetensors ({params * 4 / 1e6:.0f} MB).
- Text: {t.num_hidden_layers} layers, width {t.hidden_size}, {t.num_attention_heads} query / {t.num_key_value_heads} KV heads of {t.head_dim};
  layer 0 dense, then {t.n_routed_experts} routed experts (top-{t.num_experts_per_tok}) + {t.n_shared_experts} shared, expert width {t.moe_intermediate_size}.
- Vision: {v.depth} blocks, width {v.hidden_size}, patch {v.patch_size}, 2x2 merge; images at most
  {recipe.image_max_pixels // 2:,} pixels (a 1280x720 screenshot is {_screenshot_tokens(recipe)} tokens), videos {VIDEO_MAX_PIXELS:,} over all frames.
- Tokenizer: byte-level BPE, 8192 tokens, {'retrained on the training corpus' if recipe.retrain_tokenizer else 'the project tokenizer'};
  numbers are written one digit per token.

## Training data

`python -m synth`, train split, seed {recipe.seed}: {data_stats.get('samples', '?')} conversations, unit mix `{recipe.kinds}`,
{recipe.grounding_turns} grounding questions per screenshot conversation
({', '.join(f'{k} {n}' for k, n in sorted(data_stats.get('kinds', {}).items()))}).
{_data_sentence(recipe)}
{_thinking_sentence(recipe.nothink)}

## Recipe

{_reading_sentence(recipe, reading or {})}{_copying_sentence(recipe, copying or {})}{_grounding_sentence(recipe, grounding or {})}

Trainer `pretrain` preset (Muon on hidden matrices, AdamW elsewhere), lr {recipe.lr}, warmup {recipe.warmup_steps},
cosine to 10%, batch {recipe.batch_size} x {recipe.grad_accum}, {plan['steps']} steps ({plan['source']}), max length {recipe.max_length}.
Training took {train_stats.get('hours', float('nan')):.2f} h{where}; final loss {train_stats.get('final_loss', float('nan')):.3f}.{_deadline_sentence(budgets or {})}

Command:

    {command}

## Evaluation (held-out seed stream, `python -m synth.eval TASK --model assets/model --seed {EVAL_SEED} --languages {recipe.languages}`)

| target | measured | issue target | met |
|---|---|---|---|
{rows}

{details}
{_reliance_section(reliance or {})}"""


def _first_use_line(results: dict[str, Any]) -> str:
    """Issue #16's "tried as a new user would" (`recipes.first_use`), counted, not as a share."""
    if not results:  # nothing evaluated at all
        return ""
    if FIRST_USE not in results:
        return "\n- first use (`python -m recipes.first_use`): not run (it needs Chromium)"
    r = results[FIRST_USE]
    boxed = sum(g["correct"] for g in r["groups"].values())
    square = "hit" if r["red_square"]["correct"] else "missed"
    return (f"\n- first use, tried as a new user would (`python -m recipes.first_use`: the README's question on "
            f"{len(r['groups'])} plain pages, the demo's example): {boxed}/{r['n']} buttons boxed, red square {square}"
            + (f"; {r['measured']}" if "measured" in r else ""))


def _not_run_sentence(results: dict[str, Any], not_run: list[str]) -> str:
    if not not_run or not results:  # nothing evaluated at all: the table says "not run" already
        return ""
    return "\n\n" + textwrap.fill(
        f"Not run: {', '.join(not_run)} (they need Chromium, or ffmpeg and decord for the videos, which the "
        "machine that evaluated lacked). `python -m recipes.default_model --eval-only PACK --out DIR --work WORK` "
        "runs them on the packed checkpoint (`--pack`) where those tools are installed.", width=95,
        break_on_hyphens=False)  # the command's options stay whole


def _screenshot_tokens(recipe: Recipe) -> int:
    h, w = smart_resize(720, 1280, max_pixels=recipe.image_max_pixels)
    return (h // 28) * (w // 28)


def _lm_init(recipe: Recipe) -> str:
    """How stage 2 starts and what it is told besides the answers."""
    out = (", the language model's attention mimetic (`recipes.mimetic`: it starts by content, a token attending "
           "to earlier tokens like itself)" if recipe.lm_init == "mimetic" else "")
    if recipe.frozen_reader:
        out += "; the reading stage's vision tower and projector stay frozen"
    if recipe.box_attention:
        out += (f"; besides the answers, one head of its second-to-last layer is told where to look while it writes a "
                f"box, the image tokens inside it (`train.box_attention`, weight {recipe.box_attention:g})")
    return out


def _reading_sentence(recipe: Recipe, reading: dict[str, Any]) -> str:
    if not recipe.reads:
        return f"No reading stage: every weight starts random{_lm_init(recipe)}."
    numbers = (f"{reading['steps']} steps in {reading['seconds'] / 60:.1f} min; held-out character accuracy "
               f"{reading['patch_char_accuracy']:.1%} per patch, {reading['token_char_accuracy']:.1%} through the "
               "merged tokens" if reading else "not recorded")
    glyphs = (f", the first {recipe.reading_glyph_share:.0%} of it on that alone before the position, centre and "
              "alignment losses join" if recipe.reading_glyph_share else "")
    return textwrap.fill(f"Stage 1, reading (`recipes.reading`, {recipe.reading_init} init): the vision encoder alone "
                         "is told which characters every 14-px patch shows, on `synth.text` pictures of UI-sized "
                         f"text at any pixel offset{glyphs} ({numbers}). Stage 2 trains the whole model from that encoder "
                         f"and random weights elsewhere{_lm_init(recipe)}.", width=95)


def _copying_sentence(recipe: Recipe, copying: dict[str, Any]) -> str:
    if not recipe.copying_steps:
        return ""
    took = f" after {copying['seconds'] / 60:.1f} min" if isinstance(copying.get("seconds"), (int, float)) else ""
    measured = f"held-out copy accuracy {copying['copy_accuracy']:.1%}{took}" if copying else "not recorded"
    return "\n\n" + textwrap.fill(
        f"Before it, the language model learns to copy on text alone (`recipes.copying`, {recipe.copying_steps} steps: "
        "random UI words, then the same words again, so only their content finds the next one; the input "
        f"embeddings the encoder aligned to stay frozen; {measured}).", width=95)


def _grounding_sentence(recipe: Recipe, grounding: dict[str, Any]) -> str:
    if not recipe.grounds:
        return ""
    measured = (f"held-out gap {grounding['gap']:.3f} nats between each picture and another, {grounding['boxes']:.0%} "
                f"of first answers boxed on the word, after {grounding['steps']} steps" if grounding else "not recorded")
    return "\n\n" + textwrap.fill(
        "Then, over the frozen reader, it learns which word and where: 224x112 pictures of three UI words, a "
        "question about each, one attention head told to look inside the box it writes (`recipes.looking ground`, "
        f"{recipe.ground_steps} steps; {measured}).", width=95)


def _deadline_sentence(budgets: dict[str, Any]) -> str:
    """The stages the run's deadline (`--deadline`) cut short, with what they planned and did."""
    cut = [f"{stage} after {b['done_steps']} of {b['planned_steps']} planned steps" if "planned_steps" in b
           else f"{stage} after {b['done_steps']} steps of a planned {b['planned_minutes']:g} min"
           for stage, b in budgets.items() if b["cut_by_deadline"]]
    if not cut:
        return ""
    return "\n\n" + textwrap.fill(f"The run's wall-clock deadline (`--deadline`) cut short {'; '.join(cut)}, to leave "
                                  "time for the eval and shipping: the numbers here are those of the shorter stages.",
                                  width=95)


def _reliance_section(reliance: dict[str, Any]) -> str:
    if not reliance:
        return ""
    rows = "\n".join(f"| {kind} | {r['n']} | {r['own']:.4f} | {r['swapped']:.4f} | {r['gap']:+.4f} |"
                     for kind, r in reliance.items())
    return f"""
## Does it look? (`python -m recipes.reliance` on the held-out data above)

Mean loss of the answer tokens with each conversation's own media and with another
conversation's in its place. A gap near 0 nats means the answers come from the question's text
and the pages' predictable layouts, not from the pixels.

| kind | n | own media | other media | gap (nats) |
|---|---|---|---|---|
{rows}
"""


def _language_names(languages: str) -> str:
    names = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "zh": "Chinese", "ja": "Japanese"}
    chosen = parse_languages(languages)
    return "all six UI languages" if chosen == LANGUAGES else " and ".join(names[c] for c in chosen) + " only"


_KIND_TEXT = {
    "grounding": "grounding with the released prompt wording",
    "read": "reading (every element's text and box, in document order)",
    "action": "single GUI steps in the desktop, mobile and set-of-marks formats",
    "qa": "screenshot questions",
    "episode": "expert multi-step episodes",
    "video": "shape videos with time questions",
}


def _data_sentence(recipe: Recipe) -> str:
    pages = (f"Pages in {_language_names(recipe.languages)}, rendered by Chromium "
             f"at 1280x720 and 390x844 (touch), boxes from the DOM; {_kind_descriptions(recipe.kinds)}."
             if recipe.samples else "No Chromium pages.")
    drawn = (f" Plus {recipe.ui_samples} grounding and reading conversations on UIs drawn with PIL (`synth.ui`: "
             "160x210 task areas to 1440x900 screens, light and dark themes, exact boxes)." if recipe.ui_samples else "")
    return textwrap.fill(pages + drawn, width=95)


def _kind_descriptions(kinds: str) -> str:
    return ", ".join(_KIND_TEXT[k] for k in dict.fromkeys(parse_kinds(kinds)))


def _thinking_sentence(nothink: float) -> str:
    if not nothink:
        return "Every conversation has thinking on (an empty think block before the answer)."
    return textwrap.fill(f"{nothink:.0%} of the conversations have thinking switched off (`/nothink`), so the "
                         "model answers in both modes (`thinking=False` or the default).", width=95)
