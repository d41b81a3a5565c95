"""The interface every backend implements: run one named stage on its own arrays.

Backends know nothing about the order of stages or the sampler; `lidit_runtime.pipeline.run_chain`
decides both for all of them. Arrays are whatever the backend computes on (numpy for ONNX Runtime,
torch tensors for the reference, device buffers for TensorRT); masks are 0/1 int64.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

Array = Any


class Backend(Protocol):
    name: str

    def asarray(self, host: np.ndarray) -> Array:
        """Move a host array to the backend (noise, token ids, masks, timesteps)."""

    def to_numpy(self, array: Array) -> np.ndarray: ...

    def concat(self, arrays: Sequence[Array], axis: int) -> Array: ...

    def synchronize(self) -> None:
        """Wait for queued work, so that stage timings are honest."""

    def encode_prompt(self, index: int, input_ids: Array, attention_mask: Array) -> tuple[Array, Array]:
        """LLM `index`: (hidden (B, L, H) of the third-to-last block, pooled (B, H) masked mean)."""

    def refine_tokens(self, hidden: Sequence[Array], masks: Sequence[Array], pooled: Sequence[Array],
                      timestep: Array) -> tuple[Array, Array]:
        """Token refiners + collaborative refiner + truncate/concat: (context (B, N, D), mask (B, N))."""

    def denoise(self, latents: Array, timestep: Array, context: Array, context_mask: Array,
                pooled: Array) -> Array:
        """One DiT call: model output (epsilon or velocity) shaped like latents."""

    def decode_latents(self, latents: Array) -> Array:
        """VAE decoder: latents (B, C, h, w) -> image (B, 3, H, W) in [0, 1]."""


def refiner_feeds(hidden, masks, pooled, timestep) -> dict:
    """Inputs of the refiner graph/engine, named as exported (one hidden/mask/pooled per LLM)."""
    feeds = {"timestep": timestep}
    for i, (h, m, p) in enumerate(zip(hidden, masks, pooled)):
        feeds.update({f"hidden_{i}": h, f"attention_mask_{i}": m, f"pooled_{i}": p})
    return feeds


def dit_feeds(latents, timestep, context, context_mask, pooled) -> dict:
    return {"latents": latents, "timestep": timestep, "context": context, "context_mask": context_mask,
            "pooled": pooled}
