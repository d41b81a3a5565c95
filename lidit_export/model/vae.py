"""VAE: a diffusers AutoencoderKL [choice: SD3/FLUX-style 16-channel config]; the decoder stage un-scales
latents with the VAE's scaling/shift factors and returns images in [0, 1]."""
from __future__ import annotations

import torch
from torch import nn

from ..config import VAEConfig


def build_autoencoder(config: VAEConfig):
    from diffusers import AutoencoderKL

    n = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, scaling_factor=config.scaling_factor,
        shift_factor=config.shift_factor, sample_size=256)


class VAEDecoder(nn.Module):
    """latents (B, C, h, w) in diffusion space -> image (B, 3, 8h, 8w) in [0, 1]."""

    def __init__(self, autoencoder, config: VAEConfig):
        super().__init__()
        self.autoencoder = autoencoder
        self.scaling_factor = config.scaling_factor
        self.shift_factor = config.shift_factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.scaling_factor + self.shift_factor
        image = self.autoencoder.decode(z.to(self.autoencoder.dtype)).sample
        return ((image.float() + 1.0) * 0.5).clamp(0.0, 1.0)

