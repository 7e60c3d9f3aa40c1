"""MoE dispatch, forward + backward CPU time: grouped_mm (vlm/moe.py) vs indexing experts `w[e]`.

Indexing one expert out of the stacked weight in a loop makes autograd build a full-size
(E, ...) gradient for every expert hit, so its backward grows with E^2. Run:
    .venv/bin/python benchmarks/moe_dispatch.py [--experts 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from vlm.config import tiny
from vlm.moe import MoE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = dataclasses.replace(
        tiny().text, hidden_size=512, moe_intermediate_size=256, n_routed_experts=args.experts, num_experts_per_tok=4,
        n_group=1, topk_group=1,
    )
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.02)
    x = torch.randn(args.tokens, cfg.hidden_size)

    def indexed_loop(x_TD, topk_ids_TK, topk_weights_TK):
        out_TD = torch.zeros_like(x_TD)
        for e in range(cfg.n_routed_experts):
            token, slot = torch.where(topk_ids_TK == e)
            if token.numel():
                gate, up = (x_TD[token] @ moe.experts.gate_up_proj[e].T).chunk(2, -1)
                y = (F.silu(gate) * up) @ moe.experts.down_proj[e].T
                out_TD = out_TD.index_add(0, token, y * topk_weights_TK[token, slot, None])
        return out_TD

    for name, experts in (("grouped_mm", moe.experts), ("w[e] loop", indexed_loop)):
        best = float("inf")
        for _ in range(3):
            moe.zero_grad()
            xx = x.clone().requires_grad_()
            start = time.process_time()
            _, ids, weights = moe.gate(xx)
            experts(xx, ids, weights).square().mean().backward()
            best = min(best, time.process_time() - start)
        print(f"{name:<11} E={args.experts} T={args.tokens}: forward+backward {best:.3f} s CPU")


if __name__ == "__main__":
    main()
