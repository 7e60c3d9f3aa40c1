"""The values a `VLMConfig` may hold: each field's type and range, and the relations between
fields that the network relies on (heads that divide the width, top-k within the experts, ids
inside the vocabulary).

The config dataclasses call these from `__post_init__`, so a config built in code and one read
from `config.json` are held to the same rules; `VLMConfig.load` adds the file's name. Each error
names the field as `config.json` spells it (`vision_config.patch_size`), the value and what was
expected. Only what the model needs is checked: a value the network can run is accepted even
when no released checkpoint uses it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TextConfig, VisionConfig, VLMConfig

ACTIVATIONS = ("silu",)  # what vlm.layers implements; another name would silently run SiLU
TOKEN_IDS = ("image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id",
             "video_start_token_id", "video_end_token_id")
_VISION_SIZES = ("depth", "hidden_size", "num_heads", "out_hidden_size", "intermediate_size", "image_size",
                 "patch_size", "temporal_patch_size", "spatial_merge_size", "in_channels")
_TEXT_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "num_experts_per_tok",
               "moe_intermediate_size", "n_group", "topk_group")
_TEXT_COUNTS = ("n_routed_experts", "n_shared_experts", "first_k_dense_replace")
# No size may be absurd: 10**30 layers or a width of 10**30 would pass a lower bound and then never
# finish building the model. 2**24 is far above any released model's largest size (vocab 151,552,
# positions 131,072) and still fails at once.
MAX_SIZE = 2 ** 24
_TEXT_FLAGS = ("attention_bias", "tie_word_embeddings", "norm_topk_prob", "sandwich_norms", "fused_gate_up")


def check_vision(cfg: VisionConfig) -> None:
    where = "vision_config."
    for name in _VISION_SIZES:
        integer(f"{where}{name}", getattr(cfg, name), low=1, high=MAX_SIZE)
    real(f"{where}rms_norm_eps", cfg.rms_norm_eps, low=0.0)
    real(f"{where}rope_theta", cfg.rope_theta, low=0.0)
    activation(f"{where}hidden_act", cfg.hidden_act)
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"{where}num_heads={cfg.num_heads} does not divide {where}hidden_size={cfg.hidden_size}")
    if cfg.head_dim % 4:  # 2D rotary: rows and columns each rotate half of the head's pairs
        raise ValueError(f"{where}hidden_size / num_heads = {cfg.head_dim}: expected a multiple of 4 (2D rotary)")
    if cfg.image_size < cfg.patch_size:
        raise ValueError(f"{where}image_size={cfg.image_size} is smaller than {where}patch_size={cfg.patch_size}")


def check_text(cfg: TextConfig) -> None:
    where = "text_config."
    for name in _TEXT_SIZES:
        integer(f"{where}{name}", getattr(cfg, name), low=1, high=MAX_SIZE)
    for name in _TEXT_COUNTS:
        integer(f"{where}{name}", getattr(cfg, name), low=0, high=MAX_SIZE)
    for name in _TEXT_FLAGS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{where}{name}={getattr(cfg, name)!r}: expected true or false")
    real(f"{where}rms_norm_eps", cfg.rms_norm_eps, low=0.0)
    real(f"{where}rope_theta", cfg.rope_theta, low=0.0)
    real(f"{where}partial_rotary_factor", cfg.partial_rotary_factor, low=0.0, high=1.0)
    real(f"{where}routed_scaling_factor", cfg.routed_scaling_factor, low=0.0)
    real(f"{where}router_aux_loss_coef", cfg.router_aux_loss_coef, low=0.0, low_open=False)
    activation(f"{where}hidden_act", cfg.hidden_act)
    if not isinstance(cfg.mrope_section, tuple) or not cfg.mrope_section:
        raise ValueError(f"{where}mrope_section={cfg.mrope_section!r}: expected a list of integers (T, H, W)")
    for i, size in enumerate(cfg.mrope_section):
        integer(f"{where}mrope_section[{i}]", size, low=0, high=MAX_SIZE)
    integer(f"{where}num_nextn_predict_layers", cfg.extra.get("num_nextn_predict_layers", 0), low=0, high=MAX_SIZE)
    _check_token_ids(cfg)
    _check_relations(cfg)


def _check_token_ids(cfg: TextConfig) -> None:
    ids = cfg.eos_token_id if isinstance(cfg.eos_token_id, tuple) else (cfg.eos_token_id,)
    for i, value in enumerate(ids):
        if value is not None or len(ids) > 1:
            token_id(f"text_config.eos_token_id{f'[{i}]' if len(ids) > 1 else ''}", value, cfg.vocab_size)
    if cfg.pad_token_id is not None:
        token_id("text_config.pad_token_id", cfg.pad_token_id, cfg.vocab_size)


def _check_relations(cfg: TextConfig) -> None:
    where = "text_config."
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(f"{where}num_key_value_heads={cfg.num_key_value_heads} does not divide "
                         f"{where}num_attention_heads={cfg.num_attention_heads}")
    rotary = cfg.head_dim * cfg.partial_rotary_factor
    if rotary != int(rotary) or int(rotary) % 2:
        raise ValueError(f"{where}head_dim={cfg.head_dim} x partial_rotary_factor={cfg.partial_rotary_factor} = "
                         f"{rotary:g} rotary dims: expected an even integer")
    if cfg.first_k_dense_replace > cfg.num_hidden_layers:
        raise ValueError(f"{where}first_k_dense_replace={cfg.first_k_dense_replace} exceeds "
                         f"{where}num_hidden_layers={cfg.num_hidden_layers}")
    experts = cfg.n_routed_experts
    if experts == 0:
        return
    if cfg.num_experts_per_tok > experts:
        raise ValueError(f"{where}num_experts_per_tok={cfg.num_experts_per_tok} exceeds "
                         f"{where}n_routed_experts={experts}")
    if experts % cfg.n_group or cfg.topk_group > cfg.n_group:
        raise ValueError(f"{where}n_group={cfg.n_group}, topk_group={cfg.topk_group}: expected n_group to divide "
                         f"n_routed_experts={experts} and topk_group <= n_group")
    if cfg.topk_group * (experts // cfg.n_group) < cfg.num_experts_per_tok:
        raise ValueError(f"{where}topk_group={cfg.topk_group} groups of {experts // cfg.n_group} experts cannot "
                         f"hold num_experts_per_tok={cfg.num_experts_per_tok}")


def check_top(cfg: VLMConfig) -> None:
    for name in TOKEN_IDS:
        token_id(name, getattr(cfg, name), cfg.text.vocab_size)


# ---- one value ------------------------------------------------------------------------------------


def integer(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name}={value!r}: expected an integer {bounds}")


def real(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (low_open and value == low):
        bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise ValueError(f"{name}={value!r}: expected a finite number {bounds}")


def token_id(name: str, value: Any, vocab_size: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ValueError(f"{name}={value!r}: expected a token id in 0..{vocab_size - 1} (vocab_size {vocab_size})")


def activation(name: str, value: Any) -> None:
    if value not in ACTIVATIONS:
        raise ValueError(f"{name}={value!r}: expected one of {list(ACTIVATIONS)} (what this model implements)")
