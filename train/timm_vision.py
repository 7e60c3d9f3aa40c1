"""New GLM-V-style models whose vision encoder starts from a timm ViT (e.g. `aimv2_*`).

GLM-4.5V's encoder was initialised from AIMv2-Huge; the two share almost everything: Conv patch
embed with bias followed by an RMSNorm, a learned square position table added after it, pre-norm
blocks (RMSNorm, fused bias-free qkv, bias-free proj, SwiGLU MLP), a final RMSNorm. What GLM-V
adds on top, and what therefore starts untrained: 2D rotary inside attention, the 2x2
downsample and the projector. The mapping:

    timm                               ours (visual.*)
    patch_embed.proj (Conv2d P x P)    patch_embed.proj (Conv3d T x P x P): each of the T temporal
                                       slices gets weight / T, so an image (duplicated into T
                                       frames) gives exactly timm's embedding
    patch_embed.norm                   post_conv_layernorm
    pos_embed (1, S*S, D)              embeddings.position_embedding (S*S, D); the table is
                                       resampled to each image's grid, identity at S x S
    blocks.i.norm1/norm2               blocks.i.norm1/norm2
    blocks.i.attn.qkv/proj             blocks.i.attn.qkv/proj
    blocks.i.mlp.fc1_g/fc1_x/fc2       blocks.i.mlp.gate_proj/up_proj/down_proj
    (SwiGLUPacked fc1 = [gate; up])
    norm                               post_layernorm

GLM-V ties the ViT's MLP width to the language model's width (`out_hidden_size`), so the text
model must be as wide as the timm MLP (AIMv2-H: 4096, as GLM-4.5V). Weights cannot be
downloaded here; `--pretrained` lets timm fetch them where the network allows.

    python -m train.timm_vision --timm aimv2_huge_patch14_336 --pretrained --config glm45v --output DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from vlm import VLM, VLMConfig
from vlm.config import VisionConfig

log = logging.getLogger(__name__)


def vision_config_from_timm(timm_model: nn.Module, *, base: VisionConfig | None = None) -> VisionConfig:
    """Our VisionConfig for a timm ViT; fields timm does not have come from `base`."""
    _check_compatible(timm_model)
    base = base or VisionConfig()
    proj = timm_model.patch_embed.proj
    side = int(round(timm_model.pos_embed.shape[1] ** 0.5))
    block = timm_model.blocks[0]
    return dataclasses.replace(
        base, depth=len(timm_model.blocks), hidden_size=timm_model.embed_dim, num_heads=block.attn.num_heads,
        out_hidden_size=_mlp_width(block.mlp), image_size=side * proj.kernel_size[0], patch_size=proj.kernel_size[0],
        in_channels=proj.in_channels, rms_norm_eps=block.norm1.eps,
    )


@torch.no_grad()
def load_timm_weights(encoder: nn.Module, timm_model: nn.Module) -> None:
    """Copy a timm ViT's weights into our vision encoder (shapes must match its config)."""
    _check_compatible(timm_model)
    T = encoder.patch_embed.proj.weight.shape[2]
    w2d = timm_model.patch_embed.proj.weight  # (D, C, P, P)
    pairs = [
        (encoder.patch_embed.proj.weight, (w2d / T)[:, :, None].expand(-1, -1, T, -1, -1)),
        (encoder.patch_embed.proj.bias, timm_model.patch_embed.proj.bias),
        (encoder.post_conv_layernorm.weight, timm_model.patch_embed.norm.weight),
        (encoder.embeddings.position_embedding.weight, timm_model.pos_embed[0]),
        (encoder.post_layernorm.weight, timm_model.norm.weight),
    ]
    for ours, theirs in zip(encoder.blocks, timm_model.blocks):
        gate, up, down = _swiglu_weights(theirs.mlp)
        pairs += [(ours.norm1.weight, theirs.norm1.weight), (ours.norm2.weight, theirs.norm2.weight),
                  (ours.attn.qkv.weight, theirs.attn.qkv.weight), (ours.attn.proj.weight, theirs.attn.proj.weight),
                  (ours.mlp.gate_proj.weight, gate), (ours.mlp.up_proj.weight, up), (ours.mlp.down_proj.weight, down)]
    for target, source in pairs:
        if target.shape != source.shape:
            raise ValueError(f"timm tensor of shape {tuple(source.shape)} does not fit ours {tuple(target.shape)}: "
                             "build the encoder from vision_config_from_timm(model)")
        target.copy_(source)


def build_from_timm(timm_model: nn.Module, config: VLMConfig, *, seed: int = 0) -> VLM:
    """A VLM shaped like `config` whose vision encoder is the timm ViT; the downsample,
    projector and language model are randomly initialised."""
    vision = vision_config_from_timm(timm_model, base=config.vision)
    if vision.out_hidden_size != config.text.hidden_size:
        raise ValueError(f"the timm model's MLP width {vision.out_hidden_size} must equal the language model's "
                         f"hidden size {config.text.hidden_size} (GLM-V ties them); pick a text config that wide")
    vlm = VLM.from_config(dataclasses.replace(config, vision=vision), seed=seed)
    load_timm_weights(vlm.model.visual, timm_model)
    return vlm


def _check_compatible(m: nn.Module) -> None:
    """Name the first structural difference that would make the mapping wrong."""
    problems = []
    if getattr(m, "num_prefix_tokens", 1) != 0:
        problems.append(f"{getattr(m, 'num_prefix_tokens', '?')} class/register tokens (expected none)")
    if not isinstance(getattr(m.patch_embed, "norm", None), nn.Module) or not hasattr(m.patch_embed.norm, "weight"):
        problems.append("no norm after the patch embedding")
    if getattr(m, "pos_embed", None) is None:
        problems.append("no learned position table")
    block = m.blocks[0]
    if block.attn.qkv.bias is not None or block.attn.proj.bias is not None:
        problems.append("attention biases (GLM-V has none)")
    if not isinstance(block.ls1, nn.Identity) or not isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity):
        problems.append("layer scale or QK norm")
    if type(block.norm1).__name__.lower() not in ("rmsnorm", "rmsnormfp32"):
        problems.append(f"{type(block.norm1).__name__} norms (expected RMSNorm)")
    if not (hasattr(block.mlp, "fc1_g") or getattr(block.mlp, "gate_last", None) is False):
        problems.append(f"{type(block.mlp).__name__} MLP (expected SwiGLU)")
    if problems:
        raise ValueError(f"timm model {type(m).__name__} is not a GLM-V-compatible ViT: " + "; ".join(problems))


def _mlp_width(mlp: nn.Module) -> int:
    return mlp.fc1_g.out_features if hasattr(mlp, "fc1_g") else mlp.fc1.out_features // 2


def _swiglu_weights(mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if hasattr(mlp, "fc1_g"):
        return mlp.fc1_g.weight, mlp.fc1_x.weight, mlp.fc2.weight
    gate, up = mlp.fc1.weight.chunk(2)  # SwiGLUPacked: act(first half) * second half
    return gate, up, mlp.fc2.weight


def main(argv: list[str] | None = None) -> None:
    import timm

    import vlm.config as presets

    parser = argparse.ArgumentParser(prog="python -m train.timm_vision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timm", required=True, help="timm model name, e.g. aimv2_huge_patch14_336")
    parser.add_argument("--pretrained", action="store_true", help="let timm download its pretrained weights")
    parser.add_argument("--config", default="glm45v", help="config.json directory or vlm.config preset for "
                        "everything but the vision encoder (text width must equal the timm MLP width)")
    parser.add_argument("--output", required=True, help="where to write the new checkpoint (released layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the randomly initialised parts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = VLMConfig.load(args.config) if Path(args.config).is_dir() else getattr(presets, args.config)()
    timm_model = timm.create_model(args.timm, pretrained=args.pretrained).eval()
    build_from_timm(timm_model, config, seed=args.seed).save_pretrained(args.output)
    log.info("wrote %s (vision from timm %s%s)", args.output, args.timm, ", pretrained" if args.pretrained else "")


if __name__ == "__main__":
    main()
