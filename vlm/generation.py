"""The token-level decode loop: one prefill, then one token per row per step over a preallocated cache
(or, with a multi-token-prediction layer, several per step: speculative.py).

What is unusual here:
- Prefill is the model's own forward (vision, placeholders, M-RoPE ids, rope_delta). Decode
  steps run the fused kernels of decode.py, not `VisionLanguageModel.forward`.
- Everything a step needs is made once before the loop: the KV cache (`cache.py`), the rotary
  tables for every future position (during decoding all three M-RoPE axes carry
  `position + rope_delta`, so one table per row covers the whole run), and the padding mask
  (its columns for new tokens are already True; a step takes a view of the first S columns).
- One host sync per step: the sampled ids go to the host once (`tolist`) for stop checks and
  streaming; nothing else in a step reads a device value.
- Left padding stays in the mask; positions count real tokens only, as in the reference.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .cache import KVCache
from .decode import decode_plan, decode_step
from .model import ModelOutput, VisionLanguageModel
from .rotary import mrope_cos_sin
from .sampling import Sampler, SamplingParams

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class GenerationOptions:
    """How to decode: length, sampling and seed, shared by `VLM.generate` (which builds one from its
    keywords) and `generate_ids`. Checked on construction: a bad value raises `ValueError` naming it."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 keeps everything
    top_k: int = 0  # keep the k most likely tokens; 0 keeps everything
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row; 1 is off
    seed: int | None = None  # makes sampling reproducible; None draws from torch's global generator
    # Speculative decoding with the checkpoint's multi-token-prediction layer: drafts per step.
    # None: DEFAULT_DRAFT_TOKENS when the model has the layer (on CPU: one row, greedy), else off; 0: off.
    draft_tokens: int | None = None

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"max_new_tokens={n!r}: expected an integer >= 0")
        _ = self.sampling  # SamplingParams checks the sampling values
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed={self.seed!r}: expected an integer or None")
        d = self.draft_tokens
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 0):
            raise ValueError(f"draft_tokens={d!r}: expected None (automatic), 0 (off) or an integer >= 1")

    def draft_tokens_for(self, model: VisionLanguageModel, *, batch: int = 1) -> int:
        """Drafts per step for `model` decoding `batch` rows: `draft_tokens`, or when None the default
        if it has an MTP layer, on CUDA always and on CPU for one greedy row. On CPU the shipped
        model decodes 1.16x faster with drafts at batch 1, greedy (README benchmarks); several rows
        keep the smallest accepted count of any row and were not measured faster there, and a
        seeded sampled answer stays the one plain decoding (and the server) draws: speculative
        sampling keeps the distribution, not the draws."""
        if self.draft_tokens is None:
            on_cuda = next(model.parameters()).device.type == "cuda"
            on = on_cuda or (batch == 1 and self.sampling.greedy)
            return DEFAULT_DRAFT_TOKENS if len(model.language_model.mtp_layers) and on else 0
        return self.draft_tokens

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              repetition_penalty=self.repetition_penalty)

    def sampler(self, *, batch: int, vocab_size: int, device: torch.device | str) -> Sampler:
        """A fresh sampler for one generation (seeded on `device` when `seed` is set)."""
        generator = torch.Generator(device=device).manual_seed(self.seed) if self.seed is not None else None
        return Sampler(self.sampling, batch=batch, vocab_size=vocab_size, device=device, generator=generator)


DEFAULT_DRAFT_TOKENS = 2  # chained MTP drafts per verifying forward: 2-4 measured alike on the shipped model (--mtp)
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
_IGNORED_INPUTS = ("mm_token_type_ids",)  # the reference processor's; our model reads types from the ids


class TokenStream:
    """Iterate to get, per step, the new token id of every row (a list of B ints).

    Stops after `max_new_tokens` steps or when every row has produced a stop token; a row that
    has stopped keeps yielding `pad_token_id` (None: the first stop id, else 0). Close the
    iterator (or stop iterating) to end early. Timings are filled in as it runs.
    `draft_tokens` > 0 decodes speculatively with the model's MTP layer (speculative.py): the
    same tokens under greedy decoding, the same distribution when sampling; `draft_stats` counts
    its drafts.
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        inputs: Mapping[str, torch.Tensor],
        *,
        max_new_tokens: int,
        sampler: Sampler,
        stop_token_ids: tuple[int, ...] = (),
        pad_token_id: int | None = None,
        draft_tokens: int = 0,
    ) -> None:
        unknown = set(inputs) - set(MODEL_INPUTS) - set(_IGNORED_INPUTS)
        if unknown:
            raise ValueError(f"unexpected inputs {sorted(unknown)}; expected some of {MODEL_INPUTS}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected an integer >= 0")
        check_draft_tokens(model, draft_tokens)
        self.model = model
        self.inputs = {k: inputs[k] for k in MODEL_INPUTS if inputs.get(k) is not None}
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler
        self.stop_token_ids = frozenset(stop_token_ids)
        self.pad_token_id = pad_token_id if pad_token_id is not None else (stop_token_ids[0] if stop_token_ids else 0)
        self.draft_tokens = draft_tokens
        self.draft_stats = DraftStats()
        self.prefill_s = 0.0  # prompt forward (vision included), the first token, the MTP layer's prompt pass when drafting
        self.decode_s = 0.0  # every later step
        self.decode_steps = 0

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[int]]:
        if self.max_new_tokens == 0:
            return
        start = time.perf_counter()
        run = self._prefill()
        if self.draft_tokens:
            from .speculative import SpeculativeDecoder  # speculative imports this module

            steps = iter(SpeculativeDecoder(run, self.sampler, self.draft_tokens, self.draft_stats))
        else:
            steps = self._steps(run)
        self.prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        try:
            for step, ids in enumerate(steps):
                if step:
                    self.decode_steps += 1
                    self.decode_s = time.perf_counter() - start
                yield ids
                if all(run.finished) or step == self.max_new_tokens - 1:
                    return
        finally:
            steps.close()

    def _prefill(self) -> Prefilled:
        """The prompt's forward into a new cache and the first token; tables for every later step."""
        model, text = self.model, self.model.cfg.text
        input_ids = self.inputs["input_ids"]
        B, T = input_ids.shape
        device = input_ids.device
        mask_BT = self.inputs.pop("attention_mask", None)
        mask_BT = torch.ones_like(input_ids) if mask_BT is None else mask_BT.to(device)
        # Room for the tokens asked for; a speculative step may write a draft block past them.
        N = self.max_new_tokens + (2 * self.draft_tokens + 2 if self.draft_tokens else 0)
        dtype = model.lm_head.weight.dtype
        cache = KVCache(text.num_hidden_layers, B, T + N, text.num_key_value_heads, text.head_dim, device, dtype)
        out = model(**self.inputs, attention_mask=mask_BT, cache=cache, logits_to_keep=1)
        self.sampler.observe(input_ids, mask_BT)
        token_B = self.sampler(out.logits[:, -1])
        # Rotary tables for cache positions T..T+N-1: every axis at (real tokens so far) + rope_delta.
        first_B = mask_BT.sum(-1) + out.rope_deltas.to(device)
        positions_BN = first_B[:, None] + torch.arange(N, device=device)
        cos_BNR, sin_BNR = mrope_cos_sin(
            positions_BN[None].expand(3, B, N), rotary_dim=text.rotary_dim, theta=text.rope_theta,
            mrope_section=text.mrope_section, layout=text.rotary_layout,
        )
        # Additive key mask for every step: -inf on prompt padding, 0 elsewhere (new columns visible).
        bias_B11S = None
        if not bool(mask_BT.bool().all()):
            bias_B11S = torch.zeros(B, 1, 1, T + N, dtype=dtype, device=device)
            bias_B11S[:, 0, 0, :T].masked_fill_(~mask_BT.bool(), float("-inf"))
        return Prefilled(model=model, inputs=self.inputs, mask_BT=mask_BT, out=out, cache=cache, first_ids=token_B.tolist(),
                         cos_B1NR=cos_BNR[:, None].to(dtype), sin_B1NR=sin_BNR[:, None].to(dtype), bias_B11S=bias_B11S,
                         plan=decode_plan(model), finished=[False] * B, stop_token_ids=self.stop_token_ids,
                         pad_token_id=self.pad_token_id)

    def _steps(self, run: Prefilled) -> Iterator[list[int]]:
        """Plain decoding: one token per row per forward."""
        ids = run.first_ids
        T, device = run.cache.length, run.mask_BT.device
        for step in itertools.count():
            ids = run.commit(ids)
            yield ids
            token_B1 = torch.tensor(ids, device=device)[:, None]
            self.sampler.observe(token_B1)
            S = T + step + 1
            logits_BV = decode_step(
                run.model, token_B1, run.cos_B1NR[:, :, step : step + 1], run.sin_B1NR[:, :, step : step + 1],
                None if run.bias_B11S is None else run.bias_B11S[..., :S], run.cache, run.plan,
            )
            ids = self.sampler(logits_BV).tolist()


@dataclass
class Prefilled:
    """What the prompt's forward leaves for the decode loop (plain or speculative)."""

    model: VisionLanguageModel
    inputs: dict[str, torch.Tensor]
    mask_BT: torch.Tensor  # (B, T) 1 for real prompt tokens
    out: ModelOutput  # the prompt's forward: hidden states and M-RoPE ids (an MTP layer reads them)
    cache: KVCache
    first_ids: list[int]  # the first new token of each row
    cos_B1NR: torch.Tensor  # rotary tables for cache positions T, T+1, ... (model dtype)
    sin_B1NR: torch.Tensor
    bias_B11S: torch.Tensor | None  # additive key mask over every cache position, None without padding
    plan: object  # decode.decode_plan(model)
    finished: list[bool]  # rows that produced a stop token
    stop_token_ids: frozenset[int]
    pad_token_id: int

    def commit(self, ids: list[int]) -> list[int]:
        """One step's ids, finished rows' replaced by the pad id; marks rows that now stop."""
        ids = [self.pad_token_id if done else i for i, done in zip(ids, self.finished)]
        self.finished = [done or i in self.stop_token_ids for i, done in zip(ids, self.finished)]
        return ids


@dataclass
class DraftStats:
    """Speculative decoding's counts: drafts proposed and accepted (by the acceptance rule, over
    rows still running), verifying forwards, and tokens those forwards committed per row."""

    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    committed: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.committed / self.verify_steps if self.verify_steps else 0.0


def check_draft_tokens(model: VisionLanguageModel, draft_tokens: int) -> None:
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 0:
        raise ValueError(f"draft_tokens={draft_tokens!r}: expected an integer >= 0 (0 = no speculative decoding)")
    if draft_tokens and not len(model.language_model.mtp_layers):
        raise ValueError(f"draft_tokens={draft_tokens}: this model has no multi-token-prediction layer to draft with "
                         "(config num_nextn_predict_layers, or loaded with mtp=False); use draft_tokens=0")


def generate_ids(
    model: VisionLanguageModel,
    inputs: Mapping[str, torch.Tensor],
    options: GenerationOptions = GenerationOptions(),
    *,
    stop_token_ids: tuple[int, ...] = (),
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """New token ids only, (B, new) with new <= max_new_tokens; rows that stopped hold the pad id
    (`pad_token_id`, else the first stop id, else 0)."""
    input_ids = inputs["input_ids"]
    sampler = options.sampler(batch=input_ids.shape[0], vocab_size=model.cfg.text.vocab_size, device=input_ids.device)
    steps = list(TokenStream(model, inputs, max_new_tokens=options.max_new_tokens, sampler=sampler,
                             stop_token_ids=stop_token_ids, pad_token_id=pad_token_id,
                             draft_tokens=options.draft_tokens_for(model, batch=input_ids.shape[0])))
    if not steps:
        return input_ids.new_zeros(input_ids.shape[0], 0)
    return torch.tensor(steps, dtype=torch.long, device=input_ids.device).T
