"""Tensor types of an ONNX graph, for the passes that rewrite graphs by type (export and runtime)."""
from __future__ import annotations


def infer_types_(model) -> None:
    """Fill model.graph.value_info by shape inference on a weightless copy (weights become typed inputs),
    which works on graphs past protobuf's 2 GB limit, unlike onnx.shape_inference.infer_shapes on the model."""
    import onnx
    from onnx import helper

    g = model.graph
    weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer]
    skeleton = helper.make_model(helper.make_graph(list(g.node), g.name, list(g.input) + weights, list(g.output)),
                                 opset_imports=list(model.opset_import), ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    del g.value_info[:]
    g.value_info.extend(inferred.graph.value_info)
