"""Training the MTP layer: its targets, the joint loss (balance counts its routing, its gradient
reaches the network), and the MTP-only mode on a frozen model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _train_utils import metrics, write_dataset
from train.collate import IGNORE
from train.config import TrainConfig
from train.mtp import MTP_PREFIX, mtp_targets
from train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, data, **overrides):
    base = dict(mode="sft", model="tiny", data=str(data), output=str(tmp_path / "out"), max_steps=1, lr=3e-3,
                batch_size=4, grad_accum=1, max_length=256, progress=False, seed=0)
    return TrainConfig(**{**base, **overrides})


def test_targets_are_token_t_plus_2_inside_one_sample():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 0]])
    targets = torch.tensor([[IGNORE, IGNORE, 8, 9, IGNORE, 11, IGNORE, IGNORE]])  # targets[t] = ids[t+1] or IGNORE
    segments = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 0]])
    at, wanted = mtp_targets(targets, segments)
    # t=1 -> 8 (= targets[2]); t=2 -> 9; t=3 would read targets[4] of sample 2: not scored; t=4 -> 11
    assert at[0].nonzero().flatten().tolist() == [1, 2, 4]
    assert wanted.tolist() == [8, 9, 11]
    assert all(wanted[i] == ids[0, t + 2] for i, t in enumerate([1, 2, 4]))


def test_teacher_distribution_is_the_main_models_at_t_plus_1():
    from train.mtp import teacher_probs

    targets = torch.tensor([[IGNORE, 7, 8, 9, IGNORE], [IGNORE, IGNORE, 4, 5, 6]])
    segments = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    scored = targets != IGNORE
    logits = torch.randn(int(scored.sum()), 11)
    at, _ = mtp_targets(targets, segments)
    probs = teacher_probs(logits, scored, at)
    # MTP positions (0,0),(0,1),(0,2),(1,1),(1,2) read the main logits at (0,1),(0,2),(0,3),(1,2),(1,3)
    rows = {tuple(pos): i for i, pos in enumerate(scored.nonzero().tolist())}
    expected = [rows[(b, t + 1)] for b, t in at.nonzero().tolist()]
    torch.testing.assert_close(probs, logits[expected].softmax(-1))


def _with_mtp(tmp_path, data):
    """A tiny checkpoint that has an MTP layer (one MTP-only step adds and saves it)."""
    cfg = _config(tmp_path / "seed", data, mtp_only=True, max_steps=1)
    Trainer(cfg).train()
    return cfg.output


def test_joint_loss_trains_the_network_too_and_balance_counts_the_mtp_block(tmp_path):
    data = write_dataset(tmp_path, 4)
    model_dir = _with_mtp(tmp_path, data)

    def step(weight):
        trainer = Trainer(_config(tmp_path / str(weight), data, model=model_dir, mtp_loss_weight=weight))
        assert any(layer.name.startswith(MTP_PREFIX) for layer in trainer.moe_layers)
        _, tokens, loads, mtp_loss = trainer._step(trainer._next_batches())
        model = trainer.accelerator.unwrap_model(trainer.model)
        return model, tokens, loads, mtp_loss, trainer

    model0, _, _, loss0, _ = step(0.0)
    model1, tokens, loads, loss1, trainer = step(0.5)
    assert loss0 == 0.0 and loss1 > 0.0
    assert model0.language_model.mtp_layers[0].eh_proj.weight.grad is None
    assert model1.language_model.mtp_layers[0].eh_proj.weight.grad.abs().sum() > 0
    main = lambda m: m.language_model.layers[1].self_attn.q_proj.weight.grad  # noqa: E731
    assert (main(model1) - main(model0)).abs().max() > 1e-7  # the MTP loss reaches the network
    k = trainer.vlm.config.text.num_experts_per_tok
    assert loads.sum(1).tolist() == [tokens * k] * len(trainer.moe_layers)  # MTP block included, padding not


@pytest.mark.slow
def test_mtp_only_trains_the_layer_and_nothing_else(tmp_path):
    data = write_dataset(tmp_path, 8)
    cfg = _config(tmp_path, data, mtp_only=True, max_steps=8, lr=1e-2)
    trainer = Trainer(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]
              if not n.endswith("tokens_per_expert")}
    trainer.train()
    after = dict([*model.named_parameters(), *model.named_buffers()])
    for name, value in before.items():
        if not name.startswith(MTP_PREFIX):
            assert torch.equal(after[name], value), name  # the frozen network, routing biases included
    assert not torch.equal(after[MTP_PREFIX + "0.eh_proj.weight"], before[MTP_PREFIX + "0.eh_proj.weight"])
    bias = MTP_PREFIX + "0.mtp_block.mlp.gate.e_score_correction_bias"
    assert not torch.equal(after[bias], before[bias])  # its balance updates run
    rows = [r for r in metrics(Path(cfg.output)) if "mtp_loss" in r]
    assert len(rows) == 8 and rows[-1]["mtp_loss"] < rows[0]["mtp_loss"]

    from vlm import VLM

    saved = VLM.from_pretrained(cfg.output)
    assert saved.config.text.num_nextn_predict_layers == 1 and len(saved.model.language_model.mtp_layers) == 1


def test_mtp_only_refuses_what_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="mtp_only trains the MTP layer .* mtp_loss_weight=0.0"):
        _config(tmp_path, "x.jsonl", mtp_only=True, mtp_loss_weight=0.0)
    with pytest.raises(ValueError, match="mtp_loss_weight=-1.0: expected a number >= 0"):
        _config(tmp_path, "x.jsonl", mtp_loss_weight=-1.0)


# ---- self-distillation on the model's own answers -----------------------------------------------


def _tiny_with_prompts(n=6, length=12, seed=0):
    from vlm import VLM
    from vlm.config import tiny

    model = VLM.from_config(tiny(), seed=seed).model.eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # a peaked next-token distribution, as a trained model's
    generator = torch.Generator().manual_seed(seed)
    prompts = [{"input_ids": torch.randint(20, 290, (1, length), generator=generator)}  # below the media ids
               for _ in range(n)]
    return model, prompts


def test_own_answers_are_the_greedy_answers_and_the_teacher_agrees_with_them():
    from train.mtp import own_answers
    from vlm.generation import GenerationOptions, generate_ids

    model, prompts = _tiny_with_prompts()
    answers = own_answers(model, prompts, max_new_tokens=10, stop_token_ids=())
    assert len(answers) == len(prompts)
    for a, p in zip(answers, prompts):
        P = a.prompt_length
        greedy = generate_ids(model, dict(p), GenerationOptions(max_new_tokens=10, draft_tokens=0))[0]
        assert torch.equal(a.input_ids[0, :P], p["input_ids"][0]) and torch.equal(a.input_ids[0, P:], greedy)
        # teacher row j is the main model's distribution for token P+1+j: greedy picked its argmax
        assert a.teacher.shape == (a.input_ids.shape[1] - 1 - P, model.cfg.text.vocab_size)
        assert torch.equal(a.teacher.float().argmax(-1), a.input_ids[0, P + 1 :])
        assert torch.allclose(a.teacher.float().sum(-1), torch.ones(len(a.teacher)), atol=1e-2)
        # the scored MTP positions t (h_t, token t+1 -> token t+2) are one per teacher row
        assert a.scored.sum() == len(a.teacher) and a.scored[0, P - 1] and not a.scored[0, -2:].any()
        assert torch.equal(a.hidden, model(a.input_ids).hidden)


def test_distilling_on_own_answers_raises_acceptance_and_moves_only_the_mtp_layer():
    from recipes.mtp_layer import decode_pass
    from train.mtp import distill_mtp, own_answers
    from vlm.mtp import add_mtp_layer

    base, prompts = _tiny_with_prompts(n=8)
    answers = own_answers(base, prompts, max_new_tokens=16, stop_token_ids=())
    model = add_mtp_layer(base).eval()
    before = decode_pass(model, prompts, 1, new=16, stop_ids=())
    network = {k: v.clone() for k, v in model.state_dict().items() if ".mtp_layers." not in k}
    losses = distill_mtp(model, answers, steps=60, lr=3e-3, batch_size=4, log_every=0)
    after = decode_pass(model, prompts, 1, new=16, stop_ids=())
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    assert after.acceptance_rate >= before.acceptance_rate + 0.3, (before.acceptance_rate, after.acceptance_rate)
    assert after.outputs == before.outputs  # drafts never change greedy output
    assert all(torch.equal(v, network[k]) for k, v in model.state_dict().items() if k in network)
    assert not model.training and all(p.requires_grad for p in model.parameters())  # as they were


def test_distilling_refuses_nothing_to_learn_and_a_model_without_the_layer():
    from train.mtp import distill_mtp, own_answers

    model, prompts = _tiny_with_prompts(n=1)
    with pytest.raises(ValueError, match="no multi-token-prediction layer"):
        distill_mtp(model, own_answers(model, prompts, max_new_tokens=4, stop_token_ids=()), steps=1)
    with pytest.raises(ValueError, match="no answers to learn from"):
        distill_mtp(model, [], steps=1)


def test_the_chained_loss_trains_the_later_drafts():
    """With the second chained draft's loss the layer drafts three tokens better (tokens committed
    per verifying forward), its answers unchanged."""
    from recipes.mtp_layer import decode_pass
    from train.mtp import distill_mtp, own_answers
    from vlm.mtp import add_mtp_layer

    base, prompts = _tiny_with_prompts(n=8)
    answers = own_answers(base, prompts, max_new_tokens=16, stop_token_ids=())
    measured = {}
    for chain in (0.0, 1.0):
        model = add_mtp_layer(base).eval()
        distill_mtp(model, answers, steps=60, lr=3e-3, batch_size=4, chain_weight=chain, log_every=0)
        measured[chain] = decode_pass(model, prompts, 3, new=16, stop_ids=())
    assert measured[1.0].tokens_per_step > measured[0.0].tokens_per_step + 0.1
    assert measured[1.0].outputs == measured[0.0].outputs
