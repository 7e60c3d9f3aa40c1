"""Typed configuration for the GLM-4.5V / GLM-4.1V model, read from and written to `config.json`.

What is unusual here:
- One `config.json` holds three levels (top, `text_config`, `vision_config`); field names are
  the checkpoint's own words so the mapping stays one-to-one.
- Rotary settings appear in two spellings in the wild: transformers >= 5 nests them in
  `rope_parameters`; the released GLM-4.5V / 4.1V files use top-level `rope_theta`,
  `partial_rotary_factor` and `rope_scaling.mrope_section`. Both are read; the spelling that was
  read is written back.
- Every field we do not model is kept in `extra` and written back unchanged, so a load/save round
  trip never loses information.
- Every value is checked when a config is built (`config_checks`): a bad `config.json` is a
  `ValueError` naming the file, the field, the value and what was expected, at load time.
- The GLM-4.1V variant (`model_type` "glm4v") differs in the text model only: dense MLP in every
  layer, "sandwich" norms and the interleaved rotary layout. Those three switches are explicit
  fields derived from the model type, never inferred later from shapes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import config_checks
from .files import atomic_write

ModelType = Literal["glm4v_moe", "glm4v"]
RotaryLayout = Literal["half", "interleaved"]
MODEL_TYPES: tuple[str, ...] = ("glm4v_moe", "glm4v")


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 24  # number of ViT blocks
    hidden_size: int = 1536  # ViT width
    num_heads: int = 12  # head_dim = hidden_size // num_heads
    out_hidden_size: int = 4096  # ViT MLP width AND the width after the 2x2 downsample (= LLM width)
    intermediate_size: int = 10944  # projector (merger) SwiGLU width
    image_size: int = 336  # the learned position table covers image_size/patch_size squared
    patch_size: int = 14  # pixels per patch side
    temporal_patch_size: int = 2  # frames per patch (an image is duplicated into 2 frames)
    spatial_merge_size: int = 2  # 2x2 patches become one LLM token
    in_channels: int = 3
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # 2D rotary base
    hidden_act: str = "silu"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        config_checks.check_vision(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flat patch: C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151552
    hidden_size: int = 4096
    intermediate_size: int = 10944  # dense SwiGLU width (first_k_dense_replace layers)
    num_hidden_layers: int = 46
    num_attention_heads: int = 96
    num_key_value_heads: int = 8
    head_dim: int = 128  # explicit: 4096 / 96 is not an integer
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5  # only the first head_dim * factor dims rotate
    mrope_section: tuple[int, ...] = (8, 12, 12)  # rotary frequencies per (T, H, W) axis
    max_position_embeddings: int = 65536
    attention_bias: bool = True  # q/k/v have a bias, o_proj never does
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    # MoE (ignored when n_routed_experts == 0)
    n_routed_experts: int = 128
    num_experts_per_tok: int = 8
    n_shared_experts: int = 1  # shared experts run as one SwiGLU of width n * moe_intermediate_size
    moe_intermediate_size: int = 1408
    n_group: int = 1  # expert groups for group-limited routing
    topk_group: int = 1  # groups kept per token
    first_k_dense_replace: int = 1  # layers [0, k) are dense, the rest MoE
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    router_aux_loss_coef: float = 1e-4
    # GLM-4.1V switches
    sandwich_norms: bool = False  # extra RMSNorm after attention and after the MLP
    rotary_layout: RotaryLayout = "half"  # "half": NeoX halves; "interleaved": (even, odd) pairs
    fused_gate_up: bool = False  # dense MLP stored as one gate_up_proj (GLM-4.1V)
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    on_disk: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)  # keys read
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        config_checks.check_text(self)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def num_nextn_predict_layers(self) -> int:
        """Multi-token-prediction layers stored after the network's layers (not run here; kept in
        `extra` because transformers' config does not have the field)."""
        return self.extra.get("num_nextn_predict_layers", 0)

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_routed_experts > 0 and layer >= self.first_k_dense_replace

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)


@dataclass(frozen=True)
class VLMConfig:
    model_type: ModelType = "glm4v_moe"
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    image_token_id: int = 151363  # placeholder for one merged image token
    video_token_id: int = 151364  # placeholder for one merged video token (vLLM style)
    image_start_token_id: int = 151339
    image_end_token_id: int = 151340
    video_start_token_id: int = 151341
    video_end_token_id: int = 151342
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; expected one of {MODEL_TYPES}")
        if sum(self.text.mrope_section) * 2 != self.text.rotary_dim:
            raise ValueError(
                f"mrope_section {list(self.text.mrope_section)} sums to {sum(self.text.mrope_section)}, "
                f"expected rotary_dim/2 = {self.text.rotary_dim // 2}"
            )
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {self.vision.out_hidden_size} != text hidden_size {self.text.hidden_size}"
            )
        config_checks.check_top(self)

    # ---- config.json -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VLMConfig:
        raw = copy.deepcopy(_object(raw, "config.json"))
        model_type = raw.pop("model_type", None)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"config.json has model_type {model_type!r}; expected one of {MODEL_TYPES}")
        text = _text_from_dict(_object(raw.pop("text_config", None), "text_config"), model_type)
        vision = _dataclass_from_dict(VisionConfig, _object(raw.pop("vision_config", None), "vision_config"),
                                      rope_key="rope_parameters")
        known = {f.name for f in dataclasses.fields(cls)} - {"model_type", "text", "vision", "extra"}
        top = {k: raw.pop(k) for k in list(raw) if k in known}
        if "tie_word_embeddings" in raw and raw["tie_word_embeddings"] and not text.tie_word_embeddings:
            text = dataclasses.replace(text, tie_word_embeddings=True)
        return cls(model_type=model_type, text=text, vision=vision, extra=raw, **top)

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.extra)
        out["model_type"] = self.model_type
        for f in dataclasses.fields(self):
            if f.name not in ("model_type", "text", "vision", "extra"):
                out[f.name] = getattr(self, f.name)
        out.setdefault("tie_word_embeddings", self.text.tie_word_embeddings)
        out["text_config"] = _text_to_dict(self.text, self.model_type)
        out["vision_config"] = _vision_to_dict(self.vision)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> VLMConfig:
        """Read `path/config.json` (or `path` itself when it is a file)."""
        file = Path(path)
        if file.is_dir():
            file = file / "config.json"
        if not file.exists():
            raise FileNotFoundError(f"no config.json at {file}")
        try:
            return cls.from_dict(json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ValueError(f"{file} is not valid JSON: {err}") from None
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/config.json` atomically."""
        file = Path(directory) / "config.json"
        file.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        return atomic_write(file, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---- (de)serialisation helpers -------------------------------------------------------------------

_TEXT_DERIVED = ("sandwich_norms", "rotary_layout", "fused_gate_up", "on_disk")  # from model_type, never on disk
_ROPE_FIELDS = ("rope_theta", "partial_rotary_factor", "mrope_section")


def _object(value: Any, name: str) -> dict[str, Any]:
    """A JSON object (absent or null: empty), else an error naming `name`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__} {value!r:.80}")
    return value


def _number(value: Any) -> Any:
    """A JSON number as a float; anything else unchanged, for `config_checks` to name."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _dataclass_from_dict(cls, raw: dict[str, Any], *, rope_key: str, **overrides):
    raw = copy.deepcopy(raw)
    rope = _object(raw.get(rope_key), f"vision_config.{rope_key}")
    values: dict[str, Any] = {}
    if "rope_theta" in rope:
        values["rope_theta"] = _number(rope["rope_theta"])
    names = {f.name for f in dataclasses.fields(cls)} - {"extra", *_TEXT_DERIVED}
    for name in names:
        if name in raw:
            values[name] = raw.pop(name)
    values.update(overrides)
    return cls(**values, extra=raw)


def _text_from_dict(raw: dict[str, Any], model_type: str) -> TextConfig:
    raw = copy.deepcopy(raw)
    raw_keys = set(raw)
    rope = dict(_object(raw.get("rope_parameters"), "text_config.rope_parameters"))
    legacy_scaling = _object(raw.get("rope_scaling"), "text_config.rope_scaling")
    values: dict[str, Any] = {}
    # Newer spelling first, then the released files' top-level keys.
    values["rope_theta"] = _number(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    default_factor = 0.5 if model_type == "glm4v_moe" else 1.0
    values["partial_rotary_factor"] = _number(
        rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", default_factor))
    )
    section = rope.get("mrope_section", legacy_scaling.get("mrope_section", [8, 12, 12]))
    values["mrope_section"] = tuple(section) if isinstance(section, list) else section
    names = {f.name for f in dataclasses.fields(TextConfig)} - {"extra", *_TEXT_DERIVED, *_ROPE_FIELDS}
    for name in names:
        if name in raw:
            values[name] = raw.pop(name)
    if values.get("head_dim") is None:
        values["head_dim"] = _derived_head_dim(values)
    if values.get("num_key_value_heads") is None:
        values["num_key_value_heads"] = values.get("num_attention_heads", TextConfig.num_attention_heads)
    if isinstance(values.get("eos_token_id"), list):
        values["eos_token_id"] = tuple(values["eos_token_id"])
    if model_type == "glm4v":
        values.update(
            n_routed_experts=0, sandwich_norms=True, rotary_layout="interleaved", fused_gate_up=True
        )
    return TextConfig(**values, on_disk=frozenset(raw_keys), extra=raw)


def _derived_head_dim(values: dict[str, Any]) -> Any:
    """hidden_size / num_attention_heads when config.json gives no head_dim (GLM-4.1V)."""
    hidden = values.get("hidden_size", TextConfig.hidden_size)
    heads = values.get("num_attention_heads", TextConfig.num_attention_heads)
    valid = [isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (hidden, heads)]
    if not all(valid):
        return None  # the check of hidden_size / num_attention_heads names the bad value
    if hidden % heads:
        raise ValueError(f"text_config.num_attention_heads={heads} does not divide text_config.hidden_size={hidden} "
                         "and there is no text_config.head_dim to say the head width")
    return hidden // heads


def _text_to_dict(text: TextConfig, model_type: str) -> dict[str, Any]:
    out = copy.deepcopy(text.extra)
    skip = {"extra", *_TEXT_DERIVED, *_ROPE_FIELDS}
    if model_type == "glm4v":
        # GLM-4.1V's config has no MoE fields and derives head_dim from hidden/heads.
        moe_names = {f.name for f in dataclasses.fields(TextConfig) if f.name.startswith(("n_", "moe_", "num_experts"))}
        skip |= moe_names | {
            "first_k_dense_replace", "norm_topk_prob", "routed_scaling_factor", "router_aux_loss_coef",
            "topk_group", "attention_bias", "tie_word_embeddings", "eos_token_id", "head_dim",
        } - text.on_disk
        if text.head_dim != text.hidden_size // text.num_attention_heads:
            skip.discard("head_dim")
    for f in dataclasses.fields(TextConfig):
        if f.name in skip:
            continue
        value = getattr(text, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    rope = {"rope_theta": text.rope_theta, "partial_rotary_factor": text.partial_rotary_factor,
            "mrope_section": list(text.mrope_section)}
    if "rope_parameters" in out or not any(k in out for k in ("rope_theta", "rope_scaling")):
        params = dict(out.get("rope_parameters") or {"rope_type": "default"})
        params.update(rope)
        out["rope_parameters"] = params
    else:  # the released files' spelling
        out["rope_theta"] = text.rope_theta
        out["partial_rotary_factor"] = text.partial_rotary_factor
        scaling = dict(out.get("rope_scaling") or {"rope_type": "default"})
        scaling["mrope_section"] = list(text.mrope_section)
        out["rope_scaling"] = scaling
    return out


def _vision_to_dict(vision: VisionConfig) -> dict[str, Any]:
    out = copy.deepcopy(vision.extra)
    for f in dataclasses.fields(VisionConfig):
        if f.name in ("extra", "rope_theta"):
            continue
        out[f.name] = getattr(vision, f.name)
    if "rope_parameters" in out:
        out["rope_parameters"] = {**out["rope_parameters"], "rope_theta": vision.rope_theta}
    return out


# ---- presets --------------------------------------------------------------------------------------


def glm45v() -> VLMConfig:
    """The released GLM-4.5V (106B total, 12B active)."""
    return VLMConfig(
        model_type="glm4v_moe",
        text=TextConfig(eos_token_id=(151329, 151336, 151338), pad_token_id=151329),
        vision=VisionConfig(),
    )


def glm41v() -> VLMConfig:
    """The released GLM-4.1V-9B: dense text model, sandwich norms, interleaved rotary."""
    return VLMConfig(
        model_type="glm4v",
        text=TextConfig(
            intermediate_size=13696, num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=2,
            head_dim=128, max_position_embeddings=65536, n_routed_experts=0, sandwich_norms=True,
            rotary_layout="interleaved", fused_gate_up=True, eos_token_id=(151329, 151336, 151338),
            pad_token_id=151329,
        ),
        vision=VisionConfig(intermediate_size=13696),
        image_token_id=151343,
        video_token_id=151344,
    )


def tiny(*, model_type: ModelType = "glm4v_moe") -> VLMConfig:
    """A few-hundred-thousand-parameter model for tests: every code path, nothing large."""
    dense = model_type == "glm4v"
    text = TextConfig(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mrope_section=(1, 1, 2), max_position_embeddings=4096,
        n_routed_experts=0 if dense else 8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
        n_group=2, topk_group=1, first_k_dense_replace=1,
        sandwich_norms=dense, rotary_layout="interleaved" if dense else "half", fused_gate_up=dense,
        partial_rotary_factor=0.5,
    )
    vision = VisionConfig(
        depth=2, hidden_size=32, num_heads=2, out_hidden_size=64, intermediate_size=48, image_size=56,
    )
    return VLMConfig(
        model_type=model_type, text=text, vision=vision, image_token_id=300, video_token_id=301,
        image_start_token_id=302, image_end_token_id=303, video_start_token_id=304, video_end_token_id=305,
    )
