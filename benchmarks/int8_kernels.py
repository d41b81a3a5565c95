"""Which INT8 kernels ONNX Runtime runs on this CPU, how fast, and whether they compute what the Q/DQ graph says.

    python benchmarks/int8_kernels.py --build build/smol-int8 --build build/smol-int8-integer

At its BASIC level ONNX Runtime runs a Q/DQ graph as written: every call dequantizes each INT8 weight to FP32
and runs an FP32 GEMM (exact, and slow). Above BASIC it fuses Q/DQ MatMuls into integer GEMMs
(MatMulIntegerToFloat): fast, but on AVX2 CPUs without VNNI those kernels add u8 x s8 products in pairs into
int16 (vpmaddubsw), which saturates once a pair passes 32767: 2 x 255 x 127 does. `lidit-export build
--precision int8 --int8-kernels integer` puts the weights on 63 levels (2 x 255 x 63 = 32130 cannot) and
records ALL as the graphs' level. This script shows both halves:

1. One Q/DQ MatMul (lidit_export/check/int8_kernels.py: 512 x 384 activations, many codes at the ends of their
   range, 384 x 1536 per-channel INT8 weights) with weights on 127 and on 63 levels: relative L2 of ALL against
   BASIC, and what ALL fused.
2. Per build and graph (the refiner and DiT, with the inputs of one drawn image): p50 wall time at BASIC and at
   ALL, relative L2 between the two, the manifest's level, and the kernels of the ALL session (op counts of
   its optimized graph).

Writes OUT/int8_kernels_<model>_cpu.json (hardware and its SIMD flags, versions, load, settings) and .md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment, percentiles  # noqa: E402
from ort_profile import capture_feeds  # noqa: E402

LEVELS = ("ORT_ENABLE_BASIC", "ORT_ENABLE_ALL")
KERNELS = ("MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulInteger", "DequantizeLinear",
           "QuantizeLinear", "MatMul", "FusedMatMul", "Gemm")


def simd_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in set(flags) if f.startswith(("avx", "amx")) or "vnni" in f or f == "fma")


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def session(model, level: str, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def fused_ops(path: Path) -> dict[str, int]:
    import onnx

    counts = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {k: counts[k] for k in KERNELS if counts[k]}


def table(report: dict) -> str:
    lines = ["| build | graph | manifest level | BASIC p50 | ALL p50 | ALL vs BASIC (rel L2) | ALL runs |",
             "|---|---|---|---|---|---|---|"]
    for build, graphs in report["builds"].items():
        for name, g in graphs.items():
            kernels = ", ".join(f"{k} x{v}" for k, v in g["all_runs"].items() if k != "QuantizeLinear")
            lines.append(f"| {build} | {name} | {g['manifest_level']} | {g['ORT_ENABLE_BASIC']['p50_ms']:.0f} ms | "
                         f"{g['ORT_ENABLE_ALL']['p50_ms']:.0f} ms | {g['rel_l2_all_vs_basic']:.1e} | {kernels} |")
    single = "; ".join(f"{r['weight_levels']} levels: {r['rel_l2_all_vs_basic']:.1e}" for r in report["one_matmul"])
    return "\n".join(lines) + f"\n\nOne Q/DQ MatMul, ALL vs BASIC (rel L2): {single}.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="append", required=True, help="INT8 build folder (repeatable, one model)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the machine's cores)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    from lidit_export.artifacts import atomic_write_json, atomic_write_text
    from lidit_export.check.int8_kernels import integer_gemm_gap
    from lidit_runtime.manifest import build_file
    from lidit_runtime.pipeline import Pipeline

    builds, model = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        single = [integer_gemm_gap(levels, tmp / f"matmul_{levels}.onnx", args.threads) for levels in (127, 63)]
        for r in single:
            print(f"one Q/DQ MatMul, weights on {r['weight_levels']} levels: ALL vs BASIC rel L2 "
                  f"{r['rel_l2_all_vs_basic']:.1e} ({r['all_runs']})", flush=True)
        for folder in args.build:
            pipe = Pipeline.load(folder, threads=args.threads)
            model = model or pipe.manifest.model_name
            feeds = capture_feeds(pipe, {})
            graphs = {}
            for name in ("refiner", "dit"):
                record = pipe.manifest.components[name]
                file = str(build_file(folder, record.file, f"graph {name}"))
                row = {"precision": str(record.precision), "manifest_level": record.ort_optimization,
                       "input_shapes": {k: list(v.shape) for k, v in feeds[name].items()}}
                outputs = {}
                optimized = tmp / f"{Path(folder).name}-{name}.onnx"
                for level in LEVELS:
                    s = session(file, level, args.threads, optimized if level == "ORT_ENABLE_ALL" else None)
                    for _ in range(args.warmup):
                        outputs[level] = s.run(None, feeds[name])[0]
                    times = []
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        s.run(None, feeds[name])
                        times.append(time.perf_counter() - t0)
                    row[level] = percentiles(times)
                row["rel_l2_all_vs_basic"] = rel_l2(outputs["ORT_ENABLE_ALL"], outputs["ORT_ENABLE_BASIC"])
                row["all_runs"] = fused_ops(optimized)
                graphs[name] = row
                print(f"{Path(folder).name} {name} (manifest: {record.ort_optimization}): BASIC "
                      f"{row['ORT_ENABLE_BASIC']['p50_ms']:.0f} ms, ALL {row['ORT_ENABLE_ALL']['p50_ms']:.0f} ms, "
                      f"rel L2 {row['rel_l2_all_vs_basic']:.1e}; ALL runs {row['all_runs']}", flush=True)
            builds[Path(folder).name] = graphs
    environment = describe_environment()
    environment["simd_flags"] = simd_flags()
    report = {"benchmark": "int8_kernels", "environment": environment,
              "settings": {"runs": args.runs, "warmup": args.warmup, "threads": args.threads, "spinning": False},
              "one_matmul": single, "builds": builds}
    out = Path(args.out)
    atomic_write_json(out / f"int8_kernels_{model}_cpu.json", report)
    atomic_write_text(out / f"int8_kernels_{model}_cpu.md", table(report))


if __name__ == "__main__":
    main()
