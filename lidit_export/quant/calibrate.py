"""Calibration: run the real reference sampler (real prompts, CFG batch, every timestep, production
resolution, fixed seed) with ModelOpt's quantizers observing the refiner and the DiT.

The result (the quantized components' state: weights as SmoothQuant left them, amax and pre-quant
scales) is cached as safetensors under a key made of the model's weights, the recipe and every
calibration setting; a second run with the same key restores it instead of recalibrating.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lidit_runtime.manifest import file_sha256
from lidit_runtime.pipeline import GenerateRequest
from lidit_runtime.precision import Precision

from ..artifacts import atomic_directory
from ..components import component
from ..errors import ArtifactError, ConfigError
from .recipes import LayerPlan, QuantRecipe, modelopt, modelopt_config, plan_layers


@dataclass
class CalibrationSettings:
    prompts: list[str]
    steps: int = 20
    cfg: float = 5.0
    seed: int = 0
    height: int = 256
    width: int = 256
    batch: int = 4  # prompts per sampler call (2x rows with CFG)

    def validate(self) -> "CalibrationSettings":
        if not self.prompts:
            raise ConfigError("calibration needs at least one prompt; pass --prompts FILE with one caption per line")
        if self.steps < 1 or self.batch < 1:
            raise ConfigError("calibration steps and batch must be >= 1")
        return self


@dataclass
class QuantizedComponent:
    component: str
    module: nn.Module  # the quantized (fake-quant) copy that is exported
    plan: LayerPlan
    key: str  # identifies the calibration; part of the graph's input key
    from_cache: bool = False
    amax: dict = field(default_factory=dict)
    ort_optimization: str | None = None  # the ONNX Runtime level its graph runs at (None: its precision's)


def calibration_key(model_dir: Path, pipe, recipe: QuantRecipe, settings: CalibrationSettings,
                    plans: dict[str, LayerPlan]) -> str:
    """Hash of everything a calibration depends on, including the resolved layer plans (so a change
    of the recipe's rules in code invalidates it too, not only a change of the recipe's fields)."""
    import importlib.metadata as md

    identity, files = pipe.calibration_identity()
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": recipe.to_dict(), "settings": asdict(settings), "model": identity,
                         "plans": {c: p.to_dict() for c, p in plans.items()},
                         "modelopt": md.version("nvidia-modelopt")}, sort_keys=True).encode())
    for path in files:
        h.update(file_sha256(path).encode() if path.exists() else str(path.name).encode())
    return h.hexdigest()[:16]


def _plans(pipe, recipe: QuantRecipe) -> dict[str, LayerPlan]:
    return {c: plan_layers(c, component(c).module(pipe), recipe, pipe.dit_depth if c == "dit" else None,
                           pipe.family_name) for c in recipe.components}


def _run_sampler(pipe, modules: nn.ModuleDict, settings: CalibrationSettings, progress) -> None:
    """The forward loop: the reference sampler with the observed components swapped in."""
    view = pipe.with_modules(dict(modules.items()))
    prompts = settings.prompts
    for start in range(0, len(prompts), settings.batch):
        chunk = prompts[start: start + settings.batch]
        view.generate(GenerateRequest(chunk, steps=settings.steps, cfg=settings.cfg, seed=settings.seed + start,
                                      height=settings.height, width=settings.width))
        progress(f"  calibrated on {min(start + settings.batch, len(prompts))}/{len(prompts)} prompts")


def _quantizer_values(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if k.endswith(("_amax", "_pre_quant_scale"))}


FP8_MAX = 448.0  # largest finite float8 E4M3FN value


@torch.no_grad()
def round_fp8_scales_to_pow2_(module: nn.Module) -> int:
    """amax -> 448 / 2^floor(log2(448 / amax)) for every calibrated FP8 quantizer (see QuantRecipe)."""
    count = 0
    for name, buf in module.named_buffers():
        if name.endswith("._amax") and buf.numel():
            ratio = FP8_MAX / buf.double().clamp(min=1e-30)
            buf.copy_((FP8_MAX / torch.exp2(torch.floor(torch.log2(ratio)))).to(buf.dtype))
            count += 1
    return count


INT8_MAX = 127.0


@torch.no_grad()
def make_int8_exact_(module: nn.Module) -> int:
    """Make INT8 fake quant and ONNX Runtime/TensorRT Q/DQ compute the same integers.

    ModelOpt rounds x * (127/amax) while Q/DQ runtimes round x / (amax/127); the two differ by an ulp
    and flip rare .5 ties. (1) Activations: SmoothQuant already multiplies each input by a per-channel
    pre-quant scale, so c = 127/amax is folded into that scale (and 1/c into the weight and its amax) and
    amax becomes 127: the quantizer's scale is then exactly 1 on every side (same real-valued math). (2) Weights are replaced by their own INT8
    fake-quantized values, which sit on the grid, far from any tie, and quantize to the same integers.
    """
    count = 0
    for m in module.modules():
        inputs, weights = getattr(m, "input_quantizer", None), getattr(m, "weight_quantizer", None)
        if inputs is None or weights is None or not inputs.is_enabled:
            continue
        pre = getattr(inputs, "_pre_quant_scale", None)
        if pre is not None and inputs._amax.numel() == 1 and weights.is_enabled:
            c = INT8_MAX / inputs._amax.float()
            pre.mul_(c)  # the layer now sees c * x ...
            inputs._amax.fill_(INT8_MAX)
            m.weight.div_(c)  # ... and W / c, with the weight grid scaled alike: W x is unchanged
            weights._amax.div_(c)
        if weights.is_enabled:
            m.weight.copy_(weights(m.weight))
        count += 1
    return count


# INT8 weights for ONNX Runtime's integer kernels on CPUs without VNNI. Above its BASIC level ONNX Runtime
# fuses each Q/DQ MatMul into an integer GEMM; on AVX2 that GEMM multiplies u8 activations by s8 weights
# and adds pairs of products into int16 (vpmaddubsw), which saturates once a pair exceeds 32767: 2 x 255 x 127
# does, 2 x 255 x 63 = 32130 cannot. Weights on 127 levels a side therefore make those kernels inexact (the
# reason INT8 graphs otherwise run at BASIC, dequantizing every weight on every call); weights on 63 levels
# (7 bits, ONNX Runtime's own "reduce_range") make them exact, at half the weight resolution. Done on the
# calibrated copy, so one calibration serves both kinds of graph.
INTEGER_KERNEL_LEVELS = 63


@torch.no_grad()
def with_integer_kernel_weights(quantized: QuantizedComponent) -> QuantizedComponent:
    """A copy of an INT8 component whose weights sit on 63 levels a side (scale amax / 63), still exported as
    INT8 Q/DQ, and whose graph runs at ONNX Runtime's full level (its fused integer kernels), see above."""
    module = copy.deepcopy(quantized.module)
    count = 0
    for m in module.modules():
        weights = getattr(m, "weight_quantizer", None)
        if weights is None or not weights.is_enabled or getattr(weights, "_amax", None) is None:
            continue
        weights._amax.mul_(INT8_MAX / INTEGER_KERNEL_LEVELS)  # the INT8 grid's step becomes amax / 63
        m.weight.copy_(weights(m.weight))  # on the grid: fake quant and Q/DQ give the same integers
        count += 1
    if not count:
        raise ArtifactError(f"{quantized.component} has no INT8 weights to put on {INTEGER_KERNEL_LEVELS} levels")
    return replace(quantized, module=module, key=f"{quantized.key}-levels{INTEGER_KERNEL_LEVELS}",
                               amax=_quantizer_values(module), ort_optimization="all")


def restore(pipe, recipe: QuantRecipe, plan: LayerPlan, state: dict[str, torch.Tensor]) -> nn.Module:
    """A fresh quantized copy of `plan.component` holding the calibrated `state` (no calibration run)."""
    mtq = modelopt()
    module = copy.deepcopy(component(plan.component).module(pipe))
    module = mtq.quantize(module, modelopt_config(recipe, plan.quantized, calibrate=False, attention=plan.attention),
                          None)
    for key, value in state.items():  # quantizers create these buffers only once they hold a value
        owner, attr = key.rsplit(".", 1)
        if attr in ("_amax", "_pre_quant_scale"):
            setattr(module.get_submodule(owner), attr.lstrip("_"), value.clone())
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"cached calibration for {plan.component} does not fit the model (missing {missing[:2]}, "
                            f"unexpected {unexpected[:2]}); delete the calibration folder and rerun")
    return module.eval()


def load_calibration(pipe, folder: str | Path) -> dict[str, QuantizedComponent]:
    """The quantized components stored in one calibration folder (recipe and layer plans from its JSON)."""
    folder = Path(folder)
    meta = json.loads((folder / "calibration.json").read_text())
    recipe = QuantRecipe(**meta["recipe"])
    out = {}
    for c, plan_data in meta["plans"].items():
        plan = LayerPlan(**plan_data)
        module = restore(pipe, recipe, plan, load_file(str(folder / f"{c}.safetensors")))
        out[c] = QuantizedComponent(c, module, plan, meta["key"], True, _quantizer_values(module))
    return out


def calibrate(pipe, model_dir: str | Path, recipe: QuantRecipe, settings: CalibrationSettings, cache_dir: str | Path,
              progress=print, use_cache: bool = True) -> dict[str, QuantizedComponent]:
    recipe.validate()
    settings.validate()
    mtq = modelopt()
    plans = _plans(pipe, recipe)
    key = calibration_key(Path(model_dir), pipe, recipe, settings, plans)
    folder = Path(cache_dir) / f"{recipe.precision}-{key}"
    if use_cache and (folder / "calibration.json").exists():
        try:
            cached = load_calibration(pipe, folder)
            progress(f"calibration {folder.name}: reused from cache")
            return cached
        except Exception as e:  # damaged cache (truncated file, edited JSON): it is ours to redo, not the user's
            progress(f"calibration {folder.name}: the cache is damaged ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:100] if str(e) else ''}); calibrating again")

    progress(f"calibration {folder.name}: {len(settings.prompts)} prompts x {settings.steps} steps, "
             f"{settings.height}x{settings.width}, cfg {settings.cfg}, seed {settings.seed}")
    modules = nn.ModuleDict({c: copy.deepcopy(component(c).module(pipe)) for c in recipe.components})
    layers = [f"{c}.{layer}" for c, plan in plans.items() for layer in plan.quantized]
    attention = [f"{c}.{a}" for c, plan in plans.items() for a in plan.attention]
    torch.manual_seed(settings.seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not calibrated, skip smoothing")  # our excluded layers
        mtq.quantize(modules, modelopt_config(recipe, layers, attention=attention),
                     lambda m: _run_sampler(pipe, m, settings, progress))
    if recipe.precision is Precision.FP8 and recipe.fp8_pow2_scales:
        round_fp8_scales_to_pow2_(modules)
    if recipe.precision is Precision.INT8:
        make_int8_exact_(modules)
    out = {c: QuantizedComponent(c, modules[c].eval(), plans[c], key, False, _quantizer_values(modules[c])) for c in plans}
    with atomic_directory(folder, overwrite=True) as tmp:
        for c, cal in out.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in cal.module.state_dict().items()},
                      str(tmp / f"{c}.safetensors"))
        meta = {"key": key, "recipe": recipe.to_dict(), "settings": asdict(settings),
                "plans": {c: cal.plan.to_dict() for c, cal in out.items()}}
        (tmp / "calibration.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
