"""Precisions of a build: one enum and one policy table, read by the CLI, the build stages, the engine
builder, parity and the runtime. Nowhere else is a precision compared to a string.

A precision names what the refiner and the DiT become; encoders and the VAE decoder stay FP32 unless asked
(`--encoder-weights`, below): some LLMs' activations overflow FP16, and quantizing them saves memory rather
than time.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import ConfigError


# The LLM encoders' weights (`--encoder-weights`): FP32; block-quantized INT8 / INT4 graphs that only ONNX Runtime
# runs (its MatMulNBits / GatherBlockQuantized operators), named in a component record's `weights`; or the whole
# encoder graph in FP16 / BF16 (weights and arithmetic, FP32 inputs and outputs) for GPU targets, whose record
# then has that `precision`. BF16 is what these LLMs were trained in; FP16 is checked per model by the build
# (an encoder whose activations overflow FP16 is refused, see lidit_export.export.onnx_export).
BLOCK_WEIGHTS = ("int8", "int4")
HALF_ENCODERS = ("fp16", "bf16")
ENCODER_WEIGHTS = ("fp32", *BLOCK_WEIGHTS, *HALF_ENCODERS)
INT8_KERNELS = ("qdq", "integer")  # how an INT8 build's graphs run on ONNX Runtime (lidit-export build --int8-kernels)


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"  # E4M3 per-tensor weights and activations (ModelOpt), FP8 attention where head_dim % 16 == 0
    INT8 = "int8"  # SmoothQuant: per-channel weights, per-tensor activations
    INT8_WO = "int8-wo"  # the INT8 graphs' weight quantization alone (what TensorRT for RTX runs)

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: "str | Precision", where: str = "precision") -> "Precision":
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"{where} {value!r} is unknown; use one of {', '.join(p.value for p in cls)}",
                              "precision") from None

    @property
    def policy(self) -> "Policy":
        return POLICY[self]

    @classmethod
    def calibrated_ones(cls) -> tuple["Precision", ...]:
        """The precisions that are their own ModelOpt recipe (FP8, INT8)."""
        return tuple(p for p in cls if p.policy.calibrated is p)


@dataclass(frozen=True)
class Thresholds:
    """The parity ladder's gates against the FP32 PyTorch reference."""

    component_rel_l2: float
    step_cosine: float
    image_psnr_db: float
    image_ssim: float


@dataclass(frozen=True)
class Policy:
    calibrated: Precision | None  # the ModelOpt recipe whose calibration and Q/DQ graphs it uses
    half: bool  # refiner and DiT converted by ONNX Runtime's float16 converter (to this precision's type)
    weight_only: bool  # only the weight quantizers of the calibrated graphs are kept
    ort_optimization: str  # ONNX Runtime level: Q/DQ and half graphs at "basic" (CPU INT8 is inexact above it)
    min_compute_capability: tuple[int, int] | None  # of the GPU its TensorRT engines run on
    calibration_prompts: int | None  # default prompt count of its calibration
    thresholds: Thresholds
    int8_activations: bool = False  # TensorRT for RTX has no INT8 activation kernels


_EXACT = Thresholds(1e-4, 0.9999, 40.0, 0.99)
_QUANTIZED = Thresholds(0.25, 0.98, 25.0, 0.9)
# Thresholds: one line of rationale each; the measured figures behind them are in
# benchmarks/results/quality_smol_{fp8,int8}.json and benchmarks/results/miniature_quantization.json.
POLICY = {
    # same math as the reference; only kernel summation order differs
    Precision.FP32: Policy(None, False, False, "all", None, None, _EXACT),
    # half refiner + DiT; the timestep sinusoids stay FP32, so trajectories stay within FP32's gates but components
    Precision.FP16: Policy(None, True, False, "basic", None, None, Thresholds(1e-2, 0.9999, 40.0, 0.99)),
    # BF16 keeps 8 mantissa bits: trained trajectories drift a little on some captions
    Precision.BF16: Policy(None, True, False, "basic", (8, 0), None, Thresholds(5e-2, 0.99, 25.0, 0.9)),
    # FP8 with FP8 attention: widest component error; a trained model's trajectories amplify it near decisions
    Precision.FP8: Policy(Precision.FP8, False, False, "basic", (8, 9), 128, _QUANTIZED),
    # INT8 SmoothQuant: component gate 5x over the worst seen; the same image gates as FP8
    Precision.INT8: Policy(Precision.INT8, False, False, "basic", None, 64,
                           Thresholds(0.05, 0.98, 25.0, 0.9), int8_activations=True),
    # weights alone quantized: trajectories stay close to FP32
    Precision.INT8_WO: Policy(Precision.INT8, False, True, "basic", None, 64, Thresholds(0.05, 0.999, 40.0, 0.99)),
}
