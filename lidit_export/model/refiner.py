"""The `refiner` component: token refiner per LLM -> collaborative refiner -> drop instruction tokens ->
concatenate branches along the sequence axis [paper: truncate + concat; choice: sequence axis, since the
LLMs' tokenizers differ and channels cannot line up]. Runs at every denoising step (it sees t)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import RefinerConfig
from .collab_refiner import CollaborativeRefiner
from .layers import TimestepEmbedder
from .token_refiner import TokenRefiner


class PromptRefiner(nn.Module):
    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = config
        d = config.width
        self.t_embedder = TimestepEmbedder(d)
        self.branches = nn.ModuleList(
            TokenRefiner(h, d, config.num_heads, config.depth, config.mlp_ratio, config.eps, config.causal)
            for h in config.llm_hidden_sizes)
        use_collab = config.collaborative and len(config.llm_hidden_sizes) >= 2
        self.collab = CollaborativeRefiner(len(self.branches), d, config.num_heads, config.mlp_ratio,
                                           config.eps) if use_collab else None

    def forward(self, hidden: list[torch.Tensor], masks: list[torch.Tensor], pooled: list[torch.Tensor],
                timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per LLM k: hidden (B, L_k, H_k), mask (B, L_k), pooled (B, H_k); timestep (B,)
        -> context (B, sum_k(L_k - P_k), D) and its 0/1 mask (int64)."""
        t_emb = self.t_embedder(timestep)
        keep = self.config.prefix_lengths
        # The last stage computes caption positions only: instruction tokens are keys there, never outputs.
        last = [0] * len(keep) if self.collab is not None else keep
        tokens, conds = [], []
        for branch, h, m, p, k in zip(self.branches, hidden, masks, pooled, last):
            x, c = branch(h, m, p, t_emb, k)
            tokens.append(x)
            conds.append(c)
        if self.collab is not None:
            tokens = self.collab(tokens, list(masks), conds, keep)
        context = torch.cat(tokens, dim=1)
        mask = torch.cat([m[:, p:] for m, p in zip(masks, keep)], dim=1).to(torch.int64)
        return context, mask
