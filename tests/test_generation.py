"""The generation engine and `VLM.generate`: invariants, parity with transformers, argument errors.

Two tiny checkpoints written by transformers' `save_pretrained`, both with the project's tokenizer
(`assets/model`) next to them: a random MoE model whose vocabulary and special ids match that
tokenizer, and the scripted checkpoint whose greedy answer is known (reasoning, then a box).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from _model_utils import MOE_TEXT, VISION
from _scripted_checkpoint import build_scripted_checkpoint
from benchmarks.gpu_parity import redraw_weights
from vlm import VLM, Generation
from vlm.generation import GenerationOptions, TokenStream, generate_ids
from vlm.sampling import Sampler, SamplingParams

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                   "processor_config.json", "video_preprocessor_config.json")
STOPS = [0, 7, 9]  # <|endoftext|>, <|user|>, <|observation|> in the project's tokenizer


def _random_reference(vocab_size: int):
    """transformers' GLM-4.5V with the tokenizer's special ids, weights drawn large enough that
    greedy choices are not near-ties (std 0.02 would make every logit ~0; `redraw_weights`)."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    torch.manual_seed(0)
    text = {**MOE_TEXT, "vocab_size": vocab_size, "eos_token_id": STOPS, "pad_token_id": 0}
    config = Glm4vMoeConfig(
        text_config=text, vision_config=VISION, image_token_id=14, video_token_id=15, image_start_token_id=10,
        image_end_token_id=11, video_start_token_id=12, video_end_token_id=13,
    )
    model = Glm4vMoeForConditionalGeneration(config)
    redraw_weights(model)
    return model.eval()


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory):
    """(our VLM, transformers' model) on the same random weights, with the project's tokenizer."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("random_text_ckpt")
    vocab = len(AutoTokenizer.from_pretrained(ASSETS))
    reference = _random_reference(vocab)
    reference.save_pretrained(path)
    for name in TOKENIZER_FILES:
        if (ASSETS / name).exists():
            shutil.copy(ASSETS / name, path / name)
    return VLM.from_pretrained(path), reference


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    checkpoint = build_scripted_checkpoint(tmp_path_factory.mktemp("scripted"))
    return checkpoint, VLM.from_pretrained(checkpoint.path)


@pytest.fixture(scope="module")
def picture():
    image = Image.new("RGB", (140, 84), "white")
    image.paste((200, 30, 30), (40, 20, 80, 60))
    return image


# ---------------------------------------------------------------------------------------------
# Streaming


def test_streamed_pieces_join_to_the_non_streamed_text(scripted, picture):
    checkpoint, vlm = scripted
    whole = vlm.generate("Where is the red square?", images=[picture], max_new_tokens=64)
    stream = vlm.generate("Where is the red square?", images=[picture], max_new_tokens=64, stream=True)
    events = list(stream.events())
    answer = "".join(piece for channel, piece in events if channel == "answer")
    thinking = "".join(piece for channel, piece in events if channel == "thinking")

    assert whole.text == checkpoint.answer and whole.thinking == checkpoint.thinking
    assert answer == whole.text and thinking == whole.thinking
    assert len([e for e in events if e[0] == "answer"]) > 3  # really streamed, not one final piece
    assert events.index(next(e for e in events if e[0] == "answer")) > 0  # reasoning comes first
    assert stream.result == Generation(**{**whole.__dict__, "prefill_s": stream.result.prefill_s,
                                          "decode_tokens_per_s": stream.result.decode_tokens_per_s})


@pytest.mark.slow
def test_sampled_stream_equals_sampled_generation_with_the_same_seed(random_pair):
    vlm, _ = random_pair
    kwargs = dict(max_new_tokens=24, temperature=1.3, top_p=0.95, top_k=50, seed=7, thinking=False)
    whole = vlm.generate("Describe a tiny world.", **kwargs)
    stream = vlm.generate("Describe a tiny world.", stream=True, **kwargs)
    assert "".join(stream) == whole.text
    assert stream.result.token_ids == whole.token_ids


def test_boxes_are_in_pixels_of_the_original_image(scripted, picture):
    checkpoint, vlm = scripted
    gen = vlm.generate("Where is the red square?", images=[picture], max_new_tokens=64, thinking=False)
    x1, y1, x2, y2 = checkpoint.box_0_999
    w, h = picture.size
    assert gen.thinking is None and gen.finish_reason == "stop"
    assert gen.boxes == [pytest.approx((x1 * w / 1000, y1 * h / 1000, (x2 + 1) * w / 1000, (y2 + 1) * h / 1000))]
    assert "<|begin_of_box|>" in gen.text  # box tokens kept in the answer


# ---------------------------------------------------------------------------------------------
# Engine invariants


@pytest.mark.slow
def test_batch_equals_one_at_a_time(random_pair, picture):
    vlm, _ = random_pair
    prompts = ["Hi.", "A much longer question about the weather in the mountains today?", "What is in it?"]
    images = [None, None, [picture]]
    batch = vlm.generate(prompts, images=images, max_new_tokens=12, thinking=False)
    single = [vlm.generate(p, images=i, max_new_tokens=12, thinking=False) for p, i in zip(prompts, images)]
    assert [g.token_ids for g in batch] == [g.token_ids for g in single]
    assert [g.text for g in batch] == [g.text for g in single]
    assert len({g.prompt_tokens for g in batch}) == 3  # the rows really were left-padded


@pytest.mark.slow
def test_cached_decode_equals_recomputation(random_pair, picture):
    """Each cached step's logits equal a full forward over the whole sequence so far (rope_delta
    from an image, and a left-padded row)."""
    vlm, _ = random_pair
    proc = vlm.processor
    prompts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}])
               for t in ("Tell me.", "What do you see in this picture, in detail?")]
    inputs = {k: v for k, v in proc(text=prompts, images=[picture, picture]).items()}
    new = generate_ids(vlm.model, inputs, GenerationOptions(max_new_tokens=8))  # greedy, no stop ids: 8 steps

    ids = torch.cat([inputs["input_ids"], new], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(new)], dim=1)
    with torch.no_grad():
        full = vlm.model(ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                         image_grid_thw=inputs["image_grid_thw"]).logits
    T = inputs["input_ids"].shape[1]
    assert torch.equal(full[:, T - 1 : -1].argmax(-1), new)


def test_decode_step_logits_equal_full_forward_logits(random_pair):
    vlm, _ = random_pair
    ids = torch.tensor([[3, 50, 60, 70, 80, 90]])
    logits = []

    def record(logits_BV):
        logits.append(logits_BV.clone())
        return logits_BV.argmax(-1)

    sampler = Sampler(SamplingParams(), batch=1, vocab_size=vlm.config.text.vocab_size, device="cpu")
    sampler.__class__ = type("Recording", (Sampler,), {"__call__": lambda self, x: record(x)})
    steps = list(TokenStream(vlm.model, {"input_ids": ids}, max_new_tokens=5, sampler=sampler))
    full_ids = torch.cat([ids, torch.tensor(steps).T], dim=1)
    with torch.no_grad():
        full = vlm.model(full_ids).logits[0, ids.shape[1] - 1 : -1]
    torch.testing.assert_close(torch.cat(logits), full, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_greedy_tokens_equal_transformers(random_pair, picture):
    vlm, reference = random_pair
    proc = vlm.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    inputs = proc(text=[proc.apply_chat_template(messages, thinking=False)], images=[picture])
    with torch.no_grad():
        theirs = reference.generate(**inputs, max_new_tokens=16, do_sample=False, eos_token_id=STOPS, pad_token_id=0)
    expected = theirs[0, inputs["input_ids"].shape[1] :].tolist()
    if expected[-1] in STOPS:
        expected = expected[: expected.index(expected[-1]) + 1]
    ours = vlm.generate("What is this?", images=[picture], max_new_tokens=16, thinking=False)
    assert ours.token_ids == expected
    assert len(expected) >= 4  # a real comparison, not a model that stops at once


# ---------------------------------------------------------------------------------------------
# Stops and seeds


def test_stop_string_ends_the_answer_and_is_trimmed(scripted, picture):
    checkpoint, vlm = scripted
    full = vlm.generate("Where?", images=[picture], max_new_tokens=64, thinking=False)
    gen = vlm.generate("Where?", images=[picture], max_new_tokens=64, thinking=False, stop=[",804", "nothing"])
    assert gen.text == checkpoint.answer.split(",804")[0]
    assert gen.finish_reason == "stop"
    assert len(gen.token_ids) < len(full.token_ids)  # it really stopped early
    stream = vlm.generate("Where?", images=[picture], max_new_tokens=64, thinking=False, stop=",804", stream=True)
    assert "".join(stream) == gen.text


def test_stop_string_inside_the_reasoning_does_not_stop(scripted, picture):
    checkpoint, vlm = scripted
    gen = vlm.generate("Where?", images=[picture], max_new_tokens=64, stop="red square")
    assert gen.thinking == checkpoint.thinking and gen.text == checkpoint.answer


def test_checkpoint_stop_token_and_length_limit(scripted, picture):
    _, vlm = scripted
    done = vlm.generate("Where?", images=[picture], max_new_tokens=64, thinking=False)
    assert done.finish_reason == "stop" and done.token_ids[-1] == 0  # <|endoftext|> from generation_config
    cut = vlm.generate("Where?", images=[picture], max_new_tokens=5, thinking=False)
    assert cut.finish_reason == "length" and cut.token_ids == done.token_ids[:5]


@pytest.mark.slow
def test_seed_makes_sampling_reproducible(random_pair):
    vlm, _ = random_pair
    kwargs = dict(max_new_tokens=16, temperature=1.5, thinking=False)
    first = vlm.generate("Say something.", seed=123, **kwargs)
    again = vlm.generate("Say something.", seed=123, **kwargs)
    other = vlm.generate("Say something.", seed=124, **kwargs)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


# ---------------------------------------------------------------------------------------------
# Sampling parity with transformers' logits processors


def test_sampling_warpers_match_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 2
    seen = torch.randint(0, 50, (3, 7))
    params = SamplingParams(temperature=0.7, top_p=0.8, top_k=12, repetition_penalty=1.3)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    expected = TopPLogitsWarper(0.8)(seen, TopKLogitsWarper(12)(seen, expected / 0.7))

    sampler = Sampler(params, batch=3, vocab_size=50, device="cpu", generator=torch.Generator().manual_seed(0))
    sampler.observe(seen, torch.ones_like(seen))
    torch.testing.assert_close(sampler.warp(logits), expected)
    assert (expected[0] > float("-inf")).sum() > 1  # the warpers left a real choice
    draws = torch.stack([sampler(logits) for _ in range(50)], dim=1)
    assert bool((expected.gather(1, draws) > float("-inf")).all())


def test_repetition_penalty_ignores_left_padding():
    sampler = Sampler(SamplingParams(repetition_penalty=2.0), batch=1, vocab_size=5, device="cpu")
    sampler.observe(torch.tensor([[4, 4, 1]]), torch.tensor([[0, 0, 1]]))
    assert sampler.seen_BV.tolist() == [[False, True, False, False, False]]
    logits = torch.tensor([[1.0, 2.0, 0.0, 0.0, 1.9]])
    assert sampler(logits).item() == 4  # token 1 (2.0) was halved below token 4 (1.9)


# ---------------------------------------------------------------------------------------------
# Errors before any work


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=-1), "max_new_tokens=-1"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(temperature=-0.1), "temperature=-0.1"),
        (dict(top_k=-2), "top_k=-2"),
        (dict(repetition_penalty=0), "repetition_penalty=0"),
        (dict(stop=[""]), "stop="),
        (dict(images=["/nonexistent/cat.png"]), "cat.png"),
        (dict(images=[b"not an image"]), "bytes"),
    ],
)
def test_bad_arguments_raise_before_any_work(scripted, monkeypatch, kwargs, message):
    _, vlm = scripted

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(vlm.model, "forward", no_work)
    with pytest.raises((ValueError, FileNotFoundError, OSError)) as err:
        vlm.generate("Where?", **kwargs)
    assert message in str(err.value)


def test_generate_keywords_are_the_options_fields_with_their_defaults():
    """`VLM.generate` spells the decoding options out as keywords; they must not drift from
    `GenerationOptions`, which `generate_ids` takes."""
    import dataclasses
    import inspect

    keywords = inspect.signature(VLM.generate).parameters
    for field in dataclasses.fields(GenerationOptions):
        assert keywords[field.name].default == field.default, field.name


def test_generation_options_check_their_values():
    with pytest.raises(ValueError, match="seed=1.5"):
        GenerationOptions(seed=1.5)
    with pytest.raises(ValueError, match="max_new_tokens=True"):
        GenerationOptions(max_new_tokens=True)
    with pytest.raises(ValueError, match="top_p=0"):
        GenerationOptions(top_p=0)


def test_streaming_a_batch_is_refused(scripted):
    _, vlm = scripted
    with pytest.raises(ValueError, match="stream=True takes one prompt"):
        vlm.generate(["a", "b"], stream=True)


def test_default_model_is_explained_until_it_ships():
    if (ASSETS / "config.json").exists():
        assert VLM.from_pretrained().processor is not None
    else:
        with pytest.raises(FileNotFoundError, match="embedded default model"):
            VLM.from_pretrained()


def test_decode_follows_weights_changed_after_an_earlier_generation(random_pair):
    """The decode plan's fused weights are rebuilt when a source weight changes in place."""
    import copy

    vlm, _ = random_pair
    model = copy.deepcopy(vlm.model)
    ids = torch.tensor([[3, 50, 60, 70, 80, 90]])
    generate_ids(model, {"input_ids": ids}, GenerationOptions(max_new_tokens=2))  # builds the plan
    with torch.no_grad():
        for layer in model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(3.0)
            layer.self_attn.v_proj.bias.add_(0.5)
    new = generate_ids(model, {"input_ids": ids}, GenerationOptions(max_new_tokens=4))
    full_ids = torch.cat([ids, new], dim=1)
    with torch.no_grad():
        full = model(full_ids).logits[0, ids.shape[1] - 1 : -1]
    assert torch.equal(full.argmax(-1), new[0])
