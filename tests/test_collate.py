"""Tokenising conversations (labels only on assistant tokens), packing without cross-talk, and the
epoch order that makes multi-process runs see the same global batches."""

import subprocess

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from train.collate import IGNORE, Encoder, assistant_labels, epoch_order, pack
from train.model import preset_for_tokenizer


@pytest.fixture(scope="module")
def processor():
    from vlm.processor import Processor

    return Processor.from_pretrained()


def _image(tmp_path, name, size, colour=(200, 40, 40)):
    path = tmp_path / name
    Image.new("RGB", size, colour).save(path)
    return str(path)


def _conv(image, question, answer):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def test_only_assistant_answers_and_their_end_tokens_are_learned(processor, tmp_path):
    image = _image(tmp_path, "a.png", (84, 56))
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        *_conv(image, "Colour?", "Red."),
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
    ]
    for thinking, learned in ((None, "<think></think>\nRed.<|user|><think></think>\nYes.<|endoftext|>"),
                              (False, "Red.<|user|>Yes.<|endoftext|>")):
        sample = Encoder(processor, max_length=512, thinking=thinking).encode(messages)
        learned_ids = sample.input_ids[1:][sample.targets[:-1] != IGNORE]
        assert processor.tokenizer.decode(learned_ids) == learned
        assert sample.targets[-1] == IGNORE  # nothing after the last token
        # vision placeholders are input, never targets
        image_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
        n_image_tokens = int(sample.image_grid_thw.prod()) // 4
        assert (sample.input_ids == image_id).sum() == n_image_tokens and not (sample.targets == image_id).any()


def test_assistant_labels_on_raw_ids():
    A, U, END = 1, 2, 9
    ids = torch.tensor([5, U, 6, 7, A, 3, 8, 8, U, 6, A, 3, 4, END])
    labels = assistant_labels(ids, assistant_id=A, end_ids=frozenset({U, END}), prompt_tail=(3,))
    assert labels.tolist() == [IGNORE] * 6 + [8, 8, U] + [IGNORE] * 3 + [4, END]


@pytest.mark.slow
def test_a_video_and_an_image_in_one_conversation(processor, tmp_path):
    video = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=4:duration=2",
                    "-pix_fmt", "yuv420p", str(video)], check=True)
    image = _image(tmp_path, "a.png", (56, 56))
    messages = [{"role": "user", "content": [{"type": "video", "video": str(video)}, {"type": "image", "image": image},
                                             {"type": "text", "text": "What happens?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A test pattern."}]}]
    sample = Encoder(processor, max_length=2048).encode(messages)
    assert sample.video_grid_thw is not None and sample.image_grid_thw is not None
    t, h, w = sample.video_grid_thw[0].tolist()
    assert t == 2  # 2 s at 2 fps: 4 frames, 2 temporal pairs
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    expected = int(sample.image_grid_thw.prod()) // 4 + t * h * w // 4  # frames use <|image|> too
    assert int((sample.input_ids == image_id).sum()) == expected


@pytest.mark.slow
def test_a_packed_row_computes_what_its_samples_compute_alone(processor, tmp_path):
    from vlm import VLM

    encoder = Encoder(processor, max_length=512)
    samples = [encoder.encode(_conv(_image(tmp_path, f"{i}.png", size), q, a)) for i, (size, q, a) in enumerate([
        ((56, 56), "Colour?", "Red."), ((112, 56), "What is this?", "A wide red box."),
        ((84, 84), "Anything else?", "No.")])]
    model = VLM.from_config(preset_for_tokenizer("tiny", processor.tokenizer), seed=0).model.eval()

    def token_losses(batch):
        with torch.no_grad():
            logits = model(**batch.model_inputs("cpu")).logits
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="none")

    packed = pack(samples, row_length=1024)
    assert packed.input_ids.shape[0] == 1 and packed.segment_ids.max() == 3
    together = token_losses(packed)[packed.targets.flatten() != IGNORE]
    alone = torch.cat([token_losses(pack([s], row_length=1024))[s.targets != IGNORE] for s in samples])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)

    two_rows = pack(samples, row_length=len(samples[0]) + len(samples[2]))
    assert two_rows.input_ids.shape[0] == 2  # first fit: samples 0 and 2 share a row
    assert two_rows.num_target_tokens == packed.num_target_tokens


def test_epoch_order_is_a_permutation_independent_of_process_count_and_groups_lengths():
    lengths = [int(x) for x in torch.randint(10, 500, (200,), generator=torch.Generator().manual_seed(0))]
    order = epoch_order(lengths, global_batch=8, seed=1, epoch=0, group_by_length=True)
    assert sorted(order) == list(range(200))
    assert order == epoch_order(lengths, global_batch=8, seed=1, epoch=0, group_by_length=True)
    assert order != epoch_order(lengths, global_batch=8, seed=1, epoch=1, group_by_length=True)

    def padding(o):  # tokens wasted padding each global batch to its longest sample
        return sum(max(lengths[i] for i in o[k:k + 8]) * 8 - sum(lengths[i] for i in o[k:k + 8])
                   for k in range(0, 200, 8))

    plain = epoch_order(lengths, global_batch=8, seed=1, epoch=0, group_by_length=False)
    assert padding(order) < 0.25 * padding(plain)


def test_a_sample_longer_than_a_row_is_refused(processor, tmp_path):
    sample = Encoder(processor, max_length=512).encode(_conv(_image(tmp_path, "a.png", (56, 56)), "Q", "A"))
    with pytest.raises(ValueError, match=f"sample of {len(sample)} tokens does not fit a row of 10"):
        pack([sample], row_length=10)
