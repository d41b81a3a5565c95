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


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """Store quantized weights as INT8 / FLOAT8E4M3FN initializers feeding their DequantizeLinear,
    instead of FP32 weights behind a QuantizeLinear: ~4x smaller files, same values.

    The quantization is computed exactly as QuantizeLinear does it (float32 division by the scale,
    round half to even for INT8, round-to-nearest-even with saturation for FP8), so every consumer sees
    bit-identical dequantized weights. Returns the number of weights folded.
    """
    import ml_dtypes
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def value(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = constants.get(name)
        attr = next((a for a in node.attribute if a.name == "value"), None) if node else None
        return numpy_helper.to_array(attr.t) if attr is not None else None

    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    folded, dropped = [], set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits or len(node.input) < 3:
            continue
        w, scale, zero = value(node.input[0]), value(node.input[1]), value(node.input[2])
        if w is None or scale is None or zero is None or w.dtype != np.float32 or np.any(zero != 0):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and w.ndim > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        scaled = w / scale.astype(np.float32)
        if zero.dtype == np.int8:
            q = np.clip(np.rint(scaled), -128, 127).astype(np.int8)
        elif zero.dtype == ml_dtypes.float8_e4m3fn:
            q = np.clip(scaled, -448.0, 448.0).astype(ml_dtypes.float8_e4m3fn)
        else:
            continue
        tensor = numpy_helper.from_array(q, node.output[0])
        folded.append((node, tensor))
        if uses.get(node.input[0]) == 1:
            dropped.add(node.input[0])
    for node, tensor in folded:
        graph.node.remove(node)
        graph.initializer.append(tensor)
    still_used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in still_used]:
        graph.node.remove(node)  # the scales and zero points of the removed QuantizeLinear nodes
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    quantized = {t.name for _, t in folded}
    kept_info = [v for v in graph.value_info if v.name not in quantized]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(folded)


def strip_activation_qdq(model: onnx.ModelProto) -> int:
    """INT8 weight-only graphs (what TensorRT for RTX runs): drop every QuantizeLinear -> DequantizeLinear
    pair on an activation, keeping the quantized weights (initializer -> DequantizeLinear). Consumers of the
    removed DequantizeLinear read the QuantizeLinear's input instead. Returns the pairs removed."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    rename, drop = {}, set()
    for dq in graph.node:
        q = producers.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in weights:
            continue
        rename[dq.output[0]] = q.input[0]
        drop.update((id(q), id(dq)))
    keep = [n for n in graph.node if id(n) not in drop]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for out in graph.output:
        if out.name in rename:
            raise ValueError(f"graph output {out.name} is a quantized activation; cannot strip it")
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 graph with FP32 inputs/outputs (ONNX Runtime's converter). The timestep embedders stay FP32:
    sin/cos of t * freq with t up to 1000 lose all precision in FP16 (its ulp at 1000 is 0.5)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep = [n.name for n in model.graph.node  # the sinusoid, up to the cast into the embedder MLP
            if "t_embedder/" in n.name and "/mlp" not in n.name and not n.name.endswith("Cast_1")]
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True, node_block_list=keep)
    topological_sort_(model.graph)  # the converter appends its input casts at the end
    return model


def topological_sort_(graph) -> None:
    """Reorder graph.node so that every node comes after the producers of its inputs (stable)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at node {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
