"""Is each Q/DQ pair of an exported graph the quantizer ModelOpt simulated? Teacher-forced check.

Comparing whole quantized graphs across runtimes cannot be exact: ONNX Runtime and PyTorch sum in
different orders (~1e-7 apart even in FP32), a value within an ulp of a rounding boundary then lands on
the other grid point (one FP8 step is 6-12 %), and deeper layers amplify those flips. So each quantizer
is checked alone: the tensor its PyTorch quantizer received is fed to the graph's Q/DQ sub-graph for
that quantizer, and the outputs must agree to float32 rounding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _quantizer_scopes(model) -> dict[str, tuple[str, str]]:
    """'/blocks.0/mlp/fc1/input_quantizer' (and attention's q/k/v/softmax quantizers) -> (input tensor
    name, DequantizeLinear output name)."""
    from ..export.graph_passes import layer_name

    produced_by = {}
    for node in model.graph.node:
        for out in node.output:
            produced_by[out] = node
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    scopes = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or "_quantizer/" not in node.name or "/weight_quantizer/" in node.name:
            continue
        scope = node.name.rsplit("/", 1)[0]
        members = [n for n in model.graph.node if n.name.startswith(scope + "/")]
        inside = {o for n in members for o in n.output}
        external = [i for n in members for i in n.input if i and i not in inside and i not in constants]
        if len(set(external)) == 1:
            scopes[layer_name(scope + "/x")] = (external[0], node.output[0])
    return scopes


@torch.no_grad()
def check_quantizers(module: torch.nn.Module, graph_file: str | Path, args: tuple, prefix: str = "") -> list[dict]:
    """Per activation quantizer: max abs / relative L2 difference between the graph's Q/DQ output and
    ModelOpt's fake-quant output on the same input tensor (captured from a forward of `module`)."""
    import onnx
    import onnxruntime as ort
    from onnx.utils import Extractor

    model = onnx.load(str(graph_file))
    scopes = _quantizer_scopes(model)
    captured: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hooks = []
    for name, sub in module.named_modules():
        if name.endswith("_quantizer") and not name.endswith("weight_quantizer") and getattr(sub, "is_enabled", False):
            def keep(mod, inputs, output, name=prefix + name):
                captured[name] = (inputs[0].float().numpy().copy(), output.float().numpy().copy())
            hooks.append(sub.register_forward_hook(keep))
    try:
        module(*args)
    finally:
        for h in hooks:
            h.remove()
    extractor = Extractor(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    rows = []
    for name, (x, expected) in sorted(captured.items()):
        if name not in scopes:
            rows.append({"quantizer": name, "found_in_graph": False})
            continue
        src, dst = scopes[name]
        sub = extractor.extract_model([src], [dst])
        got = ort.InferenceSession(sub.SerializeToString(), options).run(None, {src: x})[0]
        diff = got.astype(np.float64) - expected
        rows.append({"quantizer": name, "found_in_graph": True, "max_abs": float(np.abs(diff).max()),
                     "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(expected), 1e-30)),
                     "elements_differing": int((got != expected).sum()), "elements": int(x.size)})
    return rows
