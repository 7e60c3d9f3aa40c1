"""Speculative decoding with the MTP layer: greedy output is plain greedy output token for token
(batch 1 and padded batches, drafts right or wrong), the MTP cache equals recomputing, and the
acceptance rule keeps the sampling distribution (checked statistically on a few tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlm import VLM
from vlm import speculative
from vlm.config import tiny
from vlm.decode import decode_plan, mtp_block
from vlm.cache import KVCache
from vlm.generation import GenerationOptions, TokenStream
from vlm.mtp import with_mtp_layers
from vlm.rotary import mrope_cos_sin
from vlm.sampling import Sampler, SamplingParams


@pytest.fixture(scope="module")
def vlm():
    handle = VLM.from_config(with_mtp_layers(tiny(), 1), seed=0)
    with torch.no_grad():  # larger than init's 0.02 so logits differ by more than rounding
        for p in handle.model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.3)
    handle.model.eval()
    return handle


def _prompts(B, T, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 290, (B, T), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, B):
        mask[b, : b % 4] = 0  # left padding of 0..3
    return ids, mask


@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_equals_plain_decoding(vlm, k):
    for B in (1, 3):
        ids, mask = _prompts(B, 7, seed=k)
        inputs = {"input_ids": ids, "attention_mask": mask}
        plain = vlm.generate_ids(inputs, max_new_tokens=24, draft_tokens=0)
        assert torch.equal(vlm.generate_ids(inputs, max_new_tokens=24, draft_tokens=k), plain)


def _oracle(monkeypatch, plain, T):
    """Drafts from the known greedy answer, every fourth one wrong: the verify and roll-back path
    runs with long accepted prefixes, which a random MTP layer never drafts."""
    real = speculative._draft

    def draft(run, sampler, k, *args):
        drafts, q = real(run, sampler, k, *args)
        at = run.cache.length - T + 1  # index, among new tokens, of the first drafted position
        for i in range(k):
            if at + i < plain.shape[1]:
                right = plain[:, at + i]
                drafts[:, i] = right if (at + i) % 4 != 3 else (right + 1) % 290
        return drafts, q

    monkeypatch.setattr(speculative, "_draft", draft)


@pytest.mark.parametrize(("k", "penalty"), [(2, 1.0), (4, 1.0), (4, 0.3)])
def test_greedy_with_mostly_right_drafts_equals_plain_decoding(vlm, monkeypatch, k, penalty):
    """Also under a repetition penalty (0.3 < 1 makes the model repeat, so it matters) where each
    verified position must count its draft prefix as seen."""
    ids, mask = _prompts(3, 6, seed=10 + k)
    inputs = {"input_ids": ids, "attention_mask": mask}
    plain = vlm.generate_ids(inputs, max_new_tokens=30, draft_tokens=0, repetition_penalty=penalty)
    _oracle(monkeypatch, plain, ids.shape[1])
    sampler = GenerationOptions(repetition_penalty=penalty).sampler(batch=3, vocab_size=320, device="cpu")
    stream = TokenStream(vlm.model, inputs, max_new_tokens=30, sampler=sampler, draft_tokens=k)
    out = torch.tensor(list(stream)).T
    assert torch.equal(out, plain)
    assert stream.draft_stats.acceptance_rate > 0.4 and stream.draft_stats.tokens_per_step > 1.5


def test_stop_token_inside_an_accepted_block_ends_the_row(vlm, monkeypatch):
    ids, mask = _prompts(2, 6, seed=3)
    inputs = {"input_ids": ids, "attention_mask": mask}
    plain = vlm.generate_ids(inputs, max_new_tokens=20, draft_tokens=0)
    stop = int(plain[0, 5])
    sampler = GenerationOptions().sampler(batch=2, vocab_size=320, device="cpu")
    reference = torch.tensor(list(TokenStream(vlm.model, dict(inputs), max_new_tokens=20, sampler=sampler,
                                              stop_token_ids=(stop,)))).T
    _oracle(monkeypatch, plain, ids.shape[1])
    sampler = GenerationOptions().sampler(batch=2, vocab_size=320, device="cpu")
    out = torch.tensor(list(TokenStream(vlm.model, dict(inputs), max_new_tokens=20, sampler=sampler,
                                        stop_token_ids=(stop,), draft_tokens=3))).T
    assert torch.equal(out, reference) and (out[0, 6:] == stop).all()


def test_mtp_cache_equals_recompute(vlm):
    """The MTP layer fed chunk by chunk over its KV cache gives the logits of one full forward."""
    model, text = vlm.model, vlm.config.text
    ids = _prompts(1, 12, seed=5)[0]
    at = torch.ones_like(ids, dtype=torch.bool)
    at[:, -1] = False
    with torch.no_grad():
        out = model(ids, mtp_logits_at=at)
        cos, sin = mrope_cos_sin(out.position_ids, rotary_dim=text.rotary_dim, theta=text.rope_theta,
                                 mrope_section=text.mrope_section, layout=text.rotary_layout)
        cos, sin = cos[:, None], sin[:, None]
        cache = KVCache(1, 1, 16, text.num_key_value_heads, text.head_dim, "cpu", torch.float32)
        pieces = []
        for start, end in ((0, 5), (5, 6), (6, 9), (9, 11)):
            n = end - start
            bias = torch.zeros(n, end).masked_fill_(torch.arange(end)[None] > torch.arange(start, end)[:, None], float("-inf"))
            logits, _ = mtp_block(model, ids[:, start + 1 : end + 1], out.hidden[:, start:end], cos[:, :, start:end],
                                  sin[:, :, start:end], bias[None, None], cache, decode_plan(model), logits_last=False)
            pieces.append(logits[0])
    torch.testing.assert_close(torch.cat(pieces), out.mtp_logits, rtol=1e-4, atol=1e-4)


def _chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df)."""
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def _goodness_of_fit(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of counts against probabilities; a count where p = 0 fails."""
    keep = probs > 0
    assert observed[~keep].sum() == 0, "a token the target gives probability 0 was produced"
    expected = probs[keep] * observed.sum()
    return _chi2_sf(float(((observed[keep] - expected) ** 2 / expected).sum()), int(keep.sum()) - 1)


def _homogeneity(table: torch.Tensor) -> float:
    """Chi-square p-value that the rows of a (2, V) count table come from one distribution."""
    table = table[:, table.sum(0) > 0].double()
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    return _chi2_sf(float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1)


def test_acceptance_rule_keeps_the_target_distribution():
    """Fixed target p and draft q over 6 tokens, 3 drafts, 60,000 rows at once: each committed token
    follows p at its position (chi-square p-value > 1e-3), whatever q proposes."""
    g = torch.Generator().manual_seed(0)
    B, K, V = 60_000, 3, 6
    p_logits = torch.randn(K + 1, V, generator=g) * 1.5
    p_logits[1, 4] = float("-inf")  # a token the target never draws, proposed by q all the same
    q_probs = torch.softmax(torch.randn(K, V, generator=g) * 1.5, -1)
    sampler = Sampler(SamplingParams(temperature=1.0), batch=B, vocab_size=V, device="cpu",
                      generator=torch.Generator().manual_seed(1))
    q_BKV = q_probs[None].expand(B, K, V).contiguous()
    drafts_BK = torch.multinomial(q_BKV.view(-1, V), 1, generator=sampler.generator).view(B, K)
    tokens_BT, n_B = speculative._accept(sampler, p_logits[None].expand(B, K + 1, V), drafts_BK, q_BKV)
    p = torch.softmax(p_logits, -1)
    for j in range(K + 1):
        rows = n_B >= j  # rows whose step reached position j
        observed = torch.bincount(tokens_BT[rows, j], minlength=V).double()
        assert rows.sum() > 2000
        assert _goodness_of_fit(observed, p[j].double()) > 1e-3, j
    assert 0.2 < n_B.float().mean() / K < 0.9  # both branches ran


@pytest.mark.slow
def test_sampled_generation_keeps_the_distribution(vlm):
    """A batch of 4,000 copies of one prompt, top-k 3: the third new token's frequencies with MTP
    drafts match plain sampling's (two-sample chi-square p-value > 1e-3)."""
    ids = _prompts(1, 6, seed=2)[0].expand(4000, 6).contiguous()
    counts = []
    for k, seed in ((0, 11), (2, 12)):
        out = vlm.generate_ids({"input_ids": ids}, max_new_tokens=3, temperature=1.0, top_k=3, seed=seed, draft_tokens=k)
        counts.append(torch.bincount(out[:, 2], minlength=320))
    table = torch.stack(counts)
    assert (table.sum(0) > 0).sum() > 3
    assert _homogeneity(table) > 1e-3


def test_draft_tokens_default_and_errors(vlm):
    assert GenerationOptions().draft_tokens_for(vlm.model) == 2  # on CPU, one greedy row: measured faster
    assert GenerationOptions().draft_tokens_for(vlm.model, batch=3) == 0  # several rows on CPU: not
    assert GenerationOptions(temperature=0.7, seed=1).draft_tokens_for(vlm.model) == 0  # the server's draws
    assert GenerationOptions(draft_tokens=2).draft_tokens_for(vlm.model) == 2
    assert GenerationOptions(draft_tokens=0).draft_tokens_for(vlm.model) == 0
    plain = VLM.from_config(tiny(), seed=0)
    assert GenerationOptions().draft_tokens_for(plain.model) == 0
    with pytest.raises(ValueError, match="draft_tokens=2: this model has no multi-token-prediction layer"):
        plain.generate_ids({"input_ids": torch.tensor([[1, 2]])}, max_new_tokens=2, draft_tokens=2)
    with pytest.raises(ValueError, match=r"draft_tokens=-1: expected None \(automatic\), 0 \(off\)"):
        GenerationOptions(draft_tokens=-1)


def test_shipped_model_drafts_by_default_and_answers_the_same(monkeypatch):
    """The default model ships a trained MTP layer and its draft vocabulary: VLM.generate drafts
    with them by default (one row), and when asked, with the same greedy answer."""
    from vlm.mtp import draft_vocab

    shipped = VLM.from_pretrained()
    assert len(shipped.model.language_model.mtp_layers) == 1 and 0 < len(draft_vocab(shipped.model)) < 8192
    prompt = "Find the \"Sign in\" button and output its bounding box."
    image = str(Path(__file__).resolve().parent.parent / "assets" / "examples" / "shapes.png")
    plain = shipped.generate(prompt, images=[image], max_new_tokens=40, draft_tokens=0)
    drafts, real = [], speculative._draft
    monkeypatch.setattr(speculative, "_draft", lambda *a: drafts.append(1) or real(*a))
    for options in ({}, {"draft_tokens": 3}):
        drafted = shipped.generate(prompt, images=[image], max_new_tokens=40, **options)
        assert drafted.text == plain.text and drafted.finish_reason == plain.finish_reason and drafts
        drafts.clear()


# ---- the draft vocabulary ------------------------------------------------------------------------


@pytest.fixture
def restricted(vlm):
    """The module's model drafting only from a vocabulary (lifted afterwards)."""
    from vlm.mtp import set_draft_vocab

    def restrict(ids):
        set_draft_vocab(vlm.model, ids)
        return vlm

    yield restrict
    set_draft_vocab(vlm.model, None)


@pytest.mark.parametrize("B", [1, 3])
def test_a_draft_vocabulary_drafts_only_its_tokens_and_changes_no_answer(vlm, restricted, monkeypatch, B):
    ids, mask = _prompts(B, 7, seed=4)
    inputs = {"input_ids": ids, "attention_mask": mask}
    plain = vlm.generate_ids(inputs, max_new_tokens=20, draft_tokens=0)
    full = _drafted_tokens(vlm, inputs, monkeypatch)
    # the answers' own tokens and a few others: drafts land; none of them: every draft is rejected
    for vocab in (sorted(set(plain.flatten().tolist()) | {7, 8, 9}), [5, 6, 7]):
        drafted = _drafted_tokens(restricted(vocab), inputs, monkeypatch)
        assert set(drafted["tokens"]) <= set(vocab)
        assert torch.equal(drafted["out"], plain)
    assert not set(full["tokens"]) <= {5, 6, 7}  # unrestricted, the same layer drafts elsewhere


def _drafted_tokens(vlm, inputs, monkeypatch):
    seen = []
    real = speculative._draft

    def draft(*args):
        drafts, q = real(*args)
        seen.extend(drafts.flatten().tolist())
        return drafts, q

    monkeypatch.setattr(speculative, "_draft", draft)
    out = vlm.generate_ids(inputs, max_new_tokens=20, draft_tokens=2)
    monkeypatch.setattr(speculative, "_draft", real)
    return {"tokens": seen, "out": out}


@pytest.mark.slow
def test_sampling_with_a_draft_vocabulary_keeps_the_distribution(vlm, restricted):
    """q is zero outside the vocabulary: the residual draw supplies those tokens, so the third new
    token's frequencies still match plain sampling's (two-sample chi-square p-value > 1e-3)."""
    ids = _prompts(1, 6, seed=2)[0].expand(4000, 6).contiguous()
    plain = vlm.generate_ids({"input_ids": ids}, max_new_tokens=3, temperature=1.0, top_k=3, seed=11, draft_tokens=0)
    vocab = sorted(set(plain[:, 2].tolist()))[::2]  # about half of the tokens plain sampling draws there
    drafted = restricted(vocab).generate_ids({"input_ids": ids}, max_new_tokens=3, temperature=1.0, top_k=3, seed=12,
                                             draft_tokens=2)
    table = torch.stack([torch.bincount(x[:, 2], minlength=320) for x in (plain, drafted)])
    assert (table.sum(0) > 0).sum() > 3 and len(vocab) < (table.sum(0) > 0).sum()
    assert _homogeneity(table) > 1e-3


def test_the_draft_vocabulary_is_saved_and_loaded_beside_the_weights(vlm, restricted, tmp_path):
    from vlm.mtp import DRAFT_VOCAB_FILE, draft_vocab, set_draft_vocab

    restricted([9, 3, 200]).save_pretrained(tmp_path / "m")
    assert draft_vocab(VLM.from_pretrained(tmp_path / "m").model) == [3, 9, 200]
    assert draft_vocab(VLM.from_pretrained(tmp_path / "m", mtp=False).model) is None  # no layer, no vocabulary
    set_draft_vocab(vlm.model, None)
    vlm.save_pretrained(tmp_path / "m")  # none now: the stale file goes
    assert not (tmp_path / "m" / DRAFT_VOCAB_FILE).exists() and draft_vocab(VLM.from_pretrained(tmp_path / "m").model) is None


def test_bad_draft_vocabularies_are_named(vlm, restricted, tmp_path):
    from vlm.mtp import DRAFT_VOCAB_FILE, set_draft_vocab

    for bad, match in (([1, 1], "with repeats"), ([0, 320], r"\[320\] out of range"), ([], "got 0 ids")):
        with pytest.raises(ValueError, match=r"expected distinct token ids in \[0, 320\).*" + match):
            set_draft_vocab(vlm.model, bad)
    with pytest.raises(ValueError, match="no multi-token-prediction layer"):
        set_draft_vocab(VLM.from_config(tiny(), seed=0).model, [1])
    restricted([1, 2]).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / DRAFT_VOCAB_FILE).write_text('{"token_ids": [1, 999]}')
    with pytest.raises(ValueError, match=r"draft_vocab.json: draft vocabulary: expected distinct token ids .* \[999\] out of range"):
        VLM.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / DRAFT_VOCAB_FILE).write_text('[1, 2]')
    with pytest.raises(ValueError, match="expected a JSON object with a 'token_ids' list"):
        VLM.from_pretrained(tmp_path / "m")
