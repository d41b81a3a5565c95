"""Are ONNX Runtime's fused INT8 GEMMs exact on this CPU? Asked once per process, by running them.

A Q/DQ INT8 graph says: dequantize, then multiply in FP32. Above its BASIC level ONNX Runtime replaces that
with one integer GEMM (MatMulIntegerToFloat). CPUs with VNNI (AVX512-VNNI, AVX-VNNI, AMX) add u8 x s8 products
into int32 and compute what the graph says; x86 CPUs without it add them in pairs into int16 (vpmaddubsw),
which saturates when a pair passes 32767 - 2 x 255 x 127 does, so the 127-level weights that TensorRT takes
come out wrong (4.5e-2 relative error on a 512 x 384 x 1536 MatMul of this kind). Builds therefore record BASIC for those
graphs (`ort_optimization`), which dequantizes the weights on every call and is slow. Where this probe finds
the fused kernel exact, the runtime runs them at ALL instead: same numbers, the integer kernels' speed.

The probe is one such MatMul with codes at the ends of their range (the worst case for the pairs),
`int8_probe.onnx` (64 x 128 @ 128 x 64, per-channel weights on 127 levels), run at BASIC and at ALL.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

PROBE = Path(__file__).with_name("int8_probe.onnx")
EXACT = 1e-5  # relative L2 between the two: FP32 summation order alone gives ~1e-7; saturation gives ~1e-2


def probe_gap() -> float:
    """Relative L2 of the fused (ALL) run against the dequantizing (BASIC) one on the probe."""
    import onnxruntime as ort

    x = (np.random.default_rng(0).standard_normal((64, 128)) * 1.5).astype(np.float32)  # |x| / 0.02 often > 127
    out = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(PROBE.read_bytes(), options, providers=["CPUExecutionProvider"])
        out.append(session.run(None, {"x": x})[0].astype(np.float64))
    basic, fused = out
    return float(np.linalg.norm(fused - basic) / np.linalg.norm(basic))


@functools.cache
def fused_int8_exact() -> bool:
    """Whether Q/DQ INT8 graphs may run at ALL on this CPU with the numbers BASIC gives (see the module doc)."""
    return probe_gap() < EXACT
