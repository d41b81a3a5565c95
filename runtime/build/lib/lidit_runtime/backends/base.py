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



class GraphStages:
    """The four stages for backends that run one named graph/engine per stage through
    `run(name, feeds) -> outputs` (reused buffers) and keep the manifest's `encoders` and `graph_inputs`
    (graph -> its input names): each graph is fed the inputs it declares, so a family whose refiner
    reads no timestep or whose DiT reads no pooled vector runs through the same code."""

    encoders: list
    graph_inputs: dict

    def run(self, name: str, feeds: dict) -> list: ...

    def _run(self, name: str, feeds: dict) -> list:
        wanted = self.graph_inputs[name]
        return self.run(name, {k: v for k, v in feeds.items() if k in wanted})

    def encode_prompt(self, index, input_ids, attention_mask):
        feeds = self.encoders[index].encoder_inputs(input_ids, attention_mask)
        outputs = self._run(f"encoder_{index}", feeds)
        # reused across every step: take them out of the shared buffers
        return outputs[0].copy(), outputs[1].copy() if len(outputs) > 1 else None

    def refine_tokens(self, hidden, masks, pooled, timestep):
        feeds = {} if timestep is None else {"timestep": timestep}
        for i, (h, m, p) in enumerate(zip(hidden, masks, pooled)):
            feeds.update({f"hidden_{i}": h, f"attention_mask_{i}": m})
            if p is not None:
                feeds[f"pooled_{i}"] = p
        context, mask = self._run("refiner", feeds)
        return (context.copy(), mask.copy()) if timestep is None else (context, mask)  # once: kept for every step

    def denoise(self, latents, timestep, context, context_mask, pooled):
        feeds = {"latents": latents, "timestep": timestep, "context": context, "context_mask": context_mask}
        if pooled is not None:
            feeds["pooled"] = pooled
        return self._run("dit", feeds)[0]

    def decode_latents(self, latents):
        return self._run("vae_decoder", {"latents": latents})[0].copy()
