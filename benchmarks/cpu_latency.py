"""Per-stage latency on this CPU: the PyTorch reference (eager and torch.compile) against the exported runtime per
build, side by side in one run, plus the DiT's achieved GFLOP/s against the machine's measured FP32 GEMM peak.

    python benchmarks/cpu_latency.py --model models/mini --model models/smol --builds build

Per model (20 steps, batch 1, the model's default size and cfg): every configuration draws the same prompt
image by image in turn (alternating which goes first), 2 warm-up images each, then --images timed ones.
Configurations: `torch eager` / `torch.compile` (FP32 reference, the refiner and DiT compiled) / `torch.compile
freezing` (the same with Inductor's freezing: weights folded as constants, linears prepacked for oneDNN, its
recommended CPU inference setting); ratios are against the faster torch.compile row. Then the
ONNX Runtime builds named by --builds-to-run (precision of the refiner and DiT, plus the encoders' weights).
Every configuration keeps the negative prompt's encoder outputs and refined tokens across images (the
runtime's UncondCache, set on the reference pipelines too), so each image refines its own prompt only.
The DiT's FLOPs per call are counted by torch's FlopCounterMode on the reference (attention included); the
GEMM peak is the faster of torch.mm and ONNX Runtime's MatMul on 2048^3 FP32 matrices, same thread count.
Writes OUT/cpu_latency_<isa>.json (hardware, versions, load, settings, per-stage p50/p95, GFLOP/s, artifact
bytes, the ONNX Runtime level each graph ran at), .png and .md (the README's table, generated from the JSON);
<isa> names the CPU's widest kernels (avx2, avx512-vnni, ...): a VM that comes with another CPU writes its own.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import (STAGES, artifact_bytes, build_folder, describe_environment, interleaved, isa_tag,  # noqa: E402
                         stage_plot)

PROMPT = "a red circle to the left of a blue square"
# build name -> (precision of the refiner and DiT, --encoder-weights, --int8-kernels)
BUILDS = {"ort fp32": ("fp32", "fp32", "qdq"), "ort fp32 + int8 encoder": ("fp32", "int8", "qdq"),
          "ort int8": ("int8", "fp32", "qdq"), "ort int8 integer": ("int8", "fp32", "integer"),
          "ort int8 integer + int8 encoder": ("int8", "int8", "integer"), "ort int8-wo": ("int8-wo", "fp32", "qdq"),
          "ort int8 + int8 encoder": ("int8", "int8", "qdq"), "ort fp16": ("fp16", "fp32", "qdq"),
          "ort fp8": ("fp8", "fp32", "qdq")}
DEFAULT_BUILDS = ["ort fp32", "ort fp32 + int8 encoder", "ort int8", "ort int8 + int8 encoder", "ort int8 integer",
                  "ort int8 integer + int8 encoder"]


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has no formula for CPU's fused attention: QK^T and PV, 2 FLOPs per multiply-add."""
    *batch, lq, d = query
    lk, dv = key[-2], value[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * lq * lk * (d + dv)


def dit_flops_per_call(pipe, request) -> float:
    """FLOPs of one DiT call (the CFG batch of 2) of `request`, counted on the reference (a fresh counter per
    call: entering a FlopCounterMode clears its counts)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}
    totals, forward = [], pipe.transformer.forward

    def counted(*args, **kwargs):
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            out = forward(*args, **kwargs)
        totals.append(counter.get_total_flops())
        return out

    pipe.transformer.forward = counted
    try:
        pipe.generate(request)
    finally:
        del pipe.transformer.forward
    return sum(totals) / len(totals)


COMPILED = ("torch.compile", "torch.compile freezing")


def best_compiled(rows: dict) -> float:
    """The faster torch.compile row's p50 per image: the peer every ratio is taken against."""
    return min(rows[n]["stages"]["total"]["p50_ms"] for n in COMPILED if n in rows)


def table(result: dict) -> str:
    head = ["model", "configuration", "encode", "refine", "denoise", "decode", "total p50",
            "vs best torch.compile", "DiT GFLOP/s (% of peak)", "graphs MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in result["models"].items():
        compiled = best_compiled(m["rows"])
        for config, row in m["rows"].items():
            st = row["stages"]
            cells = [name, config] + [f"{st[s]['p50_ms']:.0f} ms" for s in STAGES[:-1]]
            cells += [f"{st['total']['p50_ms']:.0f} ms", f"{compiled / st['total']['p50_ms']:.2f}x",
                      f"{row['dit_gflops']:.0f} ({row['dit_gflops'] / result['gemm_peak_gflops']:.0%})",
                      f"{sum(row['bytes'].values()) / 1e6:.0f}" if row.get("bytes") else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    parser.add_argument("--builds", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", type=int, default=8, help="timed images per configuration (after 2 warm-up)")
    parser.add_argument("--builds-to-run", nargs="+", default=DEFAULT_BUILDS, choices=list(BUILDS), metavar="BUILD",
                        help=f"of {', '.join(map(repr, BUILDS))}")
    args = parser.parse_args(argv)

    import os

    import torch

    from lidit_export.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
    from lidit_export.model.pipeline import GenerateRequest, LiDiTPipeline
    from lidit_export.stages import BuildOptions, build_pipeline
    from lidit_runtime.pipeline import Pipeline, UncondCache

    from ort_profile import ort_matmul_gflops, torch_mm_gflops

    threads = torch.get_num_threads()
    peaks = {"torch.mm": torch_mm_gflops(threads), "onnxruntime MatMul": ort_matmul_gflops(threads)}
    peak = max(peaks.values())
    print(f"FP32 GEMM peak (2048^3, {threads} threads): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
          + " GFLOP/s", flush=True)
    models, all_rows = {}, {}
    for folder in args.model:
        reference = LiDiTPipeline.from_pretrained(folder)
        config = reference.config
        steps, cfg = config.scheduler.default_steps, config.scheduler.default_cfg
        size = {"height": config.default_height, "width": config.default_width}

        def request(seed: int, steps: int = steps) -> GenerateRequest:
            return GenerateRequest([PROMPT], steps=steps, cfg=cfg, seed=seed, **size)

        flops = dit_flops_per_call(reference, request(0, steps=2))
        compiled = LiDiTPipeline.from_pretrained(folder)
        reference.uncond_cache = UncondCache()  # the negative prompt's outputs are cached across images, as the runtime does
        frozen = LiDiTPipeline.from_pretrained(folder)
        compile_seconds = {}
        for name, pipe, options in (("torch.compile", compiled, None), ("torch.compile freezing", frozen, {"freezing": True})):
            pipe.uncond_cache = UncondCache()
            pipe.transformer = torch.compile(pipe.transformer, options=options)
            pipe.refiner = torch.compile(pipe.refiner, options=options)
            t0 = time.perf_counter()
            pipe.generate(request(0))
            compile_seconds[name] = time.perf_counter() - t0
        runs = {"torch eager": lambda seed: reference.generate(request(seed)).timings,
                "torch.compile": lambda seed: compiled.generate(request(seed)).timings,
                "torch.compile freezing": lambda seed: frozen.generate(request(seed)).timings}
        builds, levels = {}, {}
        for name in args.builds_to_run:
            precision, weights, kernels = BUILDS[name]
            build = build_folder(args.builds, config.name, precision, weights, kernels)
            print(f"{config.name}: {name} -> {build}", flush=True)
            build_pipeline(folder, build, BuildOptions(precision=precision, encoder_weights=weights, int8_kernels=kernels,
                                                       calibration_dir=str(Path(args.builds) / "calibration-cache"),
                                                       engines=None), progress=lambda *_: None)
            runtime = Pipeline.load(build)
            runs[name] = lambda seed, runtime=runtime: runtime.generate(PROMPT, seed=seed, steps=steps, cfg=cfg,
                                                                        **size).timings
            builds[name] = artifact_bytes(build, runtime.manifest)
            levels[name] = runtime.backend.levels  # Q/DQ INT8 graphs run at ALL where the CPU's INT8 GEMMs are exact
        rows = interleaved(runs, args.images)
        for name, row in rows.items():
            row["dit_gflops"] = flops * steps / (row["stages"]["denoise"]["p50_ms"] / 1e3) / 1e9
            row["bytes"] = builds.get(name)
            row["ort_levels"] = levels.get(name)
        total = {n: r["stages"]["total"]["p50_ms"] for n, r in rows.items()}
        best = best_compiled(rows)
        models[config.name] = {"steps": steps, "cfg": cfg, "resolution": [size["height"], size["width"]],
                               "dit_gflop_per_call": flops / 1e9, "torch_compile_first_image_seconds": compile_seconds,
                               "rows": rows}
        all_rows.update({f"{config.name} {n}": r for n, r in rows.items()})
        for n, t in total.items():
            print(f"{config.name} {n}: {t:.0f} ms ({best / t:.2f}x the best torch.compile), DiT "
                  f"{rows[n]['dit_gflops']:.0f} GFLOP/s ({rows[n]['dit_gflops'] / peak:.0%} of peak)", flush=True)
    result = {"benchmark": "cpu_latency", "environment": describe_environment(),
              "settings": {"batch": 1, "prompt": PROMPT, "images": args.images, "warmup": 2, "interleaved": True,
                           "torch_threads": threads, "onnxruntime": "the runtime's CPU sessions (no spinning)",
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
              "gemm_peak_gflops": peak, "gemm_peaks_gflops": peaks, "models": models}
    out, stem = Path(args.out), f"cpu_latency_{isa_tag()}"
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_bytes(out / f"{stem}.png", stage_plot(all_rows, f"per image, 20 steps, batch 1, {isa_tag()} CPU: p50"))
    atomic_write_text(out / f"{stem}.md", table(result))
    print(table(result))


if __name__ == "__main__":
    main()
