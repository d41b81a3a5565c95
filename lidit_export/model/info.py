"""Parameter counts and FLOPs per denoising step, computed on the meta device (nothing is allocated)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import PipelineConfig
from .dit import LiDiT
from .refiner import PromptRefiner
from .vae import build_autoencoder


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _llm_params(folder: Path | None, enc, hf_config=None) -> tuple[int, int]:
    """(all parameters, parameters of the blocks the encoder runs) of one LLM."""
    from transformers import AutoConfig, AutoModel

    from .llm_encoder import truncate_config_

    cfg = hf_config or AutoConfig.from_pretrained(folder / enc.path)
    with torch.device("meta"):
        full = _count(AutoModel.from_config(cfg))
        truncate_config_(cfg, enc.blocks_needed)
        used = _count(AutoModel.from_config(cfg))
    return full, used


def describe(config: PipelineConfig, folder: Path | None = None, height: int | None = None,
             width: int | None = None, text_tokens: int = 128, hf_configs: list | None = None) -> dict:
    """A JSON-able summary: components, parameters, GFLOPs of one denoising step (refiner + DiT, batch 1)."""
    height = config.default_height if height is None else height
    width = config.default_width if width is None else width
    with torch.device("meta"):
        refiner, dit, vae = PromptRefiner(config.refiner), LiDiT(config.transformer), build_autoencoder(config.vae)
    llms = []
    for i, enc in enumerate(config.encoders):
        full, used = _llm_params(folder, enc, hf_configs[i] if hf_configs else None)
        llms.append({"path": enc.path, "hidden_size": enc.hidden_size, "blocks": enc.num_hidden_layers,
                     "blocks_run": enc.blocks_needed, "params": full, "params_run": used,
                     "prefix_tokens": config.refiner.prefix_lengths[i]})
    f = config.vae.scale_factor
    lat = torch.empty(1, config.vae.latent_channels, height // f, width // f, device="meta")
    t = torch.empty(1, device="meta")
    hidden = [torch.empty(1, text_tokens, h, device="meta") for h in config.refiner.llm_hidden_sizes]
    masks = [torch.ones(1, text_tokens, dtype=torch.int64, device="meta") for _ in hidden]
    pooled = [torch.empty(1, h, device="meta") for h in config.refiner.llm_hidden_sizes]
    with FlopCounterMode(display=False) as counter:
        context, cmask = refiner(hidden, masks, pooled, t)
    refine_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        dit(lat, t, context, cmask, torch.cat(pooled, -1))
    dit_flops = counter.get_total_flops()
    return {
        "name": config.name, "resolution": [height, width], "latent": list(lat.shape[1:]),
        "image_tokens": (lat.shape[2] // config.transformer.patch_size) * (lat.shape[3] // config.transformer.patch_size),
        "text_tokens_per_llm": text_tokens,
        "llms": llms,
        "refiner": {"params": _count(refiner)},
        "transformer": {"params": _count(dit), "depth": config.transformer.depth, "width": config.transformer.width,
                        "heads": config.transformer.num_heads, "head_dim": config.transformer.head_dim},
        "vae": {"params": _count(vae), "decoder_params": _count(vae.decoder) + _count(vae.post_quant_conv)},
        "gflops_per_step": {"refiner": refine_flops / 1e9, "transformer": dit_flops / 1e9,
                            "note": "batch 1; classifier-free guidance runs a 2B batch, doubling these"},
    }
