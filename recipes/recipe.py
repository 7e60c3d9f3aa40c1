"""The default model's recipe: the options that decide it (`Recipe`), its architecture
(`model_config`) and the constants the recipe's stages and its model card share.

One module that both `recipes.default_model` (which runs the recipe) and `recipes.model_card`
(which describes it) import, so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from synth.dataset import SynthConfig, parse_kinds, parse_languages
from synth.ui import UI_KINDS, UI_LANGUAGES, UIConfig
from synth.vocab import LANGUAGES
from vlm.config import TextConfig, VisionConfig, VLMConfig

Size = Literal["small", "tiny"]
EVAL_TASKS = ("grounding", "action", "video", "episodes", "qa")
EVAL_SEED = 1  # held-out stream seed for the reported numbers
EVERY_LANGUAGE = "grounding_every_language"  # extra eval when the recipe's pages are not all six
UI_GROUNDING = "ui_grounding"  # grounding on held-out drawn UIs: the eval a machine without Chromium can run
# Unit shares, chosen by compute rather than by count: an action or episode step carries the
# released agent prompt (~1,800-2,200 tokens with our tokenizer) for one short answer, a
# grounding unit is one ~430-token conversation of GROUNDING_TURNS questions about one
# screenshot. With "grounding:6,action:3,..." 88% of the tokens were action prompts and a
# checkpoint at step 306 of 699 had not yet learned the grounding answer's format. This mix
# gives grounding (which actions and episodes need too) ~40% of the tokens; it is the shipped
# model's mix. READING_KINDS adds reading conversations (every element's text, then its box) at
# about grounding's token share and doubles the cheap videos. With `--languages en --nothink 0.5`
# it was stopped at step 725 of 1,538: like the shipped model, it did not use the image at all
# (`python -m recipes.reliance`), so more steps of it would not have helped.
DEFAULT_KINDS = "grounding:24,action:1,episode:1,video:2,qa:1"
READING_KINDS = "grounding:24,read:16,action:1,episode:1,video:4,qa:1"
GROUNDING_TURNS = 6
# Counted over the duplicated frame pair: 1280x720 -> 728x420 = 390 tokens (x0.58 high), so 13-18 px
# UI text reaches the encoder 7.6-10.5 px high. v1's 320,000 (532x280, x0.39, 5.1-7.0 px text) was
# too small to read for an encoder trained from scratch; a 390x844 phone screen is now ~native.
# An offline OCR reads 93% of drawn desktop UIs' words at this budget, 71% at v1's
# (`python -m recipes.legibility`; tests/test_legibility.py holds it).
IMAGE_MAX_PIXELS = 640_000
VIDEO_MAX_PIXELS = 320_000  # over all sampled frames: a 6-10 s clip at 2 fps -> 150-180 tokens


# what a run recorded before these options existed did without them (`Recipe.of_record`)
BEFORE_OPTIONS = {"reading_steps": None, "copying_steps": 0, "freeze_reader": False, "ground_steps": 0}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Everything that decides the model. Saved as `work/recipe.json`; a rerun must match it."""

    size: Size = "small"
    seed: int = 0
    samples: int = 6_000  # conversations generated; the pilot extrapolates ~4,500 seen in 2 CPU hours
    # conversations from PIL-drawn UIs (`synth.ui`: grounding and reading, no browser) mixed into
    # the training data; 0: none. With samples=0 the data needs no Chromium (a GPU machine).
    ui_samples: int = 0
    kinds: str = DEFAULT_KINDS
    grounding_turns: int = GROUNDING_TURNS
    languages: str = ",".join(LANGUAGES)  # UI languages of the training pages and the held-out eval
    nothink: float = 0.0  # share of conversations with /nothink (0.5: it answers in both modes)
    retrain_tokenizer: bool = True
    image_max_pixels: int = IMAGE_MAX_PIXELS  # the processor's budget per image (v1: 320,000)
    reading_minutes: float = 8.0  # stage 3b, the encoder learning to read (0: none, the v1 recipe)
    # its budget in optimiser steps instead (a time budget gives fewer steps on a busy machine:
    # beside other jobs 30 minutes were ~1800 steps, alone ~3100)
    reading_steps: int | None = None
    reading_init: Literal["default", "mimetic"] = "mimetic"
    # the share of it that trains the character heads alone first (`recipes.reading --glyph-share`)
    reading_glyph_share: float = 2 / 3
    # the language model's attention at step 0: "mimetic" starts it by content (`recipes.mimetic`)
    lm_init: Literal["default", "mimetic"] = "default"
    # stage 3c: steps of text-only copying (`recipes.copying`) that give the random language model
    # copying (induction) heads before stage 4, embeddings frozen so the reader stays aligned; 0: none.
    # Measured (`recipes.looking third`, three words, the ideal reader): from the random language
    # model gap 0.000 at 500 steps; after 2000 copying steps (64% copied) 0.012 at 300; after 3000
    # (93%) 0.039 at 250. Copy accuracy is 0.93 at 3000 steps and 0.93 at 3500 (~0.55 s a step, one core)
    copying_steps: int = 3000
    # stage 3d (with a reading stage): steps in which the language model, the reader frozen, learns
    # which word and where on 224x112 pictures of three UI words, every word asked, the box-attention
    # label on (`recipes.looking ground`); 0: none. Measured from a 3000-step copier and a 3368-step
    # reader: gap 0.227 nats, 22% of first answers boxed at 1000 steps (seed 1: 0.220, 13%; one question
    # a picture: 0.038; without the label: 0.073)
    ground_steps: int = 1000
    # weight of the box-attention label (`train.box_attention`: while a box is written, one head
    # looks at the image tokens inside it); 0: off
    box_attention: float = 0.0
    # stage 4 trains around the reading stage's encoder and projector, frozen (with a reading stage).
    # `recipes.looking third` (three words) from a copying language model with the reader r10:
    # trained along, gap 0.000 for 750 steps; frozen, 0.036 nats at 250 (the ideal reader: 0.039)
    freeze_reader: bool = True
    steps: int | None = None  # optimiser steps; None: from --hours and a measured step time
    hours: float = 2.0  # training budget when steps is None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 50
    max_length: int = 4096  # longer samples are skipped and counted (at 640,000 pixels 3072 dropped action prompts)
    eval_n: int = 100  # held-out samples per task (episodes: eval_n // 5)

    def __post_init__(self) -> None:
        if self.size not in ("small", "tiny"):
            raise ValueError(f"size {self.size!r}: expected 'small' or 'tiny'")
        if self.samples < 0 or self.ui_samples < 0:
            raise ValueError(f"samples={self.samples}, ui_samples={self.ui_samples}: expected counts >= 0")
        if self.samples + self.ui_samples < self.batch_size * self.grad_accum:
            raise ValueError(f"samples={self.samples} + ui_samples={self.ui_samples} is less than one batch "
                             f"({self.batch_size * self.grad_accum})")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps}: expected a positive number of optimiser steps")
        if self.image_max_pixels < 2 * 28 * 28:
            raise ValueError(f"image_max_pixels={self.image_max_pixels}: expected at least one 28x28 block (1568)")
        if self.reading_steps is not None and self.reading_steps < 1:
            raise ValueError(f"reading_steps={self.reading_steps}: expected a positive number of steps (unset: minutes)")
        if self.reading_minutes < 0:
            raise ValueError(f"reading_minutes={self.reading_minutes}: expected 0 (no reading stage) or more")
        if not 0 <= self.reading_glyph_share < 1:
            raise ValueError(f"reading_glyph_share={self.reading_glyph_share}: expected a share in [0, 1)")
        if self.copying_steps < 0:
            raise ValueError(f"copying_steps={self.copying_steps}: expected 0 (no copying stage) or more")
        if self.ground_steps < 0:
            raise ValueError(f"ground_steps={self.ground_steps}: expected 0 (no word-grounding stage) or more")
        if not self.box_attention >= 0:
            raise ValueError(f"box_attention={self.box_attention}: expected a weight >= 0")
        if self.lm_init not in ("default", "mimetic"):
            raise ValueError(f"lm_init {self.lm_init!r}: expected 'default' or 'mimetic'")
        if self.reading_init not in ("default", "mimetic"):
            raise ValueError(f"reading_init {self.reading_init!r}: expected 'default' or 'mimetic'")
        if self.hours <= 0:
            raise ValueError(f"hours={self.hours}: expected a positive training budget")
        self.synth_config(1)  # the data engine's own checks of languages and nothink, up front

    @classmethod
    def of_record(cls, options: dict[str, Any]) -> Recipe:
        """The recipe a run recorded (`work/recipe.json`, a record's "recipe"); options it predates
        are taken as that run had them (`BEFORE_OPTIONS`), not as today's defaults."""
        return cls(**{**BEFORE_OPTIONS, **options})

    @property
    def frozen_reader(self) -> bool:
        """Whether stage 4 keeps a reader frozen: there is one only with a reading stage."""
        return self.freeze_reader and self.reads

    @property
    def grounds(self) -> bool:
        """Whether the recipe has the word-grounding stage (3d): it needs a reader to ground with."""
        return self.ground_steps > 0 and self.reads

    @property
    def reads(self) -> bool:
        """Whether the recipe has a reading stage (stage 3b)."""
        return self.reading_minutes > 0 or self.reading_steps is not None

    def synth_config(self, n: int) -> SynthConfig:
        """The `synth.dataset` config of this recipe's training data."""
        return SynthConfig(n=n, seed=self.seed, kinds=parse_kinds(self.kinds), split="train",
                           grounding_turns=self.grounding_turns, nothink=self.nothink,
                           languages=parse_languages(self.languages))

    def ui_config(self, n: int) -> UIConfig:
        """The `synth.ui` config of this recipe's drawn UIs: its grounding and reading kinds (both
        when it has neither), its Latin-script languages (English when it has none)."""
        kinds = tuple(dict.fromkeys(k for k in parse_kinds(self.kinds) if k in UI_KINDS)) or UI_KINDS
        languages = tuple(lang for lang in parse_languages(self.languages) if lang in UI_LANGUAGES) or ("en",)
        return UIConfig(n=n, seed=self.seed, kinds=kinds, split="train", grounding_turns=self.grounding_turns,  # type: ignore[arg-type]
                        languages=languages, nothink=self.nothink)  # type: ignore[arg-type]


def model_config(size: Size) -> VLMConfig:
    """GLM-4.5V's architecture at the default model's size (before fitting to the tokenizer).

    small: 6 text layers of width 256 (the first dense, five MoE with 8 routed experts, top-2,
    plus one shared), 4 query / 2 KV heads of 64; a 4-block ViT of width 128. ~11M parameters,
    ~4M active per token besides the embeddings. tiny: the same shape at test size."""
    if size == "tiny":
        text = TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=32, mrope_section=(2, 3, 3), max_position_embeddings=8192,
                          n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
                          first_k_dense_replace=1)
        vision = VisionConfig(depth=1, hidden_size=32, num_heads=1, out_hidden_size=64, intermediate_size=96,
                              image_size=336)
    else:
        text = TextConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=64, mrope_section=(4, 6, 6), max_position_embeddings=8192,
                          n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=128,
                          first_k_dense_replace=1)
        vision = VisionConfig(depth=4, hidden_size=128, num_heads=2, out_hidden_size=256, intermediate_size=512,
                              image_size=336)
    return VLMConfig(model_type="glm4v_moe", text=text, vision=vision)
