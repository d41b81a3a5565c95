"""ONNX Runtime worker threads that spin vs threads that sleep between runs, on one build, side by side.

    python benchmarks/ort_spinning.py --model models/mini --builds build --out benchmarks/results

The refiner and the DiT sessions alternate every denoising step; by default ONNX Runtime's intra-op threads
keep spinning after each run, taking the cores the next session needs. The runtime turns spinning off
(`Pipeline.load(..., spinning=False)`, the default). This script builds the model's FP32 graphs (reused when
up to date), then times per-stage latency with spinning off and on, interleaved image by image so that
machine load hits both alike, and writes OUT/ort_spinning_<model>_cpu.json (hardware, versions, load,
settings) and a PNG made from it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment, interleaved, stage_plot  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--builds", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", type=int, default=12, help="timed images per setting (after 2 warm-up)")
    args = parser.parse_args(argv)

    from lidit_export.artifacts import atomic_write_bytes, atomic_write_json
    from lidit_export.config import PipelineConfig
    from lidit_export.model.pipeline import INDEX
    from lidit_export.stages import BuildOptions, build_pipeline
    from lidit_runtime.pipeline import GenerateRequest, Pipeline

    config = PipelineConfig.from_json_file(Path(args.model) / INDEX)
    build = Path(args.builds) / f"{config.name}-fp32"
    build_pipeline(args.model, build, BuildOptions(engines=None), progress=lambda *_: None)
    pipes = {"spinning off (default)": Pipeline.load(build, spinning=False),
             "spinning on (ONNX Runtime's default)": Pipeline.load(build, spinning=True)}
    prompt = ["a red circle to the left of a blue square"]
    rows = interleaved({name: (lambda seed, pipe=pipe: pipe.generate(GenerateRequest(prompt, seed=seed)).timings)
                        for name, pipe in pipes.items()}, args.images)
    off, on = (rows[n]["stages"]["total"]["p50_ms"] for n in pipes)
    result = {"benchmark": "ort_spinning", "environment": describe_environment(), "load_avg": os.getloadavg(),
              "settings": {"model": config.name, "precision": "fp32", "steps": config.scheduler.default_steps,
                           "resolution": [config.default_height, config.default_width], "images": args.images,
                           "threads": "ONNX Runtime default (one per core)", "interleaved": True},
              "rows": rows, "speedup_total_p50": on / off, "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    atomic_write_json(out / f"ort_spinning_{config.name}_cpu.json", result)
    atomic_write_bytes(out / f"ort_spinning_{config.name}_cpu.png",
                       stage_plot(rows, f"{config.name} FP32, ONNX Runtime CPU, {config.scheduler.default_steps} "
                                        "steps: p50 per stage"))
    print(json.dumps({n: r["stages"]["total"]["p50_ms"] for n, r in rows.items()}, indent=1))
    print(f"spinning off is {on / off:.2f}x faster per image; wrote {out}/ort_spinning_{config.name}_cpu.{{json,png}}")


if __name__ == "__main__":
    main()
