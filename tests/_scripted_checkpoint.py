"""A tiny real checkpoint whose greedy output is known in advance.

A random tiny checkpoint answers arbitrary text, so a test cannot check that a box gets drawn
or that streamed text arrives in order. This builder hand-sets the weights of a tiny
`glm4v_moe` model (written by transformers' `save_pretrained`, so any loader of the released
layout reads it) so that greedy decoding after the chat template's generation prompt spells

    <think>{thinking}</think>\\n{answer}<|endoftext|>      (thinking on, the default)
    {answer}<|endoftext|>                                   (thinking off: `<think></think>\\n` pre-filled)

with `answer` holding a box. The engine computes it for real: the tokenizer, the chat template,
the vision tower (its output is zero here), every layer and the sampler run as for any model.

How the weights script the text. Let `seq` be `<|assistant|> \\n <think> ... </think> \\n answer
<|endoftext|>` as token ids, and the "chain" the distinct tokens in it.

1. Every chain token gets a one-hot embedding (dims 0..n-1); other tokens live in dims >= 2n,
   and the vision merger's output is zeroed, so image tokens embed to 0.
2. All MLPs, experts and the attention of layers >= 1 write zero to the residual stream, so
   those layers are the identity.
3. The attention of layer 0 is a "history" head: its query is a constant bias in the
   *non-rotary* half of the head (so positions do not matter), keys are large only for a few
   "marked" tokens, and values copy the marked token into dims n..2n-1. Its output is thus the
   mean of the marked tokens seen so far.
4. `lm_head` maps the current token to its successor in `seq` (weight S), and, where a token has
   several successors (the `,` between coordinates, the `\\n` before `<think>` and before the
   answer), tells the occurrences apart by the history (weight C << S): the marked tokens are
   the predecessors of those occurrences (`5`, `6`, ... ; `<|assistant|>`, `</think>`), and the
   j-th successor scores C * (h[pred_j] - h[pred_j+1]), which is largest exactly at occurrence j.

The builder checks the result with transformers' own greedy decoding before returning. The
script is exact for single-turn conversations: earlier assistant turns in the prompt add
marked tokens to the history.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

ASSETS_MODEL = Path(__file__).resolve().parent.parent / "assets" / "model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                   "processor_config.json", "video_preprocessor_config.json")

THINKING = "Looking for a red square."
# The tokenizer writes numbers one digit per token, so the box's digits are all different (a
# repeated token needs different neighbours each time), and the digits before its commas (5, 6,
# 4) are not the video time indices 0-2 of the example clip (they would enter the history).
ANSWER = "Here it is: <|begin_of_box|>[25,36,804,917]<|end_of_box|>"
BOX_0_999 = (25, 36, 804, 917)

_CUR_WEIGHT = 40.0  # S: successor of the current token
_HISTORY_WEIGHT = 4.0  # C: disambiguation by history, well below S
_KEY_GAIN = 20.0  # query bias; the score of a marked key is gain * sqrt(dim) / sqrt(head_dim)
_HEAD_DIM = 64  # heads = dim / 64; only head 0 is used


@dataclass(frozen=True)
class ScriptedCheckpoint:
    path: Path
    thinking: str
    answer: str
    box_0_999: tuple[int, int, int, int]


def build_scripted_checkpoint(out_dir: Path, *, thinking: str = THINKING, answer: str = ANSWER,
                              tokenizer_dir: Path = ASSETS_MODEL) -> ScriptedCheckpoint:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = _ids(tokenizer)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    seq = ([ids["<|assistant|>"]] + encode("\n") + [ids["<think>"]] + encode(thinking) + [ids["</think>"]]
           + encode("\n") + encode(answer) + [ids["<|endoftext|>"]])
    chain = list(dict.fromkeys(seq))
    dim = max(128, -(-(2 * len(chain) + 32) // 64) * 64)
    model = _tiny_model(tokenizer, ids, dim)
    _script(model, seq, chain, dim)

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    stops = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    GenerationConfig(eos_token_id=stops, pad_token_id=ids["<|endoftext|>"], do_sample=False).save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out_dir / name)
    _check(model, tokenizer, seq)
    return ScriptedCheckpoint(path=out_dir, thinking=thinking, answer=answer, box_0_999=BOX_0_999)


def _ids(tokenizer) -> dict[str, int]:
    names = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|observation|>", "<think>", "</think>",
             "<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
             "<|end_of_video|>"]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in names}
    missing = [name for name, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer in lacks special tokens {missing}")
    return ids


def _tiny_model(tokenizer, ids: dict[str, int], dim: int):
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    text = dict(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=dim // _HEAD_DIM, num_key_value_heads=1, moe_intermediate_size=32,
                n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                max_position_embeddings=32768, eos_token_id=ids["<|endoftext|>"],
                pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                 "mrope_section": [4, 6, 6]})
    vision = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=dim,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, image_size=336)
    config = Glm4vMoeConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"])
    torch.manual_seed(0)
    return Glm4vMoeForConditionalGeneration(config).eval()


def _script(model, seq: list[int], chain: list[int], dim: int) -> None:
    n = len(chain)
    slot = {token: i for i, token in enumerate(chain)}
    successors: dict[int, list[tuple[int, int]]] = {}  # token -> [(predecessor, successor)] in order
    for i in range(1, len(seq) - 1):
        successors.setdefault(seq[i], []).append((seq[i - 1], seq[i + 1]))
    successors.setdefault(seq[0], []).append((-1, seq[1]))
    ambiguous = {t: occ for t, occ in successors.items() if len({s for _, s in occ}) > 1}
    for token, occ in ambiguous.items():
        if len({p for p, _ in occ}) < len(occ) or len({s for _, s in occ}) < len(occ):
            raise ValueError(f"token {token} repeats with the same predecessor or successor; rephrase the script")
    marked = sorted({p for occ in ambiguous.values() for p, _ in occ})
    if len(marked) > _HEAD_DIM // 2:
        raise ValueError(f"{len(marked)} marked tokens do not fit one head's non-rotary half")

    lm = model.model.language_model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                continue  # RMSNorm weights stay 1
            if "down_proj" in name or ".o_proj." in name or "merger" in name:
                param.zero_()  # layers become the identity; the vision tower outputs zero
        embed = lm.embed_tokens.weight
        embed.normal_(std=1.0)
        embed[:, : 2 * n] = 0.0
        for token, i in slot.items():
            embed[token].zero_()
            embed[token, i] = 1.0

        attn = lm.layers[0].self_attn
        pass_dim = _HEAD_DIM - 1  # the last dim of the head is outside the rotary half
        attn.q_proj.weight.zero_()
        attn.q_proj.bias.zero_()
        attn.q_proj.bias[pass_dim::_HEAD_DIM] = _KEY_GAIN
        attn.k_proj.weight.zero_()
        attn.k_proj.bias.zero_()
        attn.v_proj.weight.zero_()
        attn.v_proj.bias.zero_()
        attn.o_proj.weight.zero_()
        for m, token in enumerate(marked):
            attn.k_proj.weight[pass_dim, slot[token]] = 1.0
            attn.v_proj.weight[m, slot[token]] = dim ** -0.5  # undo the RMSNorm gain of sqrt(dim)
            attn.o_proj.weight[n + slot[token], m] = 1.0  # head 0 only

        head = model.lm_head.weight
        head.zero_()
        for token, occ in successors.items():
            for _, succ in occ:
                head[succ, slot[token]] = _CUR_WEIGHT
        for occ in ambiguous.values():
            for j, (pred, succ) in enumerate(occ):
                head[succ, n + slot[pred]] += _HISTORY_WEIGHT
                if j + 1 < len(occ):
                    head[succ, n + slot[occ[j + 1][0]]] -= _HISTORY_WEIGHT


def _check(model, tokenizer, seq: list[int]) -> None:
    """transformers' greedy decoding from both generation prompts must spell the script."""
    messages = [{"role": "user", "content": "Where is it?"}]
    for thinking, start in ((True, 2), (False, seq.index(tokenizer.convert_tokens_to_ids("</think>")) + 2)):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=thinking,
                                               tokenize=False)
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        want = seq[start:]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(want), do_sample=False)
        got = out[0, ids.shape[1]:].tolist()
        if got != want:
            raise RuntimeError(f"scripted checkpoint (thinking={thinking}) decodes {tokenizer.decode(got)!r}, "
                               f"expected {tokenizer.decode(want)!r}")


# A scripted checkpoint that calls a tool (compact XML: no newlines inside the call, since a
# repeated "\n" would need history the tools' system prompt disturbs; the parser takes both).
TOOL_THINKING = "Call a tool"
TOOL_ANSWER = "One moment<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}


def build_tool_checkpoint(out_dir: Path) -> ScriptedCheckpoint:
    """A scripted checkpoint whose answer is "One moment" and a call get_weather(city="Paris")."""
    return build_scripted_checkpoint(out_dir, thinking=TOOL_THINKING, answer=TOOL_ANSWER)
