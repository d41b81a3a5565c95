"""Where ONNX Runtime's CPU time goes in a build's graphs, from ONNX Runtime's own profiler.

    python benchmarks/ort_profile.py --build build/smol-fp32 --build build/smol-int8

Per build: one image is drawn (20 steps, the model's default size and cfg) to capture the inputs each graph
really gets (the batched refiner's call, the DiT's CFG batch). Each graph is then run --runs times in a
profiling session made as the runtime makes its own (the optimization level it runs the graph at, no
spinning), and kernel times are summed per operator type (after --warmup runs), and per category (GEMM /
normalization / elementwise / data movement / Q/DQ / other). FLOPs of the GEMM-family kernels (MatMul, Gemm,
FusedMatMul, Conv, MatMulNBits, MatMulInteger) come from the shapes the profiler records, which gives the rate
inside those kernels and the share of time outside them. The wall time of an unprofiled run is recorded too.
For scale: torch.mm's FP32 GEMM rate and ONNX Runtime's own, one 2048^3 MatMul each, same threads.
Writes OUT/ort_profile_<model>_<isa>.json and a PNG (ms per run and category, per build and graph); <isa> names
the CPU's widest kernels (environment.isa_tag), so a VM that comes with another CPU writes its own.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment, isa_tag, percentiles  # noqa: E402

PROMPT = "a red circle to the left of a blue square"
GEMM = {"MatMul", "Gemm", "FusedMatMul", "Conv", "MatMulNBits", "MatMulInteger", "QLinearMatMul", "FusedConv",
        "FusedGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "ConvInteger", "QLinearConv"}
NORMALIZATION = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                 "SkipSimplifiedLayerNormalization", "InstanceNormalization", "GroupNorm", "ReduceMean", "Pow",
                 "Sqrt", "Reciprocal", "ReduceSumSquare", "RMSNormalization"}
DATA = {"Transpose", "Reshape", "Concat", "Slice", "Split", "Gather", "Expand", "Unsqueeze", "Squeeze", "Shape",
        "Cast", "Identity", "Tile", "Where", "ScatterND", "Flatten", "GatherElements", "Range", "ConstantOfShape",
        "Pad", "DepthToSpace", "SpaceToDepth", "Resize", "Trilu", "GatherBlockQuantized"}
QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
ELEMENTWISE = {"Add", "Mul", "Sub", "Div", "Softmax", "Gelu", "FastGelu", "BiasGelu", "Sigmoid", "Tanh", "Erf",
               "Sin", "Cos", "Exp", "Neg", "Relu", "QuickGelu", "Max", "Min", "Clip", "Equal", "Not", "And",
               "Less", "Greater", "Sum", "Abs", "Log", "Sqrt", "BiasAdd", "Silu", "Mish"}
CATEGORIES = ("GEMM", "normalization", "elementwise", "data movement", "Q/DQ", "other")


def category(op: str) -> str:
    for name, ops in (("GEMM", GEMM), ("normalization", NORMALIZATION), ("Q/DQ", QDQ),
                      ("elementwise", ELEMENTWISE), ("data movement", DATA)):
        if op in ops:
            return name
    return "other"


def shapes(entries: list) -> list[list[int]]:
    """The profiler's [{"float": [2, 3]}, ...] -> [[2, 3], ...]."""
    return [next(iter(e.values())) for e in entries]


def gemm_flops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """FLOPs of one GEMM-family kernel from the shapes the profiler saw (multiply-adds x 2)."""
    if not outputs or not inputs:
        return 0.0
    out = outputs[0]
    if op in ("Conv", "FusedConv", "ConvInteger", "QLinearConv"):
        w = inputs[3] if op == "QLinearConv" else inputs[1]
        return 2.0 * float(np.prod(out)) * float(np.prod(w[1:]))
    a = inputs[0]
    k = a[-1] if a else 0
    return 2.0 * float(np.prod(out)) * k


def profile_graph(session_factory, feeds: dict, runs: int, warmup: int) -> dict:
    """Kernel times per op type (ms per run), GEMM FLOPs, from a profiling session."""
    session = session_factory(profile=True)
    for _ in range(warmup + runs):
        session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = starts[warmup] if len(starts) > warmup else 0
    per_op = defaultdict(lambda: {"ms": 0.0, "calls": 0, "flops": 0.0})
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < after:
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        row = per_op[op]
        row["ms"] += e["dur"] / 1e3 / runs
        row["calls"] += 1 / runs
        if op in GEMM:
            row["flops"] += gemm_flops(op, shapes(args.get("input_type_shape", [])),
                                       shapes(args.get("output_type_shape", []))) / runs
    ops = dict(sorted(per_op.items(), key=lambda kv: -kv[1]["ms"]))
    kernel_ms = sum(r["ms"] for r in ops.values())
    gemm_ms = sum(r["ms"] for o, r in ops.items() if o in GEMM)
    flops = sum(r["flops"] for r in ops.values())
    by_category = {c: 0.0 for c in CATEGORIES}
    for o, r in ops.items():
        by_category[category(o)] += r["ms"]
    return {"kernel_ms_per_run": kernel_ms, "kernels_per_run": sum(r["calls"] for r in ops.values()),
            "gemm_ms_per_run": gemm_ms, "gemm_gflop_per_run": flops / 1e9,
            "gflops_inside_gemm_kernels": flops / (gemm_ms / 1e3) / 1e9 if gemm_ms else None,
            "ms_per_category": by_category, "ops": {o: {k: round(v, 4) for k, v in r.items()} for o, r in ops.items()}}


def ort_matmul_gflops(threads: int, n: int = 2048, reps: int = 10) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"a": np.random.rand(n, n).astype(np.float32), "b": np.random.rand(n, n).astype(np.float32)}
    for _ in range(3):
        session.run(None, feeds)
    best = min(_timed(lambda: session.run(None, feeds)) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def torch_mm_gflops(threads: int, n: int = 2048, reps: int = 10) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    return 2 * n ** 3 / min(_timed(lambda: torch.mm(a, b)) for _ in range(reps)) / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def capture_feeds(pipe, request_kwargs: dict) -> dict[str, dict[str, np.ndarray]]:
    """The inputs of each graph's first call while drawing one image."""
    captured, run = {}, pipe.backend.run

    def recording(name, feeds):
        captured.setdefault(name, {k: np.array(v, copy=True) for k, v in feeds.items()})
        return run(name, feeds)

    pipe.backend.run = recording
    try:
        pipe.generate(PROMPT, **request_kwargs)
    finally:
        del pipe.backend.run
    return captured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="append", required=True, help="build folder (repeatable, one model)")
    parser.add_argument("--graphs", nargs="+", default=["refiner", "dit"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the machine's cores)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from lidit_export.artifacts import atomic_write_bytes, atomic_write_json
    from lidit_export.toy.plots import stacked_bars
    from lidit_runtime.backends.onnxruntime import _LEVELS
    from lidit_runtime.manifest import build_file
    from lidit_runtime.pipeline import Pipeline

    peaks = {"torch_mm_2048_gflops": torch_mm_gflops(args.threads),
             "onnxruntime_matmul_2048_gflops": ort_matmul_gflops(args.threads)}
    print(", ".join(f"{k} {v:.0f}" for k, v in peaks.items() if v), flush=True)
    builds, model = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.build:
            pipe = Pipeline.load(folder, threads=args.threads)
            manifest = pipe.manifest
            model = model or manifest.model_name
            feeds = capture_feeds(pipe, {})
            graphs = {}
            for name in args.graphs:
                if name not in feeds:
                    continue
                record = manifest.components[name]
                file = build_file(folder, record.file, f"graph {name}")

                def factory(profile: bool, record=record, file=file, name=name):
                    options = ort.SessionOptions()
                    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                               _LEVELS[pipe.backend.levels[name]])
                    options.intra_op_num_threads = args.threads
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                    if profile:
                        options.enable_profiling = True
                        options.profile_file_prefix = str(Path(tmp) / f"{Path(folder).name}-{name}")
                    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

                plain = factory(False)
                for _ in range(args.warmup):
                    plain.run(None, feeds[name])
                wall = percentiles([_timed(lambda: plain.run(None, feeds[name])) for _ in range(args.runs)])
                result = {"ort_optimization": pipe.backend.levels[name], "manifest_level": record.ort_optimization,
                          "precision": str(record.precision),
                          "input_shapes": {k: list(v.shape) for k, v in feeds[name].items()}, "wall": wall,
                          **profile_graph(factory, feeds[name], args.runs, args.warmup)}
                result["gflops_wall"] = result["gemm_gflop_per_run"] / (wall["p50_ms"] / 1e3)
                result["share_outside_gemm"] = 1 - result["gemm_ms_per_run"] / result["kernel_ms_per_run"]
                graphs[name] = result
                top = ", ".join(f"{o} {r['ms']:.1f}" for o, r in list(result["ops"].items())[:6])
                print(f"{Path(folder).name} {name}: wall p50 {wall['p50_ms']:.1f} ms, kernels "
                      f"{result['kernel_ms_per_run']:.1f} ms ({result['kernels_per_run']:.0f} per run), GEMM "
                      f"{result['gemm_gflop_per_run']:.2f} GFLOP at {result['gflops_inside_gemm_kernels'] or 0:.0f} "
                      f"GFLOP/s inside the kernels, {result['share_outside_gemm']:.0%} of kernel time outside GEMM; "
                      f"top ms: {top}", flush=True)
            builds[Path(folder).name] = graphs
    report = {"benchmark": "ort_profile", "environment": describe_environment(),
              "settings": {"prompt": PROMPT, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                           "spinning": False, "categories": {c: sorted(o for o in GEMM | NORMALIZATION | DATA | QDQ
                                                                       | ELEMENTWISE if category(o) == c)
                                                             for c in CATEGORIES[:-1]}},
              "peaks": peaks, "builds": builds}
    out = Path(args.out)
    atomic_write_json(out / f"ort_profile_{model}_{isa_tag()}.json", report)
    rows = {f"{b} {g}": r["ms_per_category"] for b, graphs in builds.items() for g, r in graphs.items()}
    atomic_write_bytes(out / f"ort_profile_{model}_{isa_tag()}.png",
                       stacked_bars(rows, "ONNX Runtime CPU kernel time per run, by category (profiler)", "ms",
                                    size=(900, 60)))


if __name__ == "__main__":
    main()
