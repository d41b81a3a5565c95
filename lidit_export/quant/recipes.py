"""Quantization recipes: which layers of which component are quantized, to what, and why not the rest.

A recipe resolves against a module to an explicit list of quantized and excluded layers (with the
reason for each exclusion); that list is what ModelOpt is told and what the build report prints.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import asdict, dataclass, field

from torch import nn

from lidit_runtime.dependencies import require
from lidit_runtime.precision import Precision

from ..components import QUANTIZABLE
from ..errors import ConfigError
from .fp8_attention import BMM_QUANTIZERS, eligible, register_quant_attention

# Layers that stay in high precision, with the reason printed in reports: the embedders of the timestep and
# the pooled text, the convolutional patchify and positional embedding, every modulation (each scales all
# activations of its block) and the final layer - the layers the sensitivity report ranks first.
SENSITIVE = {
    "dit": [
        ("t_embedder.*", "timestep embedder"),
        ("y_embedder.*", "pooled-text embedder"),
        ("x_embedder", "patchify conv"),
        ("pos_embed.*", "ResBlock convolutional positional embedding"),
        ("*adaLN_modulation*", "adaLN modulation (scales every activation of its block)"),
        ("final_layer.*", "final layer"),
    ],
    "refiner": [
        ("t_embedder.*", "timestep embedder"),
        ("*pooled_embedder*", "pooled-text projection"),
        ("*.in_proj", "input projection of raw LLM states (massive-activation channels)"),
        ("*gates*", "gate modulation"),
        ("*adaLN_modulation*", "adaLN modulation"),
    ],
}
# INT8 only: per-tensor INT8 cannot hold the text context, whose outlier *tokens* come from the LLMs'
# massive activations (SmoothQuant moves per-channel outliers only). Measured on `smol`: the 8 cross-attn
# key projections are 8 of the 9 most sensitive DiT layers under INT8 (fine under FP8). They run over the
# short text context only, so keeping them costs little compute.
SENSITIVE_INT8 = {
    "dit": [("*cross_attn.to_k", "cross-attention K/V of the text context (per-token outliers; INT8)"),
            ("*cross_attn.to_v", "cross-attention K/V of the text context (per-token outliers; INT8)")],
}
# The diffusers families (names of lidit_export.families.graphs' modules), by the same rules: timestep and
# caption embedders (the caption embedder reads raw LLM states, massive-activation channels included), the patch
# embedder, every modulation (Z-Image's adaLN, Lumina-2's RMSNormZero / continuous LayerNorm) and the final layer.
FAMILY_SENSITIVE = {
    "z-image": {
        "dit": [("t_embedder.*", "timestep embedder"), ("x_embedder", "patch embedder"),
                ("*adaLN_modulation*", "adaLN modulation (scales every activation of its block)"),
                ("final.*", "final layer")],
        "refiner": [("cap_embedder.*", "caption embedder of raw LLM states (massive-activation channels)")],
    },
    "lumina2": {
        "dit": [("timestep_embedder.*", "timestep embedder"), ("x_embedder", "patch embedder"),
                ("*norm1.linear", "RMSNormZero modulation (scales every activation of its block)"),
                ("norm_out.*", "final layer and its modulation")],
        "refiner": [("caption_embedder.*", "caption embedder of raw LLM states (massive-activation channels)")],
    },
}
DEEP_MODEL_BLOCKS = 16  # models at least this deep also keep their first and last 2 blocks


@dataclass
class QuantRecipe:
    precision: Precision  # FP8 (E4M3 per-tensor weights and activations) | INT8 (SmoothQuant)
    components: list[str] = field(default_factory=lambda: list(QUANTIZABLE))
    smoothquant_alpha: float = 0.5  # INT8: migration strength of SmoothQuant (Xiao et al. 2023)
    keep_edge_blocks: int = 2  # first/last blocks kept in high precision for deep models
    # FP8: round each amax up so that the scale 448/amax is a power of two. Multiplying or dividing by it
    # is then exact, so ModelOpt's fake quant (x * 448/amax), ONNX Runtime (x / (amax/448)) and TensorRT
    # agree bit for bit instead of flipping rare rounding ties; nothing clips (amax only grows) and E4M3's
    # relative precision is the same in every binade, so only the subnormal tail moves, by < 1 binade.
    fp8_pow2_scales: bool = True
    fp8_attention: bool = True  # FP8 Q/K/V and softmax quantizers, where head_dim % 16 == 0
    extra_exclude: list[str] = field(default_factory=list)  # more fnmatch patterns on layer names

    def __post_init__(self):
        self.precision = Precision.parse(self.precision, "recipe precision")  # from JSON, a plain string

    def validate(self) -> "QuantRecipe":
        if self.precision not in Precision.calibrated_ones():
            raise ConfigError(f"recipe precision {self.precision} is not a calibrated one; use one of "
                              f"{', '.join(map(str, Precision.calibrated_ones()))}")
        unknown = sorted(set(self.components) - set(QUANTIZABLE))
        if unknown:
            raise ConfigError(f"recipe components {unknown} cannot be quantized; choose from {QUANTIZABLE}")
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ConfigError(f"smoothquant_alpha={self.smoothquant_alpha} must lie in [0, 1]", "smoothquant_alpha")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerPlan:
    """The resolved recipe for one component."""

    component: str
    quantized: list[str]
    excluded: dict[str, str]  # layer -> reason
    attention: list[str] = field(default_factory=list)  # attention modules with FP8 Q/K/V/softmax quantizers

    def to_dict(self) -> dict:
        return {"component": self.component, "quantized": self.quantized, "excluded": self.excluded,
                "attention": self.attention}


def plan_layers(component: str, module: nn.Module, recipe: QuantRecipe, depth: int | None = None,
                family: str | None = None) -> LayerPlan:
    """Every nn.Linear of `module` is quantized unless a sensitive pattern, an edge block of a deep
    model or an extra pattern excludes it. Other layer types (convs, norms) are never quantized.
    family: a diffusers family's name (its own sensitive layers and main blocks named `layers`)."""
    if family is None:
        rules = list(SENSITIVE.get(component, []))
        if recipe.precision is Precision.INT8:
            rules += SENSITIVE_INT8.get(component, [])
    else:
        rules = list(FAMILY_SENSITIVE[family].get(component, []))
    blocks = "blocks" if family is None else "layers"
    if depth is not None and depth >= DEEP_MODEL_BLOCKS and recipe.keep_edge_blocks:
        k = recipe.keep_edge_blocks
        rules += [(f"{blocks}.{i}.*", "first/last blocks of a deep model") for i in (*range(k), *range(depth - k, depth))]
    rules += [(p, "excluded by the recipe") for p in recipe.extra_exclude]
    from ..model.layers import Attention

    quantized, excluded, attention = [], {}, []
    for name, m in module.named_modules():
        if isinstance(m, Attention) and recipe.precision is Precision.FP8 and recipe.fp8_attention \
                and eligible(m.head_dim):
            if not any(fnmatch.fnmatchcase(name + ".to_q", pattern) for pattern, _ in rules):
                attention.append(name)
        if not isinstance(m, nn.Linear):
            continue
        reason = next((why for pattern, why in rules if fnmatch.fnmatchcase(name, pattern)), None)
        if reason:
            excluded[name] = reason
        else:
            quantized.append(name)
    return LayerPlan(component, quantized, excluded, attention)


def modelopt_config(recipe: QuantRecipe, layers: list[str], calibrate: bool = True,
                    attention: list[str] = ()) -> dict:
    """A ModelOpt quantize config that enables exactly `layers` (full module names), plus FP8 Q/K/V and
    softmax quantizers in the `attention` modules.

    calibrate=False builds the same quantizers without running a calibration algorithm, for restoring
    calibrated values from the cache.
    """
    mtq = modelopt()
    base = mtq.FP8_DEFAULT_CFG if recipe.precision is Precision.FP8 else mtq.INT8_SMOOTHQUANT_CFG
    entries = {q["quantizer_name"]: q["cfg"] for q in base["quant_cfg"] if "cfg" in q}
    weight, inputs = copy.deepcopy(entries["*weight_quantizer"]), copy.deepcopy(entries["*input_quantizer"])
    quant_cfg = [{"quantizer_name": "*", "enable": False}]
    for layer in layers:
        quant_cfg += [{"quantizer_name": f"{layer}.weight_quantizer", "cfg": weight},
                      {"quantizer_name": f"{layer}.input_quantizer", "cfg": inputs}]
    if attention:
        register_quant_attention()
        quant_cfg += [{"quantizer_name": f"{a}.{q}", "cfg": inputs} for a in attention for q in BMM_QUANTIZERS]
    if not calibrate:
        algorithm = None
    elif recipe.precision is Precision.INT8:
        algorithm = {"method": "smoothquant", "alpha": recipe.smoothquant_alpha}
    else:
        algorithm = "max"
    return {"quant_cfg": quant_cfg, "algorithm": algorithm}


def modelopt():
    """modelopt.torch.quantization, imported on first use (the import takes ~15 s)."""
    return require("modelopt.torch.quantization", "quantization (--precision fp8 / int8)")
