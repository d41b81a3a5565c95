"""Linguistic token refiner [paper]: bidirectional self-attention over one LLM's states, gated by c.

One per LLM, weights not shared. The gates come from c = t_emb + MLP(pooled LLM states) and are
zero-initialised, so a fresh refiner is the identity after its input projection [paper].
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import Attention, Mlp, PooledTextEmbedder, key_padding_bias, zero_init_


class TokenRefinerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio)
        self.gates = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        zero_init_(self.gates)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, c: torch.Tensor, keep: int = 0) -> torch.Tensor:
        """keep > 0: only positions keep: are returned, and only they are computed as queries (every position
        is still a key); equal to the full block sliced afterwards, at a fraction of its cost."""
        gate_attn, gate_mlp = self.gates(c).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, D) each
        h = self.norm1(x)
        if keep:
            rows = allowed[:, :, keep:] if allowed.shape[2] > 1 else allowed  # causal masks have a row per query
            x = x[:, keep:] + gate_attn * self.attn(h[:, keep:], context=h, allowed=rows)
        else:
            x = x + gate_attn * self.attn(h, allowed=allowed)
        return x + gate_mlp * self.mlp(self.norm2(x))


class TokenRefiner(nn.Module):
    def __init__(self, llm_dim: int, dim: int, num_heads: int, depth: int = 2, mlp_ratio: float = 4.0,
                 eps: float = 1e-6, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.in_proj = nn.Linear(llm_dim, dim)
        self.pooled_embedder = PooledTextEmbedder(llm_dim, dim)
        self.blocks = nn.ModuleList(TokenRefinerBlock(dim, num_heads, mlp_ratio, eps) for _ in range(depth))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor,
                t_emb: torch.Tensor, keep: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, L, H_llm), mask (B, L), pooled (B, H_llm), t_emb (B, D) -> tokens (B, L - keep, D), c (B, D).

        keep: leading positions the caller drops from the output; the last block computes only the rest."""
        x = self.in_proj(hidden.to(self.in_proj.weight.dtype))
        c = t_emb + self.pooled_embedder(pooled.to(x.dtype))
        allowed = key_padding_bias(mask, x.shape[1], causal=self.causal)
        for index, block in enumerate(self.blocks):
            x = block(x, allowed, c, keep if index == len(self.blocks) - 1 else 0)
        return (x[:, keep:] if not self.blocks else x), c
