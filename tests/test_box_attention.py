"""train.box_attention: the box answers' attention targets are the image tokens in the box, the head's
attention it scores is the one the model computes, and the label teaches it."""

import random
import subprocess

import pytest
import torch

from recipes import looking_data
from train.box_attention import BoxAttention, box_targets
from train.collate import Encoder, pack
from vlm import VLM


@pytest.fixture(scope="module")
def vlm():
    return VLM.from_pretrained()


def _batch(vlm, examples):
    encoder = Encoder(vlm.processor, max_length=1 << 16)
    return pack([encoder.encode(ex.messages()) for ex in examples], row_length=1 << 16)


def _expected_tokens(box, side=28):
    """Merged tokens (row, col) of a SIZE picture (its own input size) whose square overlaps `box`."""
    x1, y1, x2, y2 = box
    cols, rows = looking_data.SIZE[0] // side, looking_data.SIZE[1] // side
    return {(r, c) for r in range(rows) for c in range(cols)
            if c * side < x2 and (c + 1) * side > x1 and r * side < y2 and (r + 1) * side > y1}


def test_each_box_answer_looks_at_the_image_tokens_inside_its_box(vlm):
    rng = random.Random(5)
    examples = [looking_data.example("ground", rng) for _ in range(2)] + [looking_data.example("locate", rng)]
    batch = _batch(vlm, examples)
    targets = box_targets(batch, vlm.processor.tokenizer, vlm.model.cfg)
    image_id = vlm.model.cfg.image_token_id
    answers = [(ex_i, box) for ex_i, ex in enumerate(examples) for box in ex.boxes]
    begin = vlm.processor.tokenizer.convert_tokens_to_ids("<|begin_of_box|>")
    starts = (batch.input_ids == begin).nonzero().tolist()
    assert len(starts) == len(answers)
    cols = looking_data.SIZE[0] // 28
    for (b, t), (ex_i, box) in zip(starts, answers):
        mine = (targets.rows == b) & (targets.queries >= t)
        first = int(mine.nonzero()[0])
        assert int(targets.queries[first]) == t  # from the begin-of-box token on
        keys = targets.keys[first]
        assert (batch.input_ids[b][keys] == image_id).all()
        assert (batch.segment_ids[b][keys] == ex_i + 1).all()  # its own conversation's picture
        picture_start = int(((batch.input_ids[b] == image_id) & (batch.segment_ids[b] == ex_i + 1)).nonzero()[0])
        got = {((p - picture_start) // cols, (p - picture_start) % cols) for p in keys.nonzero().squeeze(1).tolist()}
        assert got == _expected_tokens(box)


def test_a_videos_frames_in_the_batch_are_not_taken_for_pictures(vlm, tmp_path):
    """Video frames use the image placeholder id too; a conversation with a video before one with
    a picture (the training mix) must still point each box at its own picture's tokens."""
    video = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=112x56:rate=4:duration=2",
                    "-pix_fmt", "yuv420p", str(video)], check=True)
    watch = [{"role": "user", "content": [{"type": "video", "video": str(video)}, {"type": "text", "text": "What happens?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "A test pattern."}]}]
    ex = looking_data.example("locate", random.Random(3))
    encoder = Encoder(vlm.processor, max_length=1 << 16)
    batch = pack([encoder.encode(watch), encoder.encode(ex.messages())], row_length=1 << 16)
    assert batch.video_grid_thw is not None
    targets = box_targets(batch, vlm.processor.tokenizer, vlm.model.cfg)
    assert len(targets) > 0
    b = int(targets.rows[0])
    image_id, cols = vlm.model.cfg.image_token_id, looking_data.SIZE[0] // 28
    picture = (batch.input_ids[b] == image_id) & (batch.segment_ids[b] == batch.segment_ids[b, targets.queries[0]])
    start = int(picture.nonzero()[0])
    keys = targets.keys[0].nonzero().squeeze(1).tolist()
    assert {((p - start) // cols, (p - start) % cols) for p in keys} == _expected_tokens(ex.boxes[0])


def test_the_scored_attention_is_the_heads_own(vlm):
    """exp(log attention) times the head's values equals what the head hands to o_proj."""
    model = vlm.model.eval()
    looking_ = BoxAttention(model, vlm.processor.tokenizer, layer=2, head=3)
    batch = _batch(vlm, [looking_data.example("ground", random.Random(6)), looking_data.example("locate", random.Random(7))])
    handed = {}
    attn = model.language_model.layers[2].self_attn
    hook = attn.o_proj.register_forward_pre_hook(lambda m, args: handed.setdefault("x", args[0]))
    with torch.no_grad():
        model(**batch.model_inputs("cpu"))
        targets = box_targets(batch, vlm.processor.tokenizer, model.cfg)
        probs = looking_.attention(targets, batch.segment_ids).exp()
    hook.remove()
    x, hd = looking_.seen[0], attn.head_dim
    kv = 3 // (attn.num_attention_heads // attn.num_key_value_heads)
    bias = attn.v_proj.bias[kv * hd:(kv + 1) * hd] if attn.v_proj.bias is not None else None
    values = torch.nn.functional.linear(x, attn.v_proj.weight[kv * hd:(kv + 1) * hd], bias)[targets.rows]  # (N, T, hd)
    expected = (probs.unsqueeze(1) @ values).squeeze(1)
    actual = handed["x"][targets.rows, targets.queries, 3 * hd:4 * hd]
    assert len(targets) > 10 and torch.allclose(expected, actual, atol=1e-4)
    assert ((probs.sum(-1) - 1).abs() < 1e-4).all()


def test_the_label_moves_the_heads_attention_into_the_box(vlm):
    model = VLM.from_pretrained().model.train()
    looking_ = BoxAttention(model, vlm.processor.tokenizer, layer=1)
    batch = _batch(vlm, [looking_data.example("ground", random.Random(8)) for _ in range(2)])
    optimizer = torch.optim.Adam(model.language_model.parameters(), lr=3e-3)
    for _ in range(8):
        model(**batch.model_inputs("cpu"))
        loss = looking_.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert looking_.masses[-1] > 2 * looking_.masses[0]


def test_a_bad_layer_or_head_is_named(vlm):
    with pytest.raises(ValueError, match="layer 9"):
        BoxAttention(vlm.model, vlm.processor.tokenizer, layer=9)
    with pytest.raises(ValueError, match="head 7"):
        BoxAttention(vlm.model, vlm.processor.tokenizer, layer=0, head=7)


def test_several_heads_are_labelled_alike(vlm):
    """With heads (0, 2) the loss is the mean of what each head alone would score."""
    model = vlm.model.eval()
    batch = _batch(vlm, [looking_data.example("ground", random.Random(9))])
    alone = []
    for head in (0, 2):
        labelled = BoxAttention(model, vlm.processor.tokenizer, layer=3, head=head)
        with torch.no_grad():
            model(**batch.model_inputs("cpu"))
            alone.append(labelled.loss(batch))
    both = BoxAttention(model, vlm.processor.tokenizer, layer=3, head=(0, 2))
    with torch.no_grad():
        model(**batch.model_inputs("cpu"))
        loss = both.loss(batch)
    assert alone[0] != alone[1] and torch.allclose(loss, (alone[0] + alone[1]) / 2)
    with pytest.raises(ValueError, match=r"head \(\)"):
        BoxAttention(model, vlm.processor.tokenizer, layer=3, head=())


def test_the_targets_carry_each_answered_box_as_fractions_of_the_picture(vlm):
    examples = [looking_data.example("ground", random.Random(10)), looking_data.example("locate", random.Random(11))]
    targets = box_targets(_batch(vlm, examples), vlm.processor.tokenizer, vlm.model.cfg)
    width, height = looking_data.SIZE
    # the answer's box is the word's, rounded to the 0-1000 grid the answer is written in
    expected = {tuple(round(v / s, 3) for v, s in zip(box, (width, height, width, height)))
                for ex in examples for box in ex.boxes}
    got = {tuple(round(v, 3) for v in box.tolist()) for box in targets.boxes}
    assert len(got) == len(expected) and all(
        min(max(abs(a - b) for a, b in zip(g, e)) for e in expected) <= 0.002 for g in got)


def test_the_place_readout_reads_the_heads_own_output(vlm):
    """What `output` hands the readout is what the head hands to o_proj at each supervised query."""
    model = vlm.model.eval()
    labelled = BoxAttention(model, vlm.processor.tokenizer, layer=2, head=(1, 3), place_weight=1.0)
    batch = _batch(vlm, [looking_data.example("ground", random.Random(12))])
    attn, handed = model.language_model.layers[2].self_attn, {}
    hook = attn.o_proj.register_forward_pre_hook(lambda m, args: handed.setdefault("x", args[0]))
    with torch.no_grad():
        model(**batch.model_inputs("cpu"))
        targets = box_targets(batch, vlm.processor.tokenizer, model.cfg)
        outputs = {h: labelled.output(targets, labelled.attention(targets, batch.segment_ids, h), h) for h in (1, 3)}
    hook.remove()
    hd = attn.head_dim
    for h, out in outputs.items():
        assert torch.allclose(out, handed["x"][targets.rows, targets.queries, h * hd:(h + 1) * hd], atol=1e-4)


def test_the_place_label_trains_the_heads_values_and_nothing_else_of_the_layer(vlm):
    """The place label reaches the labelled head's values (its key-value group's rows of v_proj)
    and the readout; without it the box-attention loss leaves every value weight alone."""
    batch = _batch(vlm, [looking_data.example("ground", random.Random(13))])
    grads = {}
    for weight in (0.0, 1.0):
        model = VLM.from_pretrained().model.train()
        labelled = BoxAttention(model, vlm.processor.tokenizer, layer=1, head=3, place_weight=weight)
        model(**batch.model_inputs("cpu"))
        labelled.loss(batch).backward()
        grads[weight] = model.language_model.layers[1].self_attn.v_proj.weight.grad
        assert len(labelled.parameters()) == (2 if weight else 0)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in labelled.parameters())
    assert grads[0.0] is None or grads[0.0].abs().sum() == 0
    hd = model.language_model.layers[1].self_attn.head_dim  # head 3 of 4 reads key-value group 1 of 2
    assert grads[1.0][hd:].abs().sum() > 0 and grads[1.0][:hd].abs().sum() == 0
    assert labelled.place_errors and labelled.place_errors[0] > 0


def test_a_bad_place_weight_is_named(vlm):
    with pytest.raises(ValueError, match="place_weight=-1"):
        BoxAttention(vlm.model, vlm.processor.tokenizer, layer=0, place_weight=-1)
