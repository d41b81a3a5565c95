"""Per-layer sensitivity of the DiT: the output error when only that one layer is quantized.

Every nn.Linear of the DiT (excluded ones included) gets quantizers, calibrated once (max
calibration, no SmoothQuant: smoothing rewrites weights, which would not be undone when a layer's
quantizers are switched off) on DiT inputs recorded from the real sampler; then each layer alone is
switched on and the relative L2 error of the DiT output against FP32 is measured on those inputs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from lidit_runtime.pipeline import GenerateRequest

from .recipes import QuantRecipe, modelopt, modelopt_config, plan_layers


@torch.no_grad()
def record_dit_inputs(pipe, prompts: list[str], steps: int, every: int, seed: int = 0) -> list[tuple]:
    """DiT call arguments from the reference sampler (CFG batch), keeping one step in `every`."""
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: calls.append(tuple(a.clone() for a in args)))
    _, cfg, height, width = pipe.defaults
    try:
        for i, prompt in enumerate(prompts):
            pipe.generate(GenerateRequest([prompt], steps=steps, seed=seed + i, height=height, width=width, cfg=cfg))
    finally:
        hook.remove()
    return calls[::every]


def _quantizers(module: nn.Module):
    from modelopt.torch.quantization.nn import TensorQuantizer

    return {name: m for name, m in module.named_modules() if isinstance(m, TensorQuantizer)}


@torch.no_grad()
def dit_sensitivity(pipe, precision: str, inputs: list[tuple]) -> list[dict]:
    mtq = modelopt()
    recipe = QuantRecipe(precision)
    plan = plan_layers("dit", pipe.transformer, recipe, pipe.dit_depth, pipe.family_name)
    layers = plan.quantized + list(plan.excluded)
    config = {**modelopt_config(recipe, layers), "algorithm": "max"}  # the recipe's quantizers, no smoothing
    dit = copy.deepcopy(pipe.transformer)
    references = [pipe.transformer(*args) for args in inputs]
    mtq.quantize(dit, config, lambda m: [m(*args) for args in inputs])
    quantizers = _quantizers(dit)
    rows = []
    for layer in layers:
        for name, q in quantizers.items():
            q.disable()
        for suffix in ("weight_quantizer", "input_quantizer"):
            quantizers[f"{layer}.{suffix}"].enable()
        num = sum(float((dit(*args) - ref).float().pow(2).sum()) for args, ref in zip(inputs, references))
        den = sum(float(ref.float().pow(2).sum()) for ref in references)
        rows.append({"layer": layer, "rel_l2": (num / den) ** 0.5, "excluded": layer in plan.excluded,
                     "reason": plan.excluded.get(layer, "")})
    rows.sort(key=lambda r: -r["rel_l2"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows
