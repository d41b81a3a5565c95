"""The parity ladder's rungs for a diffusers family build: every graph against the module it was traced from at
shapes it was not traced at, and the image against the diffusers pipeline itself (same noise, same request)."""
from __future__ import annotations

import numpy as np
import torch

from lidit_runtime.pipeline import GenerateRequest, Pipeline, initial_noise

from ..check.metrics import tensor_errors
from .reference import FamilyReference

# (batch, captions, latent side pair): batches, caption lengths and aspect ratios other than the export's
COMPONENT_CASES = ((3, ["a cat", "", "a very long caption about a small red house " * 6], (1.0, 0.5)),
                   (1, ["x"], (0.5, 1.25)))


def _latent_hw(dims: dict, fractions: tuple[float, float], patch: int) -> tuple[int, int]:
    lo, opt, hi = dims["latent_height"]
    return tuple(max(lo, min(hi, int(opt * f) // patch * patch)) for f in fractions)


@torch.inference_mode()
def component_rows(ref: FamilyReference, runtime: Pipeline, limits: dict, seed: int = 7) -> list[dict]:
    """Rows like check.parity.check_components: one per graph output and case."""
    rng = np.random.default_rng(seed)
    modules, tokenizer = ref.modules, runtime.tokenizers[0]
    dims = runtime.manifest.components["dit"].dims
    C = runtime.manifest.latent_channels
    rows = []
    for batch, captions, fractions in COMPONENT_CASES:
        tokens = tokenizer(captions[:batch])
        ids, mask = tokens.input_ids, tokens.attention_mask
        hidden = modules["encoder_0"](torch.from_numpy(ids), torch.from_numpy(mask))
        context, cmask = modules["refiner"](hidden, torch.from_numpy(mask))
        h, w = _latent_hw(dims, fractions, runtime.manifest.patch_size)
        latents = torch.from_numpy(rng.standard_normal((batch, C, h, w), dtype=np.float32))
        t = torch.from_numpy(rng.uniform(0.05, 0.95, batch).astype(np.float32))
        cases = {
            "encoder_0": ({"input_ids": ids, "attention_mask": mask}, [hidden]),
            "refiner": ({"hidden_0": hidden.numpy(), "attention_mask_0": mask}, [context, cmask]),
            "dit": ({"latents": latents.numpy(), "timestep": t.numpy(), "context": context.numpy(),
                     "context_mask": cmask.numpy()}, [modules["dit"](latents, t, context, cmask)]),
            "vae_decoder": ({"latents": latents[:1].numpy()}, [modules["vae_decoder"](latents[:1])])}
        for name, (feeds, expected) in cases.items():
            actual = runtime.backend.run(name, feeds)
            precision = runtime.manifest.components[name].precision
            limit = limits[precision]["component_rel_l2"]
            for out_name, a, e in zip(runtime.backend.output_names[name], actual, expected):
                e = e.numpy()
                if out_name == "hidden":  # the LLM's states at padding positions are never read
                    a, e = a * mask[..., None], e * mask[..., None]
                if e.dtype == np.int64:
                    errors = {"rel_l2": 0.0 if np.array_equal(a, e) else float("inf"), "cosine": 1.0,
                              "max_abs": float(np.abs(a - e).max()) if a.shape == e.shape else float("inf")}
                else:
                    errors = tensor_errors(a.astype(np.float32), e)
                rows.append({"component": name, "output": out_name, "precision": precision, "shape": list(a.shape),
                             "inputs": {k: list(v.shape) for k, v in feeds.items()}, **errors,
                             "limit": limit, "passed": a.shape == e.shape and errors["rel_l2"] <= limit})
    return rows


def diffusers_image(ref: FamilyReference, request: GenerateRequest) -> np.ndarray:
    """(H, W, 3) uint8 from the diffusers pipeline's own __call__ on the runtime's noise (defaults resolved)."""
    request = request.with_defaults(ref.scheduler, ref.side, ref.side, ref.chain)
    f = ref.pipe.vae_scale_factor
    shape = (len(request.prompts), ref.geometry.latent_channels, request.height // f, request.width // f)
    image = ref.pipe(list(request.prompts), negative_prompt=request.negative_prompt, height=request.height,
                     width=request.width, num_inference_steps=request.steps,
                     latents=torch.from_numpy(initial_noise(shape, request.seed)), output_type="np",
                     **ref.family.guidance_kwargs(request)).images[0]
    return (image * 255).round().astype(np.uint8)
