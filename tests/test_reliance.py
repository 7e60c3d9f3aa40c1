"""The image-reliance probe: a model blind by construction shows no gap, a seeing one does."""

import torch
from PIL import Image

from recipes.recipe import model_config
from train.model import fit_to_tokenizer
from recipes.reliance import measure, report
from vlm import VLM
from vlm.processor import Processor


def _records(tmp_path, colours):
    records = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"{colour}.png"
        Image.new("RGB", (112, 84), colour).save(path)
        records.append({"messages": [
            {"role": "user", "content": [{"type": "image", "image": path.name}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": f"It is {colour}, number {i}."}], "meta": {"kind": "qa"}})
    return records


def test_a_blind_model_has_no_gap_and_one_that_sees_does(tmp_path):
    processor = Processor.from_pretrained()
    model = VLM.from_config(fit_to_tokenizer(model_config("tiny"), processor.tokenizer), seed=0).model.eval()
    records = _records(tmp_path, ["red", "red", "blue", "blue", "green"])

    (seeing,) = measure(model, processor, records, root=tmp_path, n=5)
    assert seeing.kind == "qa" and seeing.n == 5 and abs(seeing.gap) > 1e-6

    # the same model with its vision encoder's output replaced by zeros cannot see
    hook = model.visual.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    try:
        (blind,) = measure(model, processor, records, root=tmp_path, n=5)
    finally:
        hook.remove()
    assert blind.n == 5 and blind.gap == 0.0 and blind.own != seeing.own
    assert report([blind]).splitlines()[-1] == "gap: 0.0000"


def test_conversations_that_all_show_the_same_image_cannot_be_swapped(tmp_path):
    processor = Processor.from_pretrained()
    model = VLM.from_config(fit_to_tokenizer(model_config("tiny"), processor.tokenizer), seed=0).model.eval()
    records = _records(tmp_path, ["red", "red", "red"])
    assert measure(model, processor, records, root=tmp_path, n=3) == []
