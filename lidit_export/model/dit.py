"""LI-DiT backbone [paper]: patchify -> ResBlock convolutional positional embedding -> blocks of
self-attention, cross-attention to the refined text and MLP, each with adaLN-Zero modulation from
c = t_emb + pooled text (9 vectors per block) -> final adaLN + linear -> unpatchify.

There is no sin-cos or RoPE position code, so any latent size that is a multiple of the patch works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiTConfig
from ..errors import ShapeError
from .layers import Attention, Mlp, PooledTextEmbedder, TimestepEmbedder, key_padding_bias, modulate, zero_init_


class ResBlock(nn.Module):
    """conv3x3 -> GroupNorm -> SiLU -> conv3x3, plus skip."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim, eps=eps)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm(self.conv1(x))))


class ResBlockPositionalEmbedding(ResBlock):
    """ResBlock(s) on the (B, D, h, w) patch grid [paper: ResBlock PE]. The first block's weights sit at the
    top level (`pos_embed.conv1`, ...), further ones (`depth` > 1) under `pos_embed.more.<i>`."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-6, depth: int = 1):
        super().__init__(dim, groups, eps)
        self.more = nn.ModuleList(ResBlock(dim, groups, eps) for _ in range(depth - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        for block in self.more:
            x = block(x)
        return x


class LiDiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, context_dim: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.self_attn = Attention(dim, num_heads, eps=eps)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.cross_attn = Attention(dim, num_heads, kv_dim=context_dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        (shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca,
         shift_mlp, scale_mlp, gate_mlp) = self.adaLN_modulation(c).chunk(9, dim=-1)
        x = x + gate_sa.unsqueeze(1) * self.self_attn(modulate(self.norm1(x), shift_sa, scale_sa))
        x = x + gate_ca.unsqueeze(1) * self.cross_attn(modulate(self.norm2(x), shift_ca, scale_ca), context, allowed)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class LiDiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, p = config.width, config.patch_size
        self.x_embedder = nn.Conv2d(config.in_channels, d, kernel_size=p, stride=p)
        self.pos_embed = ResBlockPositionalEmbedding(d, config.pe_groups, config.eps, config.pe_depth)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = PooledTextEmbedder(config.pooled_dim, d)
        self.blocks = nn.ModuleList(LiDiTBlock(d, config.num_heads, config.context_dim, config.mlp_ratio, config.eps)
                                    for _ in range(config.depth))
        self.final_layer = FinalLayer(d, p, config.in_channels, config.eps)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, adaLN-Zero (modulation and final layer zero) so a fresh model returns 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for emb in (self.t_embedder.mlp, self.y_embedder.mlp):
            nn.init.normal_(emb[0].weight, std=0.02)
            nn.init.normal_(emb[2].weight, std=0.02)
        for block in self.pos_embed.more:  # added ResBlocks start as the identity (a trained model can grow them)
            zero_init_(block.conv2)
        for block in self.blocks:
            zero_init_(block.adaLN_modulation)
        zero_init_(self.final_layer.adaLN_modulation, self.final_layer.linear)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """latents (B, C, H, W), timestep (B,), context (B, N, Dc), context_mask (B, N), pooled (B, P) -> (B, C, H, W)."""
        B, C, H, W = latents.shape
        p = self.config.patch_size
        if not torch.jit.is_tracing() and (H % p or W % p):
            raise ShapeError(f"latent size {H}x{W} is not a multiple of the patch size {p}; "
                             f"use an image size that is a multiple of {p} x the VAE factor")
        dtype = self.x_embedder.weight.dtype
        x = self.pos_embed(self.x_embedder(latents.to(dtype)))  # (B, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        c = self.t_embedder(timestep) + self.y_embedder(pooled.to(dtype))
        allowed = key_padding_bias(context_mask)
        context = context.to(dtype)
        for block in self.blocks:
            x = block(x, context, allowed, c)
        x = self.final_layer(x, c)  # (B, h*w, p*p*C)
        x = x.view(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
        return x.to(latents.dtype)
