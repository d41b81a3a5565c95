"""End-to-end latency on a GPU: PyTorch BF16 eager and torch.compile baselines, then TensorRT engines
(FP16 / FP8) built and run in the same process, so every figure comes from the same machine and run.

    python benchmarks/gpu_latency.py --preset li-dit-1b --precisions fp16,fp8 --out benchmarks/results/gpu_latency.json

Per configuration: per-stage p50/p95 (encode, refine, denoise, decode, total) over --repeats runs after
--warmup runs, and peak device memory. Without TensorRT the engine rows say why they are missing.
`--device cpu --preset tiny` runs the PyTorch rows on a CPU (a smoke check of the script, not a result).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from environment import describe_environment, percentiles  # noqa: E402

from lidit_export.artifacts import atomic_write_text  # noqa: E402

STAGES = ("encode", "refine", "denoise", "decode", "total")


def _summarize(timings: list[dict], peak_bytes: int | None) -> dict:
    out = {stage: percentiles([t[stage] for t in timings]) for stage in STAGES if stage in timings[0]}
    out["peak_memory_gib"] = None if peak_bytes is None else peak_bytes / 2**30
    return out


def torch_rows(model: Path, device: str, request, warmup: int, repeats: int) -> dict:
    import torch

    from lidit_export.model.pipeline import LiDiTPipeline

    dtype = "bfloat16" if device.startswith("cuda") else None
    rows = {}
    for mode in ("eager", "compile"):
        pipe = LiDiTPipeline.from_pretrained(model, device=device, dtype=dtype)
        if mode == "compile":
            pipe.transformer = torch.compile(pipe.transformer)
            pipe.refiner = torch.compile(pipe.refiner)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(warmup):
            pipe.generate(request)
        first = time.perf_counter() - t0
        timings = [pipe.generate(request).timings for _ in range(repeats)]
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        rows[f"pytorch_{dtype or 'float32'}_{mode}"] = {**_summarize(timings, peak), "warmup_seconds": first}
        del pipe
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def tensorrt_rows(model: Path, precisions: list[str], request, warmup: int, repeats: int, work: Path) -> dict:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return {f"tensorrt_{p}": {"skipped": "full TensorRT is not installed on this machine"} for p in precisions}
    from lidit_export.stages import BuildOptions, build_pipeline
    from lidit_export.engine.builder import EngineOptions
    from lidit_runtime.pipeline import Pipeline

    rows = {}
    for precision in precisions:
        build = work / precision
        t0 = time.perf_counter()
        build_pipeline(model, build, BuildOptions(precision=precision, engines=EngineOptions(target="trt")),
                       progress=lambda *_: None)
        build_seconds = time.perf_counter() - t0
        import cupy

        for graphs in (True, False):  # the denoising loop replayed as one CUDA graph, and launched stage by stage
            pipe = Pipeline.load(build, backend="tensorrt", cuda_graphs=graphs)
            for _ in range(max(warmup, 2)):  # the second call captures the graph
                pipe.generate(request)
            timings = [pipe.generate(request).timings for _ in range(repeats)]
            pools = sum(g.pool.total_bytes() for g in pipe.backend._graphs.values())
            peak = cupy.get_default_memory_pool().total_bytes() + pipe.backend._scratch.nbytes + pools
            rows[f"tensorrt_{precision}" + ("" if graphs else "_no_cuda_graph")] = {
                **_summarize(timings, peak), "build_seconds": build_seconds}
            del pipe
        profiled = Pipeline.load(build, backend="tensorrt", profile=True)
        profiled.generate(request)
        rows[f"tensorrt_{precision}"]["engine_ms_per_image"] = profiled.backend.stage_ms
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="li-dit-1b")
    ap.add_argument("--model", default=None, help="an existing model folder (default: create the preset)")
    ap.add_argument("--precisions", default="fp16,fp8")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_latency.json"))
    args = ap.parse_args()

    from lidit_export.config import PipelineConfig
    from lidit_export.presets import create_preset
    from lidit_runtime.pipeline import GenerateRequest

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else create_preset(args.preset, Path(tmp) / args.preset)
        config = PipelineConfig.from_json_file(model / "model_index.json")
        size = args.resolution or config.default_height
        request = GenerateRequest(["a red circle to the left of a blue square"] * args.batch, steps=args.steps,
                                  cfg=config.scheduler.default_cfg, seed=0, height=size, width=size)
        result = {"environment": describe_environment(), "model": config.name, "steps": args.steps,
                  "batch": args.batch, "resolution": size, "rows": {}}
        result["rows"].update(torch_rows(model, args.device, request, args.warmup, args.repeats))
        if args.device.startswith("cuda"):
            result["rows"].update(tensorrt_rows(model, args.precisions.split(","), request, args.warmup,
                                                args.repeats, Path(tmp) / "builds"))
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    for name, row in result["rows"].items():
        total = row.get("total", {}).get("p50_ms")
        print(f"{name}: " + (f"total p50 {total:.1f} ms" if total is not None else row.get("skipped", "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
