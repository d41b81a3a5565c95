"""Does ONNX Runtime's fused INT8 GEMM compute what a Q/DQ MatMul says, on this CPU?

Above its BASIC level ONNX Runtime fuses QuantizeLinear -> DequantizeLinear -> MatMul (with a DequantizeLinear
weight) into one integer GEMM, MatMulIntegerToFloat. On x86 CPUs without VNNI that kernel multiplies u8
activations by s8 weights and adds the products in pairs into int16 (vpmaddubsw), which saturates once a pair
passes 32767: 2 x 255 x 127 does, 2 x 255 x 63 = 32130 cannot. This builds one such MatMul with weights on a
given number of levels and activations spread so that many codes sit at the ends of their range (the worst
case), runs it at BASIC (dequantize, FP32 GEMM: what the graph says) and at ALL, and returns the gap.
"""
from __future__ import annotations

from collections import Counter

import numpy as np


def qdq_matmul(levels: int, rows: int = 512, k: int = 384, n: int = 1536, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """(serialized model, input): x (rows, k) -> Q/DQ (per-tensor INT8, scale 0.02) -> MatMul with per-channel
    INT8 weights (k, n) on `levels` levels a side."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    scale = (np.abs(w).max(0) / levels).astype(np.float32)
    codes = np.clip(np.rint(w / scale), -levels, levels).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "zw"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "sx"),
             numpy_helper.from_array(np.array(0, np.int8), "zx"), numpy_helper.from_array(codes, "wq"),
             numpy_helper.from_array(scale, "ws"), numpy_helper.from_array(np.zeros(n, np.int8), "zw")]
    graph = helper.make_graph(nodes, "qdq_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()
    x = (rng.standard_normal((rows, k)) * 1.5).astype(np.float32)  # |x| / 0.02 passes 127 often: codes at the ends
    return model, x


def integer_gemm_gap(levels: int, optimized_file: str, threads: int | None = None, **shape) -> dict:
    """Relative L2 of the ALL session's output against BASIC's for qdq_matmul(levels), and the op types the ALL
    session runs (its optimized graph, written to `optimized_file`)."""
    import onnx
    import onnxruntime as ort

    model, x = qdq_matmul(levels, **shape)
    out = {}
    for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if threads:
            options.intra_op_num_threads = threads
        if level == "ORT_ENABLE_ALL":
            options.optimized_model_filepath = str(optimized_file)
        out[level] = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    basic = out["ORT_ENABLE_BASIC"].astype(np.float64)
    ops = Counter(node.op_type for node in onnx.load(str(optimized_file)).graph.node)
    return {"weight_levels": levels, "rel_l2_all_vs_basic": float(np.linalg.norm(out["ORT_ENABLE_ALL"] - basic)
                                                                   / np.linalg.norm(basic)),
            "all_runs": dict(ops)}


PROBE_SHAPE = {"rows": 64, "k": 128, "n": 64}  # the runtime's probe: small enough to ship, large enough to saturate


def write_probe(path: str) -> None:
    """Write the runtime's probe model (lidit_runtime/backends/int8_probe.onnx): qdq_matmul on 127 levels."""
    from pathlib import Path

    Path(path).write_bytes(qdq_matmul(127, **PROBE_SHAPE)[0])
