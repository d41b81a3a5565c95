"""Tiny diffusers pipelines with seeded random weights, assembled the way diffusers' own fast tests assemble
theirs and saved with `save_pretrained`: what the tests (and `lidit-export init --preset z-image-tiny`) load
through the same path a real checkpoint folder takes. The tokenizer is SmolLM2's (a real BPE with a chat
template); the LLMs are the families' real architectures (Qwen3, Gemma-2) at toy width."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import atomic_directory

TINY = {"z-image-tiny": "ZImagePipeline", "lumina2-tiny": "Lumina2Pipeline"}
_VOCAB = 49152  # SmolLM2's


def _tokenizer(bos: bool):
    """SmolLM2's tokenizer; bos: it prepends a BOS like Gemma's does (a post-processor in tokenizer.json)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from ..smollm2 import smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    if bos:
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)])
    return tokenizer


def _vae(latent_channels: int, scaling: float, shift: float | None, blocks=(16, 32)):
    """blocks: channels per level; 2 ** (levels - 1) pixels per latent cell."""
    from diffusers import AutoencoderKL

    n = len(blocks)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                         up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(blocks), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=32,
                         scaling_factor=scaling, shift_factor=shift)


def z_image_components(seed: int = 0) -> dict:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[1024, 64, 64])
    with torch.no_grad():  # diffusers initialises the pad tokens to zeros; random ones make them visible
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    torch.manual_seed(seed + 1)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rope_theta=1e6))
    torch.manual_seed(seed + 2)
    return {"transformer": transformer, "vae": _vae(4, 0.3611, 0.1159), "text_encoder": text_encoder,
            "tokenizer": _tokenizer(bos=False),
            "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)}


def lumina2_components(seed: int = 0) -> dict:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Transformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=2, num_refiner_layers=1,
        num_attention_heads=4, num_kv_heads=2, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
        scaling_factor=1.0, axes_dim_rope=(4, 2, 2), axes_lens=(300, 64, 64), cap_feat_dim=32)
    torch.manual_seed(seed + 1)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=512, sliding_window=64,
        pad_token_id=2, bos_token_id=0, eos_token_id=2))
    torch.manual_seed(seed + 2)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15)
    # the Lumina-2 pipeline assumes 8 pixels per latent cell whatever the VAE: a 4-level VAE, as the real one
    return {"transformer": transformer, "vae": _vae(4, 0.3611, 0.1159, (8, 8, 16, 16)), "text_encoder": text_encoder,
            "tokenizer": _tokenizer(bos=True), "scheduler": scheduler}


def create_tiny(name: str, out: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write tiny pipeline `name` (a key of TINY) as a diffusers folder, atomically."""
    import diffusers

    components = {"z-image-tiny": z_image_components, "lumina2-tiny": lumina2_components}[name](seed)
    pipe = getattr(diffusers, TINY[name])(**components)
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        index = json.loads((tmp / "model_index.json").read_text())
        assert index["_class_name"] == TINY[name]
    return Path(out)
