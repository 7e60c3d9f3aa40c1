"""LoRA: presets wrap what they say, merged equals unmerged, and an adapter trained here loads
with peft onto transformers' GLM-4.5V model and gives the same logits."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

from _train_utils import metrics, reference_checkpoint, write_dataset
from train.__main__ import main
from train.config import LoraOptions
from train.lora import describe, target_module_names, wrap
from vlm.adapter import load_adapter, merge


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on this shared 2-core machine two threads contend and run the tiny
    model ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reference checkpoint written by transformers and a LoRA adapter trained on it by the CLI."""
    root = tmp_path_factory.mktemp("lora")
    base = reference_checkpoint(root / "base")
    data = write_dataset(root, 8)
    out = root / "adapter"
    assert main(["lora", "--model", str(base), "--data", str(data), "--output", str(out), "--max-steps", "3",
                 "--lr", "2e-2", "--batch-size", "4", "--max-length", "256", "--lora-r", "4", "--lora-alpha", "8",
                 "--no-progress"]) == 0
    return base, out, root


def _inputs(root):
    from vlm.processor import Processor

    processor = Processor.from_pretrained()
    image = root / "probe.png"
    Image.new("RGB", (84, 56), (10, 120, 200)).save(image)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image)},
                                             {"type": "text", "text": "What colour is this?"}]}]
    return processor(text=processor.apply_chat_template(messages), images=[str(image)])


def _ours(model, inputs):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    with torch.no_grad():
        return model(**{k: inputs[k] for k in keys}).logits


@pytest.mark.slow
def test_lora_run_writes_a_standard_peft_adapter_and_metrics(trained):
    base, out, _ = trained
    assert (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(base)
    assert sorted({t.rsplit(".", 1)[-1] for t in config["target_modules"]}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["loss"] > 0 and "lr" in r and "tokens_per_s" in r for r in rows)


@pytest.mark.slow
def test_adapter_loads_with_peft_on_transformers_and_gives_the_same_logits(trained):
    from peft import PeftModel
    from transformers import Glm4vMoeForConditionalGeneration

    from vlm import VLM

    base, adapter, root = trained
    inputs = _inputs(root)
    hf = PeftModel.from_pretrained(Glm4vMoeForConditionalGeneration.from_pretrained(base).float(), adapter).eval()
    # Peft issue 3711 redirects gate/up/down_proj targets to routed experts: check what got wrapped.
    wrapped = [n for n, m in hf.named_modules() if hasattr(m, "lora_A") and n.endswith("_proj")]
    assert len(wrapped) == 12 and all(".self_attn." in n for n in wrapped)
    with torch.no_grad():
        theirs = hf(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                              "mm_token_type_ids")}).logits
    ours = _ours(VLM.from_pretrained(base, adapter=adapter).model, inputs)
    plain = _ours(VLM.from_pretrained(base).model, inputs)
    assert (ours - plain).abs().max() > 1e-3  # the adapter learned something
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=0)


@pytest.mark.slow
def test_merged_equals_unmerged_and_merge_cli_writes_a_loadable_checkpoint(trained):
    from transformers import Glm4vMoeForConditionalGeneration

    from vlm import VLM

    base, adapter, root = trained
    inputs = _inputs(root)
    unmerged = load_adapter(VLM.from_pretrained(base).model, adapter).eval()
    before = _ours(unmerged, inputs)
    after = _ours(merge(unmerged), inputs)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)

    out = root / "merged"
    assert main(["merge", "--model", str(base), "--adapter", str(adapter), "--output", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    hf = Glm4vMoeForConditionalGeneration.from_pretrained(out).float().eval()
    with torch.no_grad():
        theirs = hf(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                              "mm_token_type_ids")}).logits
    torch.testing.assert_close(theirs, before, atol=2e-4, rtol=0)


@pytest.mark.slow
def test_merge_takes_the_adapters_recorded_base_and_names_a_base_that_does_not_fit(trained, tmp_path, capsys):
    from vlm import VLM

    base, adapter, root = trained
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == 0  # no --model
    merged = VLM.from_pretrained(tmp_path / "merged").model
    expected = merge(load_adapter(VLM.from_pretrained(base).model, adapter))
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), expected.state_dict().values()))

    # recorded base: none, i.e. the embedded default model, whose shapes are not the adapter's
    other = tmp_path / "adapter"
    other.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (other / name).write_bytes((adapter / name).read_bytes())
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(SystemExit) as exit_:
        main(["merge", "--adapter", str(other), "--output", str(tmp_path / "nope")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "does not fit the base 'embedded default model'" in error and "size mismatch" in error
    assert not (tmp_path / "nope").exists()


def test_presets_wrap_exactly_their_modules():
    from vlm import VLM
    from vlm.config import tiny

    model = VLM.from_config(tiny(), seed=0).model
    names = set(target_module_names(model, LoraOptions(targets="attention_mlp")))
    assert "language_model.layers.0.mlp.gate_proj" in names  # dense layer 0
    assert "language_model.layers.1.mlp.shared_experts.down_proj" in names
    assert not any(n.startswith("visual.") or ".experts." in n or n.endswith("mlp.gate") for n in names)
    everything = set(target_module_names(model, LoraOptions(targets="all_linear", vision=True)))
    assert {"visual.merger.proj", "visual.blocks.0.attn.qkv", "visual.blocks.1.mlp.up_proj"} <= everything
    assert "lm_head" not in everything and names < everything
    attention = set(target_module_names(model, LoraOptions(targets="attention", vision=True)))
    assert attention == {n for n in everything if ".self_attn." in n or ".attn." in n}

    report = describe(wrap(model, LoraOptions(targets="attention", r=2)))
    assert "language_model.layers.0-2.self_attn.q_proj" in report
    assert "LoRA wraps 12 modules" in report and "trainable parameters:" in report


def test_trained_embeddings_save_load_and_merge_with_the_same_logits(tmp_path):
    """`embeddings`: embed_tokens and lm_head train in full beside the adapters, travel in the
    adapter file, and the loaded and the merged model compute what the trained one does."""
    from vlm import VLM
    from vlm.adapter import save_adapter
    from vlm.config import tiny

    options = LoraOptions(targets="attention", r=2, embeddings=True)
    trained = wrap(VLM.from_config(tiny(), seed=0).model, options)
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)
    with torch.no_grad():  # as if trained: every trainable tensor moves
        for name, param in trained.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    ids = torch.tensor([[1, 5, 9, 200, 3]])
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        loaded = load_adapter(VLM.from_config(tiny(), seed=0).model, save_adapter(trained, tmp_path / "a"))
        assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-5)
        assert torch.allclose(merge(loaded)(input_ids=ids).logits, want, atol=1e-5)
        assert not torch.allclose(VLM.from_config(tiny(), seed=0).model(input_ids=ids).logits, want, atol=1e-3)


def test_an_adapter_continues_from_a_saved_one_and_a_wrong_rank_is_named(tmp_path):
    """`LoraOptions(start=DIR)`: the new adapter starts with the saved one's weights (the model
    computes what the saved adapter computes), and an adapter of another rank is refused by name."""
    from vlm import VLM
    from vlm.adapter import save_adapter
    from vlm.config import tiny

    options = LoraOptions(targets="attention_mlp", r=2, embeddings=True)
    trained = wrap(VLM.from_config(tiny(), seed=0).model, options)
    with torch.no_grad():
        for param in trained.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    saved = save_adapter(trained, tmp_path / "a")
    ids = torch.tensor([[1, 5, 9, 200, 3]])
    continued = wrap(VLM.from_config(tiny(), seed=0).model, dataclasses.replace(options, start=str(saved)))
    fresh = wrap(VLM.from_config(tiny(), seed=0).model, options)
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        assert torch.allclose(continued(input_ids=ids).logits, want, atol=1e-5)
        assert not torch.allclose(fresh(input_ids=ids).logits, want, atol=1e-3)
    assert all(p.requires_grad for n, p in continued.named_parameters() if "lora_" in n)  # it trains on
    with pytest.raises(ValueError, match=r"lora start .* does not fit the adapters asked for \(r=4.*size mismatch"):
        wrap(VLM.from_config(tiny(), seed=0).model, dataclasses.replace(options, r=4, start=str(saved)))
