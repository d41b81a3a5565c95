"""Collaborative refiner [paper]: each LLM branch cross-attends to the others, then all are fused.

Q = own branch, K/V = the other branches concatenated along the sequence [choice for K > 2]. One block
per branch with adaLN shift/scale/gate from the branch's c, zero-initialised [paper].
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import Attention, Mlp, key_padding_bias, modulate, zero_init_


class CollaborativeBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.norm_context = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, eps=eps)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        zero_init_(self.adaLN_modulation)

    def forward(self, x: torch.Tensor, others: torch.Tensor, allowed: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = self.attn(modulate(self.norm1(x), shift1, scale1), context=self.norm_context(others), allowed=allowed)
        x = x + gate1.unsqueeze(1) * h
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class CollaborativeRefiner(nn.Module):
    def __init__(self, num_branches: int, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.blocks = nn.ModuleList(CollaborativeBlock(dim, num_heads, mlp_ratio, eps) for _ in range(num_branches))

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], conds: list[torch.Tensor],
                keep: list[int] | None = None) -> list[torch.Tensor]:
        """keep[k]: leading positions of branch k the caller drops; they are still keys of the other branches
        but are not computed as queries (the blocks are per-position apart from attention: equal to slicing after)."""
        keep = keep or [0] * len(tokens)
        out = []
        for k, block in enumerate(self.blocks):  # every branch reads the others' states from before this stage
            others = torch.cat([t for j, t in enumerate(tokens) if j != k], dim=1)
            other_mask = torch.cat([m for j, m in enumerate(masks) if j != k], dim=1)
            out.append(block(tokens[k][:, keep[k]:], others, key_padding_bias(other_mask), conds[k]))
        return out
