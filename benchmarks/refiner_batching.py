"""The timestep-dependent refiner once per step (inside the loop) vs every step's refiner up front in batched
calls, vs batched with the negative prompt's refined tokens cached (the runtime's default: each image refines its
own rows only), on FP32 builds, side by side (interleaved image by image).

    python benchmarks/refiner_batching.py --model models/mini --model models/smol --builds build

Writes OUT/refiner_batching_<isa>.json (<isa>: environment.isa_tag) (hardware, versions, load, settings, per-stage p50/p95 per model and
setting, and whether the two settings draw the same latents) and a PNG made from it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment, interleaved, isa_tag, stage_plot  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    parser.add_argument("--builds", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", type=int, default=8, help="timed images per setting (after 2 warm-up)")
    args = parser.parse_args(argv)

    from lidit_export.artifacts import atomic_write_bytes, atomic_write_json
    from lidit_export.config import PipelineConfig
    from lidit_export.model.pipeline import INDEX
    from lidit_export.stages import BuildOptions, build_pipeline
    from lidit_runtime.pipeline import GenerateRequest, Pipeline

    prompt = ["a red circle to the left of a blue square"]
    models, all_rows = {}, {}
    for folder in args.model:
        config = PipelineConfig.from_json_file(Path(folder) / INDEX)
        build = Path(args.builds) / f"{config.name}-fp32"
        build_pipeline(folder, build, BuildOptions(engines=None), progress=lambda *_: None)
        pipes = {"per step": Pipeline.load(build), "batched": Pipeline.load(build),
                 "batched + cached negative": Pipeline.load(build)}
        pipes["per step"].batch_refiner = False
        pipes["per step"].uncond_cache = pipes["batched"].uncond_cache = None  # every row refined, every image
        rows = interleaved({name: (lambda seed, pipe=pipe: pipe.generate(GenerateRequest(prompt, seed=seed)).timings)
                            for name, pipe in pipes.items()}, args.images)
        gaps = []
        for seed in range(2):
            want = pipes["per step"].generate(prompt, seed=seed).latents
            for pipe in list(pipes.values())[1:]:
                got = pipe.generate(prompt, seed=seed).latents
                gaps.append((np.abs(got - want).max(), np.linalg.norm(got - want) / np.linalg.norm(want)))
        same = [g[0] for g in gaps]
        refine = {n: r["stages"]["refine"]["p50_ms"] for n, r in rows.items()}
        models[config.name] = {"steps": config.scheduler.default_steps, "cfg": config.scheduler.default_cfg,
                               "resolution": [config.default_height, config.default_width], "rows": rows,
                               "refine_speedup_p50": {n: refine["per step"] / t for n, t in refine.items()},
                               "max_abs_latent_diff": float(max(same)),
                               "max_rel_l2_latent_diff": float(max(g[1] for g in gaps))}
        all_rows.update({f"{config.name} {n}": r for n, r in rows.items()})
        print(f"{config.name}: refiner p50 per image " + ", ".join(f"{n} {t:.1f} ms ({refine['per step'] / t:.2f}x)"
                                                                   for n, t in refine.items())
              + f"; latents differ by {max(same):.2g} (rel L2 {max(g[1] for g in gaps):.1g})")
    result = {"benchmark": "refiner_batching", "environment": describe_environment(),
              "settings": {"precision": "fp32", "backend": "onnxruntime", "images": args.images, "interleaved": True,
                           "batch": 1, "prompt": prompt[0]}, "models": models}
    out = Path(args.out)
    atomic_write_json(out / f"refiner_batching_{isa_tag()}.json", result)
    atomic_write_bytes(out / f"refiner_batching_{isa_tag()}.png",
                       stage_plot(all_rows, "refiner per step vs batched up front (vs cached negative), FP32, ONNX Runtime CPU: p50 per stage"))


if __name__ == "__main__":
    main()
