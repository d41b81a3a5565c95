"""Rewrites applied to exported graphs before they are checked and written."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from lidit_runtime.graph_types import infer_types_
from lidit_runtime.precision import Precision

FP8_ZERO_POINT = "lidit_fp8_e4m3_zero_point"
# Part of every graph's input key: bumped whenever a pass changes what the graphs hold, so that build folders
# made by an older lidit-export re-export their graphs instead of reusing them (2: fusable_tanh_gelu).
PASSES_REVISION = 2


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


def constant_values(model: onnx.ModelProto):
    """name -> its value as a numpy array when it is an initializer or a Constant node's output, else None
    (the lookup tables are built once, here)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = constants.get(name)
        attr = next((a for a in node.attribute if a.name == "value"), None) if node else None
        return numpy_helper.to_array(attr.t) if attr is not None else None

    return value


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
    value = constant_values(model)

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


def ops_without_bf16(model: onnx.ModelProto) -> list[str]:
    """Ops of `model` that ONNX does not type in BF16 at the model's opset (at 19: Conv, InstanceNormalization,
    Sin, Cos, Range; most gain it in opset 22): BF16 graphs keep them in FP32."""
    from onnx import defs

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    missing = []
    for op in sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}):
        types = {t for c in defs.get_schema(op, opset, "").type_constraints for t in c.allowed_type_strs}
        if "tensor(float)" in types and "tensor(bfloat16)" not in types:
            missing.append(op)
    return missing


def convert_to_half(model: onnx.ModelProto, dtype: Precision = Precision.FP16) -> onnx.ModelProto:
    """An FP16 or BF16 graph with FP32 inputs/outputs (ONNX Runtime's converter). The timestep embedders
    stay FP32: sin/cos of t * freq with t up to 1000 lose all precision in half types (FP16's ulp at 1000
    is 0.5, BF16's is 4). BF16 is the FP16 conversion retyped, each weight rounded once from FP32 (not via
    FP16, whose range would clip it); ops that ONNX does not type in BF16 (ops_without_bf16) stay FP32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    dtype = Precision(dtype)
    if not dtype.policy.half:
        raise ValueError(f"half type {dtype!r}: use fp16 or bf16")
    keep = [n.name for n in model.graph.node  # the sinusoid, up to the cast into the embedder MLP
            if "t_embedder/" in n.name and "/mlp" not in n.name and not n.name.endswith("Cast_1")]
    ops = list(DEFAULT_OP_BLOCK_LIST) + (ops_without_bf16(model) if dtype is Precision.BF16 else [])
    originals = {}
    if dtype is Precision.BF16:
        from onnx import numpy_helper

        originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                     if t.data_type == TensorProto.FLOAT}
        originals.update({n.output[0]: numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
                          for a in n.attribute if a.name == "value" and a.t.data_type == TensorProto.FLOAT})
    # The converter needs tensor types to put casts in front of the ops it keeps in FP32 (BF16 keeps Conv).
    infer_types_(model)
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True, node_block_list=keep,
                                     op_block_list=ops)
    skip_half_round_trips(model.graph)
    if dtype is Precision.BF16:
        _retype_fp16_as_bf16(model, originals)
    topological_sort_(model.graph)  # the converter appends its input casts at the end
    return model


def skip_half_round_trips(graph) -> int:
    """The converter wraps every node it keeps in FP32 in casts (half -> FP32 in, FP32 -> half out), so
    FP32 values flowing between kept nodes - the timestep input into its sinusoid, say - are rounded to
    half on the way. A Cast to FLOAT whose input is a Cast to half reads the half cast's input instead
    (dropping a rounding nobody asked for); casts left unused are removed. Returns the casts rewired."""
    producers = {o: n for n in graph.node for o in n.output}

    def cast_to(node, types) -> bool:
        return node is not None and node.op_type == "Cast" and any(a.name == "to" and a.i in types for a in node.attribute)

    rewired = 0
    for node in graph.node:
        src = producers.get(node.input[0]) if node.input else None
        if cast_to(node, (TensorProto.FLOAT,)) and cast_to(src, (TensorProto.FLOAT16, TensorProto.BFLOAT16)):
            node.input[0] = src.input[0]
            rewired += 1
    outputs = {o.name for o in graph.output}
    while True:  # drop casts (and chains of them) that nothing reads any more
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            return rewired
        for n in dead:
            graph.node.remove(n)


def _retype_fp16_as_bf16(model: onnx.ModelProto, originals: dict) -> None:
    import ml_dtypes
    import numpy as np
    from onnx import numpy_helper

    def bf16_tensor(t: onnx.TensorProto, key: str) -> onnx.TensorProto:
        values = originals.get(key)
        if values is None:
            values = numpy_helper.to_array(t).astype(np.float32)
        bits = np.asarray(values, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
        out = helper.make_tensor(t.name, TensorProto.BFLOAT16, list(values.shape), bits.tobytes(), raw=True)
        return out

    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if t.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(bf16_tensor(t, t.name))
    for node in graph.node:
        for a in node.attribute:
            if a.name == "to" and node.op_type == "Cast" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.BFLOAT16
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(bf16_tensor(a.t, node.output[0] if node.op_type == "Constant" else ""))
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.type.tensor_type.elem_type == TensorProto.FLOAT16:
            info.type.tensor_type.elem_type = TensorProto.BFLOAT16


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


# Weight-only quantization of the LLM encoder graphs (`--encoder-weights int8 | int4`), for ONNX Runtime.
# An encoder graph is almost all weights (a 135M LLM is a 514 MB FP32 graph) and runs a few dozen caption tokens
# per prompt, so its cost is memory and reading weights, not arithmetic. Every MatMul with a constant weight
# becomes ONNX Runtime's MatMulNBits (symmetric, one scale per block of 32 inputs, made by ONNX Runtime's own
# quantizer); accuracy level 4 lets it run its integer kernels (activations quantized per block on the fly);
# level 0, FP32 arithmetic on dequantized weights, is 3x slower for 8-bit weights on AVX2. The token embedding
# table (a fifth of SmolLM2's weights) is quantized too: 4-bit through GatherBlockQuantized, 8-bit as INT8 rows
# with a scale per block of 32 that standard ops (Gather, Cast, Mul) dequantize for the few gathered rows only.
# MatMulNBits and GatherBlockQuantized are ONNX Runtime operators: TensorRT cannot parse these graphs.
WEIGHT_BITS = {"int8": 8, "int4": 4}
WEIGHT_BLOCK = 32


def quantize_weights_only(model: onnx.ModelProto, weights: str) -> onnx.ModelProto:
    """`model` with its constant MatMul weights as MatMulNBits and its embedding tables quantized (see above)."""
    import logging

    import numpy as np

    from lidit_runtime.dependencies import require

    bits = WEIGHT_BITS[weights]
    nbits = require("onnxruntime.quantization.matmul_nbits_quantizer", "--encoder-weights (needs onnx-ir)")
    from onnxruntime.quantization import QuantFormat

    # it warns that 4-bit types force opset 21 / IR 10 "but the model may not be valid": export_graph runs
    # onnx.checker on the result, and the tests run it in ONNX Runtime at unseen shapes
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    ops = ("MatMul", "Gather") if bits == 4 else ("MatMul",)
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=WEIGHT_BLOCK, is_symmetric=True, accuracy_level=4,
                                                bits=bits, op_types_to_quantize=ops, quant_axes={"Gather": 1},
                                                quant_format=QuantFormat.QOperator)
    quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks: their scale is 0 and their codes 0
        quantizer.process()
    model = quantizer.model.model
    if bits == 8:
        quantize_embeddings_int8(model)
    left = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and _float_weight(model, n) is not None]
    if left:
        raise ValueError(f"weight-only quantization left {len(left)} float weights ({left[:3]} ...)")
    return model


def _float_weight(model: onnx.ModelProto, node) -> onnx.TensorProto | None:
    """The float initializer a MatMul (as B) or Gather (as data) reads, if any."""
    name = node.input[1] if node.op_type == "MatMul" else node.input[0]
    for init in model.graph.initializer:
        if init.name == name and init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(init.dims) == 2:
            return init
    return None


def quantize_embeddings_int8(model: onnx.ModelProto) -> int:
    """Each Gather of a float [V, H] table -> INT8 table [V, H/32, 32] and scales [V, H/32, 1], gathered and
    multiplied; the rows keep the indices' leading shape. Returns how many tables were quantized."""
    import numpy as np
    from onnx import numpy_helper

    graph, count = model.graph, 0
    for node in list(graph.node):
        table = _float_weight(model, node) if node.op_type == "Gather" else None
        if table is None or any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        w = numpy_helper.to_array(table).astype(np.float32)
        V, H = w.shape
        block = WEIGHT_BLOCK if H % WEIGHT_BLOCK == 0 else H
        blocks = w.reshape(V, H // block, block)
        scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(blocks / scale), -127, 127).astype(np.int8)
        p = f"{node.name or table.name}_int8"
        graph.initializer.remove(table)
        graph.initializer.extend([numpy_helper.from_array(q, p + "_q"), numpy_helper.from_array(scale, p + "_scale"),
                                  numpy_helper.from_array(np.array([H], np.int64), p + "_width")])
        ids, out = node.input[1], node.output[0]
        new = [helper.make_node("Gather", [p + "_q", ids], [p + "_rows_q"], name=p + "_gather_q"),
               helper.make_node("Gather", [p + "_scale", ids], [p + "_rows_scale"], name=p + "_gather_scale"),
               helper.make_node("Cast", [p + "_rows_q"], [p + "_rows_f"], name=p + "_cast", to=TensorProto.FLOAT),
               helper.make_node("Mul", [p + "_rows_f", p + "_rows_scale"], [p + "_rows"], name=p + "_dequantize"),
               helper.make_node("Shape", [ids], [p + "_ids_shape"], name=p + "_ids_shape"),
               helper.make_node("Concat", [p + "_ids_shape", p + "_width"], [p + "_shape"], name=p + "_shape", axis=0),
               helper.make_node("Reshape", [p + "_rows", p + "_shape"], [out], name=p + "_reshape")]
        if table.data_type != TensorProto.FLOAT:
            new[-1].output[0] = p + "_rows_float"
            new.append(helper.make_node("Cast", [p + "_rows_float"], [out], name=p + "_cast_out", to=table.data_type))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for i, n in enumerate(new):
            graph.node.insert(at + i, n)
        count += 1
    return count


def fusable_tanh_gelu(model: onnx.ModelProto) -> int:
    """Rewrite the exporter's tanh-GELU, 0.5 * (x * (1 + tanh(c * (x + k * (x * (x * x)))))), as
    (0.5 * x) * (1 + tanh(c * (x + k * x^3))) with a Pow: the same function in the same standard ops (TensorRT
    parses both), in the order ONNX Runtime's FastGelu fusion recognises, so that the nine elementwise passes
    over the MLP's widest activation become one fused kernel on CPU. Returns how many GELUs were rewritten."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    constant = constant_values(model)

    def split(node, value):
        """The other input of a binary node one of whose inputs is the one-element constant `value`, else None."""
        for i in (0, 1):
            got = constant(node.input[i])
            if got is not None and got.size == 1 and abs(float(got.reshape(-1)[0]) - value) <= 1e-6 * max(1.0, abs(value)):
                return node.input[1 - i]
        return None

    removed, added, count = set(), [], 0
    for tanh in [n for n in graph.node if n.op_type == "Tanh"]:
        inner = producer.get(tanh.input[0])
        if inner is None or inner.op_type != "Mul" or (a1_name := split(inner, 0.7978845834732056)) is None:
            continue
        a1 = producer.get(a1_name)
        if a1 is None or a1.op_type != "Add":
            continue
        for x_index in (0, 1):
            x, m2 = a1.input[x_index], producer.get(a1.input[1 - x_index])
            if m2 is not None and m2.op_type == "Mul":
                break
        else:
            continue
        m1 = producer.get(split(m2, 0.044715) or "")
        if m1 is None or m1.op_type != "Mul" or x not in m1.input:
            continue
        m0 = producer.get(m1.input[1] if m1.input[0] == x else m1.input[0])
        if m0 is None or m0.op_type != "Mul" or list(m0.input) != [x, x]:
            continue
        a2 = only_consumer(tanh.output[0])
        if a2 is None or a2.op_type != "Add" or split(a2, 1.0) != tanh.output[0]:
            continue
        m4 = only_consumer(a2.output[0])
        if m4 is None or m4.op_type != "Mul" or set(m4.input) != {x, a2.output[0]}:
            continue
        m5 = only_consumer(m4.output[0])
        if m5 is None or m5.op_type != "Mul" or split(m5, 0.5) != m4.output[0]:
            continue
        if any(only_consumer(n.output[0]) is None for n in (m0, m1, m2, a1, inner)):
            continue
        base = f"{tanh.name or tanh.output[0]}/fusable"
        three, half = f"{base}/three", f"{base}/half"
        graph.initializer.extend([numpy_helper.from_array(np.array(3.0, np.float32), three),
                                  numpy_helper.from_array(np.array(0.5, np.float32), half)])
        cube, half_x = f"{base}/x_cubed", f"{base}/half_x"
        kappa = m2.input[0] if m2.input[1] == m1.output[0] else m2.input[1]
        added.append((m0, [helper.make_node("Pow", [x, three], [cube], name=f"{base}/pow")]))
        added.append((m2, [helper.make_node("Mul", [cube, kappa], [m2.output[0]], name=f"{base}/mul_kappa")]))
        added.append((m5, [helper.make_node("Mul", [x, half], [half_x], name=f"{base}/mul_half"),
                           helper.make_node("Mul", [half_x, a2.output[0]], [m5.output[0]], name=f"{base}/mul_out")]))
        removed.update(id(n) for n in (m0, m1, m2, m4, m5))
        count += 1
    if count:
        replacement = {id(old): nodes for old, nodes in added}
        kept = []
        for node in graph.node:
            if id(node) in replacement:
                kept.extend(replacement[id(node)])
            elif id(node) not in removed:
                kept.append(node)
        used = {name for n in kept for name in n.input} | {o.name for o in graph.output}
        kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in used]  # the dropped Mul's 0.5
        del graph.node[:]
        graph.node.extend(kept)
        topological_sort_(graph)
        live = {o for n in graph.node for o in n.output}
        kept_info = [v for v in graph.value_info if v.name in live]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return count
