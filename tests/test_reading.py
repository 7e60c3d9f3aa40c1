"""The reading stage: labels line up with the encoder's patch order, mimetic init is local, it learns."""

import dataclasses
import math
import random

import pytest
import torch

from recipes.reading_data import make_batch
from recipes.reading import (ReadingConfig, Reader, load_module, new_encoder, position_r2, save_module,
                             token_positions, train)
from synth import text
from vlm.rotary import apply_rotary, vision_cos_sin
from vlm.vision import patch_coordinates

from recipes.recipe import model_config


def _vision():
    return model_config("tiny").vision


def test_batch_labels_follow_the_encoders_block_major_patch_order():
    cfg = ReadingConfig(size=(112, 56), batch_size=2)
    rng_batch, rng_draw = random.Random(3), random.Random(3)
    batch = make_batch(rng_batch, 2, cfg)
    pictures = [text.draw(rng_draw, size=cfg.size, scale=cfg.scale, font_px=cfg.font_px) for _ in range(2)]
    rows, cols, _, _ = patch_coordinates(torch.tensor([[1, 4, 8]]), 2)
    assert batch.labels_NS.shape == (2 * 32, cfg.slots) and batch.pixel_values.shape[0] == 64
    for i, picture in enumerate(pictures):
        grid = text.patch_labels(picture, slots=cfg.slots)
        for n in range(32):
            assert batch.labels_NS[32 * i + n].tolist() == grid[rows[n], cols[n]].tolist()


def test_token_positions_are_each_merged_tokens_centre_in_the_encoders_token_order():
    grid = torch.tensor([[1, 4, 8], [2, 2, 2]])  # a 4x8-patch picture (2x4 tokens), a 2-frame 2x2 video
    positions = token_positions(grid)
    assert positions.shape == (8 + 2, 2)
    rows, cols, _, _ = patch_coordinates(grid, 2)
    for k in range(8):  # token k merges patches 4k..4k+3 (block-major): their mean centre
        x = ((cols[4 * k:4 * k + 4].float() + 0.5) / 8).mean().item()
        y = ((rows[4 * k:4 * k + 4].float() + 0.5) / 4).mean().item()
        assert positions[k].tolist() == pytest.approx([x, y])
    assert {tuple(p) for p in positions[:8].tolist()} == {(x / 8, y / 4) for x in (1, 3, 5, 7) for y in (1, 3)}
    assert positions[8:].tolist() == [[0.5, 0.5], [0.5, 0.5]]  # each frame: one token in the middle
    assert position_r2(positions[:8], grid[:1]) == (1.0, 1.0)
    assert position_r2(torch.full((8, 2), 0.5), grid[:1]) == (0.0, 0.0)


def _mean_attention_distance(encoder, batch) -> float:
    """Block 0's mean attention distance in patches, on the batch's first picture."""
    with torch.no_grad():
        grid = batch.grid_thw[:1]
        L = int(grid.prod())
        rows, cols, hs, ws = patch_coordinates(grid, 2)
        x = encoder.post_conv_layernorm(encoder.patch_embed(batch.pixel_values[:L]))
        x = x + encoder.embeddings(rows, cols, hs, ws)
        cos, sin = vision_cos_sin(rows, cols, head_dim=encoder.cfg.head_dim, theta=encoder.cfg.rope_theta)
        attn = encoder.blocks[0].attn
        q, k, _ = attn.qkv(encoder.blocks[0].norm1(x)).view(L, 3, attn.num_heads, -1).unbind(1)
        q = apply_rotary(q, cos[:, None], sin[:, None], "half").transpose(0, 1)
        k = apply_rotary(k, cos[:, None], sin[:, None], "half").transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
        dist = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).float().sqrt()
        return (weights * dist).sum(-1).mean().item()


def test_mimetic_init_starts_attention_local_without_changing_the_architecture():
    vision = model_config("small").vision
    batch = make_batch(random.Random(0), 1, ReadingConfig(size=(224, 224)))
    default, mimetic = (new_encoder(vision, init=i, seed=0) for i in ("default", "mimetic"))
    assert default.state_dict().keys() == mimetic.state_dict().keys()
    assert _mean_attention_distance(mimetic, batch) < 0.7 * _mean_attention_distance(default, batch)


def test_encoder_weights_round_trip_and_refuse_another_shape(tmp_path):
    encoder = new_encoder(_vision(), init="mimetic", seed=1)
    save_module(encoder, tmp_path / "enc.safetensors", {"steps": 3})
    again = new_encoder(_vision(), init="default", seed=2)
    load_module(again, tmp_path / "enc.safetensors")
    for (name, a), b in zip(encoder.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    wider = dataclasses.replace(_vision(), hidden_size=2 * _vision().hidden_size)
    with pytest.raises(ValueError, match="does not hold this VisionEncoder's weights"):
        load_module(new_encoder(wider, init="default", seed=0), tmp_path / "enc.safetensors")


@pytest.mark.slow
def test_per_patch_labels_teach_the_encoder_characters_at_random_offsets():
    """Chance is ~1/80 per character. 200 steps of the shipped-size encoder on large text at random
    pixel offsets get above twice that on held-out pictures (one label per picture stays at chance),
    and its merged tokens say where they are (without the position loss reading trains it out)."""
    cfg = ReadingConfig(size=(112, 56), batch_size=16, scale=(1.0, 1.0), font_px=(22, 26), slots=1, n_test=64,
                        large_steps=0, glyph_share=0.0)  # its own text sizes, every loss throughout
    encoder, result = train(model_config("small").vision, cfg, steps=200, every=50, log_line=print)
    assert result["steps"] == 200
    assert result["patch_char_accuracy"] > 0.025, result  # measured 0.044 (n_test 32) on 2 shared cores
    assert min(result["position_r2_x"], result["position_r2_y"]) > 0.5, result


def test_the_cli_takes_the_text_sizes_and_names_bad_ones(tmp_path, capsys):
    from recipes.reading import main

    out = tmp_path / "encoder.safetensors"
    for bad in (["--font-px", "20", "10"], ["--scale", "0", "1"], ["--scale", "1", "9"], ["--glyph-share", "1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--out", str(out), "--size", "tiny", "--steps", "1", *bad])
        assert exit_.value.code == 2 and bad[1] in capsys.readouterr().err
    assert main(["--out", str(out), "--size", "tiny", "--steps", "2", "--batch-size", "2",
                 "--font-px", "18", "30", "--scale", "1", "1"]) == 0
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["font_px"] == "(18, 30)" and meta["scale"] == "(1.0, 1.0)" and meta["steps"] == "2"


def test_the_curriculum_switches_to_the_whole_size_range_at_the_same_step_for_any_number_of_workers():
    from recipes.reading_data import LARGE, Batches

    cfg = ReadingConfig(size=(112, 56), batch_size=1, large_steps=3)

    def expected(step: int, workers: int) -> torch.Tensor:  # worker i's k-th batch is step k * workers + i + 1
        worker, k = (step - 1) % workers, (step - 1) // workers
        rng = random.Random(f"reading/train/{cfg.seed}/{worker}")
        for j in range(k + 1):
            batch = make_batch(rng, 1, cfg, large=j * workers + worker + 1 <= cfg.large_steps)
        return batch.pixel_values

    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(Batches(cfg), batch_size=None, num_workers=workers)
        got = [b.pixel_values for b, _ in zip(loader, range(6))]
        for step, pixels in enumerate(got, start=1):
            assert torch.equal(pixels, expected(step, max(workers, 1))), (workers, step)
    # the large batches really are large text: a scale-1 picture at 18-30 px has fewer glyphs than 5.5-9 px text
    rng = random.Random(0)
    big = sum(len(text.draw(rng, size=(224, 112), font_px=LARGE[0], scale=LARGE[1]).glyphs) for _ in range(20))
    small = sum(len(text.draw(rng, size=(224, 112), font_px=(11, 15), scale=(0.5, 0.6)).glyphs) for _ in range(20))
    assert 2 * big < small


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained("assets/model")


def test_piece_labels_put_each_quoted_words_tokens_where_its_characters_are():
    from recipes.alignment import PIECES, piece_labels

    tokenizer = _tokenizer()
    rng = random.Random(5)
    for _ in range(20):
        picture = text.draw(rng, size=(224, 112), scale=(0.5, 1.0), font_px=(11, 36))
        labels = piece_labels(picture, tokenizer)
        assert labels.shape == (4, 8, PIECES)
        glyphs = iter(picture.glyphs)
        for word in (w for line in picture.lines for w in line.split()):
            places = [next(glyphs) for _ in word]
            # the tokens a grounding question quotes the word with: `Where is the text "Cancel"?`
            quoted = tokenizer.tokenize(f'Where is the text "{word}"?')
            ids = tokenizer(word, add_special_tokens=False, return_offsets_mapping=True)
            if not set(word) & set('"?'):  # those may merge with the question's closing `"?`
                assert tokenizer.convert_ids_to_tokens(ids["input_ids"]) == quoted[5:5 + len(ids["input_ids"])]
            for token, (start, end) in zip(ids["input_ids"], ids["offset_mapping"]):
                for g in places[start:end]:
                    r, c = int(g.y // 28), int(g.x // 28)
                    if 0 <= r < 4 and 0 <= c < 8 and labels[r, c, PIECES - 1] < 0:  # not a full slot list
                        assert token in labels[r, c].tolist(), (word, token, r, c)
        shown = {(r, c) for g in picture.glyphs for r, c in [(int(g.y // 28), int(g.x // 28))] if 0 <= r < 4 and 0 <= c < 8}
        for r in range(4):
            for c in range(8):
                assert (labels[r, c, 0] >= 0) == ((r, c) in shown)


def test_batches_carry_piece_labels_in_the_encoders_token_order():
    from recipes.alignment import piece_labels

    tokenizer, cfg = _tokenizer(), ReadingConfig(size=(112, 56))
    batch = make_batch(random.Random(4), 2, cfg, tokenizer=tokenizer)
    pictures = [text.draw(random.Random(4), size=cfg.size, scale=cfg.scale, font_px=cfg.font_px)]
    rows, cols, _, _ = patch_coordinates(torch.tensor([[1, 4, 8]]), 2)
    grid = piece_labels(pictures[0], tokenizer)
    assert batch.pieces_TK.shape == (2 * 8, 4)
    for k in range(8):  # merged token k: patches 4k..4k+3, the 28-px square of its first patch
        assert batch.pieces_TK[k].tolist() == grid[rows[4 * k] // 2, cols[4 * k] // 2].tolist()
    assert make_batch(random.Random(4), 2, cfg).pieces_TK is None


def test_align_loss_scores_the_shown_tokens_against_the_whole_vocabulary():
    from recipes.alignment import align_accuracy, align_baseline, align_loss

    cosine = torch.full((3, 10), -1.0)
    cosine[0, 2] = cosine[1, 5] = cosine[1, 6] = 1.0
    pieces = torch.tensor([[2, -1, -1, -1], [5, 6, -1, -1], [-1, -1, -1, -1]])  # the third shows no text
    assert align_accuracy(cosine, pieces) == 1.0
    low = align_loss(cosine, pieces, 0.1).item()
    cosine[2] = 1.0  # a token that shows nothing is not scored
    assert align_loss(cosine, pieces, 0.1).item() == pytest.approx(low)
    cosine[0, 2] = -1.0
    cosine[0, 3] = 1.0  # token 0 now nearest a token it does not show
    assert align_accuracy(cosine, pieces) == 0.5 and align_loss(cosine, pieces, 0.1).item() > low + 5
    # the picture-blind baseline: token 5 is shown by 2 of the 3 text tokens (a repeat counts once)
    assert align_baseline(torch.tensor([[5, 5, -1, -1], [5, 6, -1, -1], [2, -1, -1, -1], [-1] * 4])) == 2 / 3



def test_the_glyph_phase_is_the_first_share_of_whichever_budget_is_used_more():
    from recipes.reading import glyph_phase

    assert glyph_phase(2 / 3, 0, 300, 0.0, None)  # step 1 of 300
    assert glyph_phase(2 / 3, 199, 300, 0.0, None) and not glyph_phase(2 / 3, 200, 300, 0.0, None)
    assert glyph_phase(2 / 3, 10_000, None, 599.0, 15.0) and not glyph_phase(2 / 3, 5, None, 601.0, 15.0)
    assert not glyph_phase(2 / 3, 10, 1000, 700.0, 15.0)  # time runs out first: the time decides
    assert not glyph_phase(0.0, 0, 300, 0.0, None)  # share 0: every loss from step 1


@pytest.mark.slow
def test_place_dims_puts_each_tokens_position_in_its_first_two_coordinates():
    """place="dims": no learned head reads the position; the merged tokens' coordinates 0 and 1
    themselves become PLACE_SCALE * (x - 0.5) and (y - 0.5), the ideal reader's place code."""
    from recipes.reading import PLACE_SCALE
    cfg = ReadingConfig(size=(112, 56), batch_size=8, scale=(1.0, 1.0), font_px=(22, 26), slots=1, n_test=16,
                        large_steps=0, glyph_share=0.0, place="dims")
    encoder, result = train(_vision(), cfg, steps=200, every=1000)
    assert min(result["position_r2_x"], result["position_r2_y"]) > 0.5, result
    batch = make_batch(random.Random(9), 4, cfg)
    with torch.no_grad():
        tokens = encoder(batch.pixel_values, batch.grid_thw)
    truth = token_positions(batch.grid_thw)
    assert (tokens[:, :2] / PLACE_SCALE + 0.5 - truth).abs().mean() < 0.15
    with torch.no_grad():  # place="head": a learned head reads it instead
        assert Reader(encoder, 1, place="head")(batch.pixel_values, batch.grid_thw).position.shape == truth.shape
    with pytest.raises(ValueError, match="place='grid'"):
        Reader(encoder, 1, place="grid")


@pytest.mark.slow
def test_token_norm_gives_every_merged_token_the_same_size():
    """Reading alone leaves merged tokens of very different sizes; `token_norm` trains them all
    to one (held-out mean near it, spread a fraction of it)."""
    cfg = ReadingConfig(size=(112, 56), batch_size=8, scale=(1.0, 1.0), font_px=(22, 26), slots=1, n_test=16,
                        large_steps=0, glyph_share=0.0)
    _, free = train(_vision(), dataclasses.replace(cfg, token_norm=0.0), steps=150, every=1000)
    _, held = train(_vision(), dataclasses.replace(cfg, token_norm=8.0), steps=150, every=1000)
    assert abs(held["token_norm_mean"] - 8.0) < 1.6 and held["token_norm_std"] < 1.6, held
    assert abs(free["token_norm_mean"] - 8.0) > 3.0, free  # not so by itself


def test_whole_word_labels_give_each_words_first_token_to_every_token_it_covers():
    from recipes.alignment import PIECES, piece_labels

    tokenizer = _tokenizer()
    rng = random.Random(6)
    for _ in range(20):
        picture = text.draw(rng, size=(224, 112), scale=(0.5, 1.0), font_px=(11, 36))
        labels = piece_labels(picture, tokenizer, whole_words=True)
        glyphs, firsts = iter(picture.glyphs), set()
        for word in (w for line in picture.lines for w in line.split()):
            first = tokenizer(word, add_special_tokens=False)["input_ids"][0]
            firsts.add(first)
            for g in [next(glyphs) for _ in word]:
                r, c = int(g.y // 28), int(g.x // 28)
                if 0 <= r < 4 and 0 <= c < 8 and labels[r, c, PIECES - 1] < 0:
                    assert first in labels[r, c].tolist(), (word, r, c)
        assert set(labels[labels >= 0].tolist()) <= firsts  # a word's later tokens are not labelled
        assert ((labels[..., 0] >= 0) == (piece_labels(picture, tokenizer)[..., 0] >= 0)).all()


def test_the_ideal_target_is_the_looking_probes_ideal_reader():
    """`ideal_tokens` (what `--ideal-weight` pulls the tokens to) gives each token the code
    `recipes.looking --oracle-words embeddings` puts in the language model's image tokens."""
    import torch.nn.functional as F

    from recipes.looking_data import Example, WordOracle
    from recipes.reading import ideal_tokens
    from vlm import VLM

    vlm = VLM.from_pretrained()
    tokenizer, model = vlm.processor.tokenizer, vlm.model
    oracle = WordOracle(model, tokenizer, "embeddings")
    words = (("Cancel", (30, 30, 80, 50)), ("Save", (150, 60, 200, 90)))
    grid = torch.tensor([[1, 8, 16]])  # 224x112: 4 x 8 merged tokens
    oracle.expect([Example(image=None, turns=(), boxes=(), words=words)])
    expected = oracle._features(torch.zeros(128, 1), grid).float()
    x, y = (token_positions(grid) * torch.tensor([224, 112])).unbind(1)  # token centres, squares of 28 px
    words_TK = torch.full((32, 4), -1)
    for k, (word, (x1, y1, x2, y2)) in enumerate(words):
        covered = (x1 < x + 14) & (x - 14 < x2) & (y1 < y + 14) & (y - 14 < y2)
        words_TK[covered, k] = tokenizer(word, add_special_tokens=False)["input_ids"][0]
    assert (words_TK >= 0).any(1).sum() >= 4
    unit = F.normalize(model.language_model.embed_tokens.weight.detach().float(), dim=-1)
    assert torch.allclose(ideal_tokens(words_TK, unit, grid), expected, atol=1e-5)


@pytest.mark.slow
def test_the_ideal_weight_pulls_the_tokens_toward_the_ideal_readers():
    from recipes.alignment import Alignment

    tokenizer = _tokenizer()
    embeddings = torch.randn(len(tokenizer), _vision().out_hidden_size, generator=torch.Generator().manual_seed(0))
    align = Alignment(tokenizer, embeddings)
    cfg = ReadingConfig(size=(112, 56), batch_size=8, scale=(1.0, 1.0), font_px=(22, 26), slots=1, n_test=16,
                        large_steps=0, glyph_share=0.0)
    _, off = train(_vision(), cfg, steps=120, every=1000, align=align)
    _, on = train(_vision(), dataclasses.replace(cfg, ideal_weight=4.0), steps=120, every=1000, align=align)
    assert on["ideal_cosine"] > off["ideal_cosine"] + 0.06, (on["ideal_cosine"], off["ideal_cosine"])  # 0.11 vs 0.01


def test_the_cli_budget_is_the_steps_asked_for_without_a_hidden_time_limit(tmp_path, monkeypatch, capsys):
    """`--steps N` alone trains N steps (a default 8-minute limit used to cut a 3,368-step run at
    436); no budget at all is 8 minutes; both: whichever ends first; a bad one is named."""
    from recipes import reading

    asked = []
    monkeypatch.setattr(reading, "train", lambda *a, steps, minutes, **k: asked.append((steps, minutes)) or (None, {}))
    monkeypatch.setattr(reading, "save_module", lambda *a: None)
    out = ["--out", str(tmp_path / "e.safetensors"), "--size", "tiny"]
    for flags, budget in ((["--steps", "3368"], (3368, None)), ([], (None, 8.0)),
                          (["--steps", "5", "--minutes", "2"], (5, 2.0)), (["--minutes", "30"], (None, 30.0))):
        assert reading.main(out + flags) == 0 and asked[-1] == budget
    for bad in (["--steps", "0"], ["--minutes", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            reading.main(out + bad)
        assert exit_.value.code == 2 and bad[1] in capsys.readouterr().err
