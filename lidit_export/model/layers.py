"""Building blocks shared by the refiners and the DiT: norms, masked attention, MLP, embedders."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm written out (not nn.RMSNorm) so that ONNX opset 19 exporters see plain ops."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def key_padding_bias(key_mask: torch.Tensor, query_len: int | None = None, causal: bool = False) -> torch.Tensor:
    """Boolean (B, 1, Lq|1, Lk) mask of allowed keys for scaled_dot_product_attention.

    A row with no valid key at all (an empty caption with no template suffix) gets key 0 allowed, so
    softmax has something to normalise over instead of returning NaN; other rows are untouched.
    """
    keys = key_mask.shape[-1]
    valid = key_mask.bool()
    empty = ~valid.any(dim=-1, keepdim=True)
    allowed = valid | (empty & (torch.arange(keys, device=key_mask.device) == 0))
    allowed = allowed[:, None, None, :]
    if causal:
        q = torch.arange(query_len, device=key_mask.device)[:, None]
        k = torch.arange(keys, device=key_mask.device)[None, :]
        allowed = allowed & (k <= q)[None, None]
    return allowed


class Attention(nn.Module):
    """Multi-head attention with RMSNorm QK-norm [paper]; self-attention when `context` is None."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        kv_dim = kv_dim or dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.norm_q = RMSNorm(self.head_dim, eps)
        self.norm_k = RMSNorm(self.head_dim, eps)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, L, _ = x.shape
        q = self.to_q(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
        k = self.to_k(context).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.to_v(context).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        out = self._attend(self.norm_q(q), self.norm_k(k), v, allowed)
        return self.to_out(out.transpose(1, 2).reshape(B, L, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """The attention core on (B, H, L, Dh) heads, QK-normed; a quantized copy overrides this alone."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (DiT / GLIDE convention: cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class PooledTextEmbedder(nn.Module):
    """MLP on the masked-mean LLM states: the text part of the conditioning vector [paper]."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)


def zero_init_(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            nn.init.zeros_(p)


def randomize_zero_parameters_(module: nn.Module, generator: torch.Generator) -> int:
    """Give every all-zero parameter random values (gates, adaLN, final layer); returns how many.

    Random presets need this: with zero-init gates the refiner is an identity and the DiT returns zeros,
    which would make every parity check downstream vacuous. Matrices get N(0, 1/fan_in) so modulation
    vectors come out O(1); vectors get N(0, 0.02^2).
    """
    count = 0
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                std = 1.0 / math.sqrt(p.shape[1]) if p.dim() == 2 else 0.02
                p.copy_(torch.randn(p.shape, generator=generator) * std)
                count += 1
    return count
