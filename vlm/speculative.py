"""Speculative decoding with the multi-token-prediction layer (mtp.py): draft k tokens, verify them
in one forward of the main model, keep the longest agreeing prefix plus one token of its own.

One step, for committed tokens x_0..x_L of which x_0..x_{L-1} are in the main KV cache:
1. The MTP layer catches up on the positions the main model verified last step (their final
   hidden states h_j with the tokens x_{j+1}, in one forward over its own cache); its output at
   position L-1 drafts d_1 for x_{L+1}. Chained steps (`draft_tokens` > 1) feed the MTP its own
   hidden state and draft d_{i+1} from d_i, as vLLM does; the MTP cache is then rolled back.
2. The main model runs [x_L, d_1..d_k] at positions L..L+k in one forward (decode.decode_block).
3. Acceptance. Greedy: d_i is kept while it equals the main model's argmax, and the first
   disagreement is replaced by that argmax (or, all kept, a bonus token is added): exactly the
   tokens plain greedy decoding gives. Sampling: d_i ~ q_i is kept with probability
   min(1, p_i(d_i) / q_i(d_i)); the first rejected one is replaced by a draw from
   norm(max(p_i - q_i, 0)); all kept, a bonus draw from p_{k+1}. Each committed token is then
   distributed as plain sampling would draw it (Leviathan et al. 2023, Chen et al. 2023). p and q
   are both warped by the same repetition penalty (the draft prefix counted as seen), temperature,
   top-k and top-p.
4. Rows accept different counts; the batch keeps the smallest count m over rows still running
   (the other rows' extra tokens are correct, and are simply drafted again), so every row's KV
   cache rolls back to the same length L + m and positions stay one per cache slot.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .cache import KVCache
from .decode import decode_block, mtp_block
from .generation import DraftStats, Prefilled
from .rotary import mrope_cos_sin
from .sampling import Sampler


class SpeculativeDecoder:
    """Speculative decoding of a prefilled run: `iter(...)` yields, per step, the new token of every
    row (a list of B ints), `k` drafts per verifying forward.

    Construction is the MTP layer's own prefill: it catches up on the prompt (h_j with x_{j+1},
    the first new token last) and keeps its first draft's logits, so that work is counted with the
    main model's prefill (TokenStream's `prefill_s`), as vLLM runs a drafter's prefill with the
    target's."""

    def __init__(self, run: Prefilled, sampler: Sampler, k: int, stats: DraftStats) -> None:
        self.run, self.sampler, self.k, self.stats = run, sampler, k, stats
        model, cache = run.model, run.cache
        text = model.cfg.text
        input_ids = run.inputs["input_ids"]
        B = input_ids.shape[0]
        self.device = input_ids.device
        self.mtp_cache = KVCache(1, B, cache.max_len, text.num_key_value_heads, text.head_dim, self.device, cache.k.dtype)
        self.first_ids = run.commit(run.first_ids)
        self.last_B = torch.tensor(self.first_ids, device=self.device)
        sampler.observe(self.last_B[:, None])
        cos, sin = mrope_cos_sin(run.out.position_ids, rotary_dim=text.rotary_dim, theta=text.rope_theta,
                                 mrope_section=text.mrope_section, layout=text.rotary_layout)
        tokens_BP = torch.cat([input_ids[:, 1:], self.last_B[:, None]], dim=1)
        self.caught_up = _catch_up(run, tokens_BP, run.out.hidden, (cos[:, None].to(cache.k.dtype), sin[:, None].to(cache.k.dtype)),
                                   self.mtp_cache)

    def __iter__(self) -> Iterator[list[int]]:
        run, sampler, k, stats, cache = self.run, self.sampler, self.k, self.stats, self.run.cache
        yield self.first_ids
        last_B = self.last_B
        while True:
            L = cache.length
            drafts_BK, q_BKV = _draft(run, sampler, k, *self.caught_up, self.mtp_cache)
            self.mtp_cache.length = L  # the chained drafts' keys are recomputed from the main model's hidden states
            block_BT = torch.cat([last_B[:, None], drafts_BK], dim=1)
            logits_BTV, hidden_BTD = decode_block(run.model, block_BT, *_rotary(run, L, L + k + 1),
                                                  _bias(run, L, k + 1), cache, run.plan)
            committed_BM, accepted_B = _accept(sampler, logits_BTV, drafts_BK, q_BKV)
            accepted = [n for n, done in zip(accepted_B.tolist(), run.finished) if not done]
            m = min(accepted) + 1
            stats.drafted += k * len(accepted)
            stats.accepted += sum(accepted)
            stats.verify_steps += 1
            stats.committed += m
            cache.length = L + m  # roll back the rejected drafts' keys and values
            committed_BM = committed_BM[:, :m]
            for column in committed_BM.T.tolist():
                ids = run.commit(column)
                yield ids
                sampler.observe(torch.tensor(ids, device=self.device)[:, None])
            last_B = committed_BM[:, -1]
            # The MTP layer catches up on the m positions just verified: (h_j, x_{j+1}).
            at = self.mtp_cache.length
            self.caught_up = _catch_up(run, committed_BM, hidden_BTD[:, :m], _rotary(run, at, at + m), self.mtp_cache)


def _catch_up(run: Prefilled, tokens_BP, hidden_BPD, rotary, mtp_cache: KVCache):
    """The MTP layer over P new positions (main hidden state h_j with token x_{j+1}) into its cache:
    (logits (B, V) drafting the token after the last, its hidden state g (B, P, D))."""
    return mtp_block(run.model, tokens_BP, hidden_BPD, *rotary, _bias(run, mtp_cache.length, tokens_BP.shape[1]),
                     mtp_cache, run.plan)


def _draft(run: Prefilled, sampler: Sampler, k: int, logits_BV, g_BPD, mtp_cache: KVCache):
    """k drafts (B, k), the first from the caught-up logits, and, when sampling, their
    distributions q (B, k, V) (None when greedy)."""
    drafts, qs = [], []
    for i in range(k):
        seen = _seen_with(sampler, drafts)
        warped_BV = sampler.warp(logits_BV, seen_BV=seen)
        if sampler.params.greedy:
            d_B = warped_BV.argmax(-1)
        else:
            q_BV = warped_BV.softmax(-1)
            d_B = torch.multinomial(q_BV, 1, generator=sampler.generator)[:, 0]
            qs.append(q_BV)
        drafts.append(d_B)
        if i < k - 1:
            at = mtp_cache.length
            logits_BV, g_BPD = mtp_block(run.model, d_B[:, None], g_BPD[:, -1:], *_rotary(run, at, at + 1),
                                         _bias(run, at, 1), mtp_cache, run.plan)
    return torch.stack(drafts, dim=1), (torch.stack(qs, dim=1) if qs else None)


def _accept(sampler: Sampler, logits_BTV: torch.Tensor, drafts_BK: torch.Tensor, q_BKV: torch.Tensor | None):
    """(tokens (B, k+1): row b's first n_b + 1 are its committed ones; n (B,) drafts accepted)."""
    B, K = drafts_BK.shape
    drafts = [drafts_BK[:, i] for i in range(K)]
    warped_BTV = torch.stack([sampler.warp(logits_BTV[:, j], seen_BV=_seen_with(sampler, drafts[:j]))
                              for j in range(K + 1)], dim=1)
    if sampler.params.greedy:
        target_BT = warped_BTV.argmax(-1)
        agree_BK = drafts_BK == target_BT[:, :K]
    else:
        p_BTV = warped_BTV.softmax(-1)
        p_d_BK = p_BTV[:, :K].gather(-1, drafts_BK[..., None])[..., 0]
        q_d_BK = q_BKV.gather(-1, drafts_BK[..., None])[..., 0]
        u_BK = torch.rand(B, K, device=drafts_BK.device, generator=sampler.generator)
        agree_BK = u_BK * q_d_BK <= p_d_BK  # accept with probability min(1, p/q)
    n_B = agree_BK.long().cumprod(-1).sum(-1)
    if sampler.params.greedy:
        own_B = target_BT.gather(1, n_B[:, None])[:, 0]
    else:
        own_B = _resample(sampler, p_BTV, q_BKV, n_B)
    j_BT = torch.arange(K + 1, device=drafts_BK.device)[None]
    padded_BT = torch.cat([drafts_BK, drafts_BK[:, :1]], dim=1)
    tokens_BT = torch.where(j_BT < n_B[:, None], padded_BT, own_B[:, None])
    return tokens_BT, n_B


def _resample(sampler: Sampler, p_BTV, q_BKV, n_B) -> torch.Tensor:
    """Row b's own token at position n_b: from norm(max(p - q, 0)) after a rejection, else from p."""
    B, K = q_BKV.shape[:2]
    rows = torch.arange(B, device=n_B.device)
    p_BV = p_BTV[rows, n_B]
    q_BV = torch.cat([q_BKV, torch.zeros_like(q_BKV[:, :1])], dim=1)[rows, n_B]  # q = 0 after all K accepted
    residual_BV = (p_BV - q_BV).clamp_min(0)
    mass_B1 = residual_BV.sum(-1, keepdim=True)
    # A rejection means p(d) < q(d), so the residual has mass; guard rounding all the same.
    dist_BV = torch.where(mass_B1 > 0, residual_BV / mass_B1.clamp_min(1e-30), p_BV)
    return torch.multinomial(dist_BV, 1, generator=sampler.generator)[:, 0]


def _seen_with(sampler: Sampler, drafts: list[torch.Tensor]) -> torch.Tensor | None:
    """The repetition penalty's seen-token mask as if `drafts` had been observed (None: no penalty)."""
    if sampler.seen_BV is None or not drafts:
        return None
    return sampler.seen_BV.clone().scatter_(1, torch.stack(drafts, dim=1), True)


def _rotary(run: Prefilled, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (B, 1, end-start, R) for cache positions [start, end), all past the prompt."""
    T = run.mask_BT.shape[1]
    return run.cos_B1NR[:, :, start - T : end - T], run.sin_B1NR[:, :, start - T : end - T]


def _bias(run: Prefilled, start: int, n: int) -> torch.Tensor | None:
    """Additive mask (B, 1, n, start+n) for n new positions at `start`: padding hidden, causal
    inside the block; None for one unpadded position."""
    S = start + n
    if n == 1 and run.bias_B11S is None:
        return None
    device, dtype = run.cos_B1NR.device, run.cos_B1NR.dtype
    causal_nS = torch.zeros(n, S, dtype=dtype, device=device).masked_fill_(
        torch.arange(S, device=device)[None] > torch.arange(start, S, device=device)[:, None], float("-inf"))
    pad_B11S = run.bias_B11S[..., :S] if run.bias_B11S is not None else torch.zeros(1, 1, 1, S, dtype=dtype, device=device)
    return pad_B11S + causal_nS
