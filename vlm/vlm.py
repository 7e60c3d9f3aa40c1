"""`VLM`: the user-facing handle: a config, the network (`.model`), an optional processor.

`VLM.from_pretrained(dir)` reads `config.json`, builds the network on the meta device and fills
it from the safetensors in place (see weights.py). A directory without tokenizer files still
loads; `processor` is then None and methods that need text raise a clear error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from . import engine
from .config import VLMConfig
from .engine import Generation, GenerationStream
from .fp8 import dequantized
from .fp8_format import fp8_format
from .fp8_linear import keep_fp8
from .generation import GenerationOptions, generate_ids
from .model import VisionLanguageModel
from .mtp import load_draft_vocab, save_draft_vocab
from .weights import checkpoint_dtype, has_mtp_layers, load_weights, save_weights

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class VLM:
    def __init__(self, model: VisionLanguageModel, *, processor: object | None = None) -> None:
        self.model = model
        self.config: VLMConfig = model.cfg
        self.processor = processor
        self.path: Path | None = None  # the checkpoint directory, when loaded from one

    @classmethod
    def from_config(cls, config: VLMConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int | None = None) -> VLM:
        """A randomly initialised model (for tests and training from scratch)."""
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device):
            model = VisionLanguageModel(config)
        init_weights(model)
        return cls(model.cast(dtype))

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
        adapter: str | os.PathLike | None = None, fp8: Literal["dequantize", "keep"] = "dequantize",
        mtp: bool | None = None,
    ) -> VLM:
        """Load a checkpoint directory; without `path`, the project's embedded model in `assets/model/`.

        `adapter`: a LoRA adapter directory (peft format, `python -m train lora`) merged in at load.
        `fp8`: for an FP8 checkpoint (fp8_format.py: block-FP8 or compressed-tensors), "dequantize" its weights
        into `dtype` on load, or "keep" the e4m3 linear weights in memory (fp8_linear.py; any scale
        layout, scaled matmuls on CUDA 9.x; weight-only compressed-tensors configs are refused).
        `mtp`: load the multi-token-prediction layer (mtp.py; used for speculative decoding) when the
        checkpoint stores the ones config.json declares (None), always (True: an error if it does
        not), or never (False: skipped, as transformers does).
        """
        if fp8 not in ("dequantize", "keep"):
            raise ValueError(f"fp8={fp8!r}; expected 'dequantize' or 'keep'")
        path = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if not (path / "config.json").is_file():
            if path == DEFAULT_MODEL_DIR:
                raise FileNotFoundError(
                    f"the embedded default model is not there yet: {path} has no config.json (only the tokenizer "
                    "ships so far); pass the path of a checkpoint directory, e.g. VLM.from_pretrained('/path/to/GLM-4.5V')"
                )
            raise FileNotFoundError(f"{str(path)!r} is not a checkpoint directory: it has no config.json")
        config = VLMConfig.load(path)
        quantized = fp8_format(config.extra)
        kept = quantized if fp8 == "keep" else None
        if kept is not None:
            kept.check_keep()
        if quantized is not None and fp8 == "dequantize":
            config = dequantized(config)  # what it saves is then a plain checkpoint
        dtype = dtype or checkpoint_dtype(path)
        stored = has_mtp_layers(path, config)
        if mtp and not stored:
            raise ValueError(f"mtp=True but {path} stores no multi-token-prediction layer (config.json declares "
                             f"num_nextn_predict_layers={config.text.num_nextn_predict_layers})")
        with torch.device("meta"):
            model = VisionLanguageModel(config, mtp=stored and mtp is not False).cast(dtype)  # routing bias stays float32
        if kept is not None:
            keep_fp8(model, path, kept)
        load_weights(model, path, device=device, cfg=config)
        load_draft_vocab(model, path)
        if adapter is not None:
            from .adapter import load_adapter, merge  # peft is imported only when an adapter is used

            model = merge(load_adapter(model, adapter))
        model.eval()
        handle = cls(model, processor=_load_processor(path))
        handle.path = path
        return handle

    def save_pretrained(self, path: str | os.PathLike, *, max_shard_bytes: int = 5 * 1024**3,
                        tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write config.json, the weights (one file, or shards past `max_shard_bytes`) and the
        processor files. Over an existing checkpoint of the same architecture an interrupted save
        leaves the old weights or the new ones, never a mix (`save_weights`); config.json is
        replaced atomically first, so only a save that changes the architecture in place has a
        moment where the two disagree (save such a model to a new directory). `tensors`: the
        weights to write by parameter name, in place of the model's own (see `save_weights`)."""
        path = Path(path)
        self.config.save(path)
        save_weights(self.model, path, max_shard_bytes=max_shard_bytes, tensors=tensors)
        save_draft_vocab(self.model, path)
        if self.processor is not None:
            self.processor.save_pretrained(path)

    def generate_ids(
        self, inputs: Mapping[str, torch.Tensor], options: GenerationOptions | None = None, **changes: Any
    ) -> torch.Tensor:
        """New token ids (B, new) for model inputs (input_ids, attention_mask, pixel values, grids).

        `options` (default `GenerationOptions()`: greedy, 512 new tokens), with `changes` to its
        fields applied: `vlm.generate_ids(inputs, max_new_tokens=8)`. Stops at the config's eos ids.
        """
        options = dataclasses.replace(options or GenerationOptions(), **changes)
        text = self.config.text
        return generate_ids(self.model, inputs, options, stop_token_ids=text.eos_token_ids, pad_token_id=text.pad_token_id)

    def generate(
        self,
        prompt_or_messages: str | Sequence[Any],
        *,
        images: Sequence[Any] | Any | None = None,
        videos: Sequence[Any] | Any | None = None,
        system: str | None = None,
        thinking: bool | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] = "auto",
        draft_tokens: int | None = None,
    ) -> Generation | list[Generation] | GenerationStream:
        """Answer a prompt (a string with `images` / `videos`, or OpenAI-style messages with image and
        video parts); a list of prompts runs as one batch and returns a list.

        `thinking=None` follows the checkpoint's default (on for GLM-4.5V), `False` switches reasoning
        off. `temperature=0` is greedy. `stop` strings end the answer (cut before them); the checkpoint's
        stop tokens always apply. `seed` makes sampling reproducible. `stream=True` returns a
        `GenerationStream` of answer pieces (`.events()` adds the reasoning), `.result` once drained.
        Bad arguments and unreadable images raise `ValueError` / `FileNotFoundError` before any work.
        The decoding keywords are the fields of `GenerationOptions` (the same defaults).

        `tools` (OpenAI's `[{"type": "function", "function": {"name", "description", "parameters"}}]`)
        are rendered by the chat template; the model's calls come back parsed in `.tool_calls`
        (arguments typed by each tool's JSON schema), out of `.text`, with `finish_reason`
        "tool_calls"; malformed ones are listed in `.tool_call_errors` and left in the text. A
        stream yields ("tool_call", ToolCall) events from `.events()` as each call completes.
        `tool_choice`: "auto"; "none" (tools shown, nothing parsed); "required" or
        `{"type": "function", "function": {"name": ...}}` make the answer start with a call.
        Messages may hold OpenAI's assistant `tool_calls` and `tool` results (see `vlm.tool_calls`).

        `draft_tokens`: speculative decoding with the checkpoint's multi-token-prediction layer
        (speculative.py): on by default when the checkpoint has one (None), 0 turns it off, k > 0
        drafts k tokens per step. Greedy answers are the same tokens either way; sampled ones
        follow the same distribution (not the same draws for a seed).
        """
        options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                    repetition_penalty=repetition_penalty, seed=seed, draft_tokens=draft_tokens)
        chat = engine.Chat.of(prompt_or_messages, images=images, videos=videos, system=system, thinking=thinking,
                              stop=stop, stream=stream, tools=tools, tool_choice=tool_choice)
        return engine.generate(self.model, self.require_processor(), chat, options, stop_token_ids=self.stop_token_ids())

    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end a generation (see `engine.stop_token_ids`)."""
        return engine.stop_token_ids(self.config.text, self.processor, self.path)

    def require_processor(self) -> object:
        """The processor, or a clear error when the checkpoint has no tokenizer files."""
        if self.processor is None:
            raise RuntimeError(
                "this VLM has no processor: the checkpoint directory has no tokenizer files "
                f"({', '.join(TOKENIZER_FILES)}); use generate_ids with token ids instead"
            )
        return self.processor


def init_weights(model: torch.nn.Module, *, std: float = 0.02) -> None:
    """Normal(0, std) matrices, ones for norm weights, zeros for biases and the routing bias."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight")):
                tensor.fill_(1.0)
            elif tensor.ndim >= 2:
                tensor.normal_(0.0, std)
            else:
                tensor.zero_()


def _load_processor(path: Path) -> object | None:
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        return None
    try:
        from .processor import Processor  # another part of the project; absent until it lands
    except ImportError:
        logger.info("tokenizer files found in %s but vlm.processor is not available", path)
        return None
    return Processor.from_pretrained(path)
