"""Run BF16 graphs where ONNX Runtime has no BF16 kernels (its CPU provider has almost none).

The graph is rewritten to compute in FP32 and round every BF16 tensor to BF16 where it is produced
(Cast to BF16 and back after each op): the values each op reads are exactly the BF16 values of the real
graph, and each op computes in FP32 - what TensorRT does for BF16 GEMMs (FP32 accumulation), and within an
op's own rounding of what it does elsewhere. It checks the graph's numerics; it is no fast path.
"""
from __future__ import annotations

# Ops that only move or select values: their BF16 outputs are already BF16-exact, so no rounding follows.
_MOVES = frozenset({"Reshape", "Transpose", "Slice", "Concat", "Gather", "Split", "Squeeze", "Unsqueeze",
                    "Expand", "Identity", "Flatten", "Tile", "Pad", "Where"})


def has_bf16(model) -> bool:
    from onnx import TensorProto

    return any(t.data_type == TensorProto.BFLOAT16 for t in model.graph.initializer) or any(
        a.name == "to" and a.i == TensorProto.BFLOAT16 for n in model.graph.node if n.op_type == "Cast"
        for a in n.attribute)


def emulate_bf16(model):
    """`model` rewritten in place with BF16 storage emulated in FP32 (see the module docstring); returned."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..graph_types import infer_types_

    infer_types_(model)  # types of every intermediate tensor (works past 2 GB)
    graph = model.graph
    bf16 = {v.name for v in list(graph.value_info) + list(graph.output)
            if v.type.tensor_type.elem_type == TensorProto.BFLOAT16}

    def as_fp32(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    for i, t in enumerate(graph.initializer):
        if t.data_type == TensorProto.BFLOAT16:  # BF16 -> FP32 is exact
            graph.initializer[i].CopyFrom(as_fp32(t))
    nodes = []
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.BFLOAT16:
                a.t.CopyFrom(as_fp32(a.t))
        nodes.append(node)
        if node.op_type in _MOVES or node.op_type == "Constant":
            continue
        for j, out in enumerate(node.output):
            if out not in bf16:
                continue
            raw = f"{out}__fp32"
            node.output[j] = raw
            nodes.append(helper.make_node("Cast", [raw], [f"{out}__bf16"], to=TensorProto.BFLOAT16))
            nodes.append(helper.make_node("Cast", [f"{out}__bf16"], [out], to=TensorProto.FLOAT))
        if node.op_type == "Cast":  # the rounding now follows the node; the node itself stays in FP32
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.BFLOAT16:
                    a.i = TensorProto.FLOAT
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # retyped by ONNX Runtime's own inference
    for v in list(graph.input) + list(graph.output):
        if v.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def emulated_session(file, options, providers):
    """An ONNX Runtime session of the BF16 graph `file` with its BF16 emulated (emulate_bf16). The rewritten
    graph is saved with external data beside it in a temporary folder (FP32 weights can pass protobuf's 2 GB)."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    file = Path(file)
    model = emulate_bf16(onnx.load(str(file)))
    with tempfile.TemporaryDirectory(prefix="lidit-bf16-") as tmp:
        path = Path(tmp) / file.name
        onnx.save_model(model, str(path), save_as_external_data=True, location=file.name + ".data")
        return ort.InferenceSession(str(path), options, providers=providers)
