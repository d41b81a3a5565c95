"""Does the fast build still draw what the reference draws? Every precision of the trained miniature, scored.

    python benchmarks/miniature_quantization.py --model models/mini --builds build --num 100

For each build (a precision, and the LLM encoder's `--encoder-weights`): `build` (ONNX stages; the miniature
calibrates on captions of its own world, from its prompts.jsonl), then held-out captions (never trained on)
through ONNX Runtime, against the FP32 PyTorch reference with the same seeds: image PSNR/SSIM, the scorer's
prompt-following accuracy, and how often the build's verdict on a stated attribute agrees with the
reference's. Rows of builds not named by --builds-to-run are kept from an earlier JSON of the same captions, seeds,
steps and cfg (each row records when it was measured). Writes
    miniature_quantization.json   per build: image metrics, scores per kind, agreement, build time, graph bytes
    miniature_quantization.md     the table for the README
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from environment import artifact_bytes, build_folder, describe_environment  # noqa: E402

from lidit_export.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from lidit_export.toy.scorer import KINDS, score_image, summarize  # noqa: E402

# build name -> (precision of the refiner and DiT, --encoder-weights, --int8-kernels)
CONFIGS = {"fp32": ("fp32", "fp32", "qdq"), "fp16": ("fp16", "fp32", "qdq"), "bf16": ("bf16", "fp32", "qdq"),
           "fp8": ("fp8", "fp32", "qdq"), "int8": ("int8", "fp32", "qdq"), "int8 integer": ("int8", "fp32", "integer"),
           "int8-wo": ("int8-wo", "fp32", "qdq"), "fp32 + int8 encoder": ("fp32", "int8", "qdq"),
           "fp32 + int4 encoder": ("fp32", "int4", "qdq"), "int8 + int8 encoder": ("int8", "int8", "qdq"),
           "int8 integer + int8 encoder": ("int8", "int8", "integer"),
           "fp16 + fp16 encoder": ("fp16", "fp16", "qdq"), "bf16 + bf16 encoder": ("bf16", "bf16", "qdq")}


def run_images(generate, scenes, seed: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    images = np.stack([generate(sc.caption, seed + i) for i, sc in enumerate(scenes)])
    return images, (time.perf_counter() - t0) / len(scenes)


def table(result: dict) -> str:
    kinds = [k for k in KINDS if k in result["reference"]["scores"]]
    head = ["build", "graphs MB", "PSNR dB (min)", "SSIM", "overall", *kinds, "agrees with FP32 ref"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = result["reference"]["scores"]
    lines.append("| PyTorch FP32 (reference) | - | - | - | " + f"{ref['all']['accuracy']:.1%} | "
                 + " | ".join(f"{ref[k]['accuracy']:.1%}" for k in kinds) + " | - |")
    for p, r in result["precisions"].items():
        s = r["scores"]
        lines.append(f"| ONNX Runtime {p} | {sum(r['bytes'].values()) / 1e6:.0f} | {r['mean_psnr_db']:.1f} "
                     f"({r['min_psnr_db']:.1f}) | {r['mean_ssim']:.4f} | "
                     f"{s['all']['accuracy']:.1%} | " + " | ".join(f"{s[k]['accuracy']:.1%}" for k in kinds)
                     + f" | {r['agreement']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the miniature's model folder (lidit-export init --preset mini)")
    ap.add_argument("--builds", required=True, help="folder for the builds (BUILDS/mini-<precision>)")
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--num", type=int, default=100, help="held-out captions")
    ap.add_argument("--builds-to-run", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="BUILD",
                    help=f"of {', '.join(map(repr, CONFIGS))}")
    ap.add_argument("--seed", type=int, default=7, help="captions: the model folder's evaluation split uses 7")
    args = ap.parse_args()

    from lidit_export.stages import BuildOptions, build_pipeline
    from lidit_export.check.metrics import psnr, ssim
    from lidit_export.model.pipeline import GenerateRequest, LiDiTPipeline
    from lidit_export.toy.scenes import sample_scenes
    from lidit_runtime.pipeline import Pipeline

    scenes = sample_scenes(args.num, args.seed, "heldout")
    pipe = LiDiTPipeline.from_pretrained(args.model)
    cfg = pipe.config
    size = {"height": cfg.default_height, "width": cfg.default_width}
    steps, guidance = cfg.scheduler.default_steps, cfg.scheduler.default_cfg
    base_seed = 5000

    def reference(caption, seed):
        request = GenerateRequest([caption], steps=steps, cfg=guidance, seed=seed, **size)
        return pipe.generate(request).images[0]

    print(f"reference: PyTorch FP32, {args.num} held-out captions x {steps} steps ...", flush=True)
    ref_images, ref_seconds = run_images(reference, scenes, base_seed)
    ref_checks = [score_image(img, sc) for img, sc in zip(ref_images, scenes)]
    result = {"benchmark": "miniature_quantization", "model": cfg.name, "captions": args.num,
              "caption_seed": args.seed, "steps": steps, "cfg": guidance, "resolution": [size["height"], size["width"]],
              "environment": describe_environment(),
              "reference": {"backend": "torch fp32", "seconds_per_image": ref_seconds,
                            "scores": summarize(ref_checks)},
              "precisions": {}}
    previous = Path(args.results) / "miniature_quantization.json"
    if previous.exists():  # rows of builds not re-run here are kept when they answered the same question
        import json

        old = json.loads(previous.read_text())
        same = ("model", "captions", "caption_seed", "steps", "cfg", "resolution")
        if all(old.get(k) == result[k] for k in same):
            for name, row in old.get("precisions", {}).items():
                if name not in args.builds_to_run:
                    row.setdefault("measured", old.get("environment", {}).get("date"))
                    result["precisions"][name] = row
        result["precisions"] = {k: result["precisions"][k] for k in CONFIGS if k in result["precisions"]}
    for name in args.builds_to_run:
        precision, encoder_weights, kernels = CONFIGS[name]
        build = build_folder(args.builds, cfg.name, precision, encoder_weights, kernels)
        t0 = time.perf_counter()
        build_pipeline(args.model, build, BuildOptions(precision=precision, encoder_weights=encoder_weights,
                                                       int8_kernels=kernels, engines=None,
                                                       calibration_dir=str(Path(args.builds) / "calibration-cache")))
        build_seconds = time.perf_counter() - t0
        runtime = Pipeline.load(build)

        def fast(caption, seed, runtime=runtime):
            request = GenerateRequest([caption], steps=steps, cfg=guidance, seed=seed, **size)
            return runtime.generate(request).images[0]

        images, seconds = run_images(fast, scenes, base_seed)
        checks = [score_image(img, sc) for img, sc in zip(images, scenes)]
        same = [a.correct == b.correct for ca, cb in zip(checks, ref_checks) for a, b in zip(ca, cb)]
        psnrs = [min(psnr(a, b), 100.0) for a, b in zip(images, ref_images)]
        row = {"measured": result["environment"]["date"], "build_seconds": build_seconds, "seconds_per_image": seconds,
               "graphs": {n: r.precision + (f" ({r.weights} weights)" if r.weights else "")
                          for n, r in runtime.manifest.components.items()},
               "bytes": artifact_bytes(build, runtime.manifest),
               "emulated_bf16": getattr(runtime.backend, "emulated_bf16", []),
               "mean_psnr_db": float(np.mean(psnrs)), "min_psnr_db": float(np.min(psnrs)),
               "mean_ssim": float(np.mean([ssim(a, b) for a, b in zip(images, ref_images)])),
               "agreement": float(np.mean(same)), "scores": summarize(checks)}
        result["precisions"][name] = row
        result["precisions"] = {k: result["precisions"][k] for k in CONFIGS if k in result["precisions"]}
        print(f"{name}: PSNR {row['mean_psnr_db']:.1f} dB (min {row['min_psnr_db']:.1f}), SSIM "
              f"{row['mean_ssim']:.4f}, score {row['scores']['all']['accuracy']:.1%} (reference "
              f"{result['reference']['scores']['all']['accuracy']:.1%}), agreement {row['agreement']:.1%}", flush=True)
        out = Path(args.results)
        atomic_write_json(out / "miniature_quantization.json", result)  # after every precision: a kill keeps them
        atomic_write_text(out / "miniature_quantization.md", table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
