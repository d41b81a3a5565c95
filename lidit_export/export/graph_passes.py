"""Rewrites applied to exported graphs before they are checked and written."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

FP8_ZERO_POINT = "lidit_fp8_e4m3_zero_point"


def standardize_fp8_qdq(model: onnx.ModelProto) -> int:
    """Turn ModelOpt's custom trt::TRT_FP8{Quantize,Dequantize}Linear into standard opset-19
    QuantizeLinear/DequantizeLinear with a FLOAT8E4M3FN zero point, so that ONNX Runtime runs the
    graph and TensorRT parses it. Returns the number of nodes rewritten.

    Stale value_info entries of the quantized tensors (typed by the exporter before the rewrite) are
    dropped so shape inference retypes them as float8.
    """
    count = 0
    quantized_outputs = set()
    for node in model.graph.node:
        if node.domain != "trt" or node.op_type not in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):
            continue
        node.domain = ""
        node.op_type = node.op_type.replace("TRT_FP8", "")
        del node.input[2:]
        node.input.append(FP8_ZERO_POINT)
        if node.op_type == "QuantizeLinear":
            quantized_outputs.update(node.output)
        count += 1
    if not count:
        return 0
    model.graph.initializer.append(helper.make_tensor(FP8_ZERO_POINT, TensorProto.FLOAT8E4M3FN, [], [0.0]))
    kept = [v for v in model.graph.value_info if v.name not in quantized_outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    kept_opsets = [o for o in model.opset_import if o.domain != "trt"]
    del model.opset_import[:]
    model.opset_import.extend(kept_opsets)
    return count


def layer_name(node_name: str) -> str:
    """Module path of a node exported by the TorchScript exporter: '/blocks.0/mlp/fc1/MatMul' ->
    'blocks.0.mlp.fc1'; Sequential children repeat their parent ('/mlp/mlp.0/Gemm' -> 'mlp.0')."""
    parts: list[str] = []
    for seg in node_name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def count_quantized_layers(model: onnx.ModelProto) -> dict[str, bool]:
    """Q/DQ census: for every MatMul/Gemm, keyed by its module path, whether its weight side is fed by a
    DequantizeLinear (through any Transpose)."""
    producers = {out: n for n in model.graph.node for out in n.output}
    layers = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            src = producers.get(node.input[1])
            while src is not None and src.op_type == "Transpose":
                src = producers.get(src.input[0])
            layers[layer_name(node.name)] = src is not None and src.op_type == "DequantizeLinear"
    return layers
