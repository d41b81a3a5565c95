"""Build FP8 and INT8 graphs of a model and write their quality reports as benchmark results.

    python benchmarks/quantization_quality.py --model models/smol --builds build --out benchmarks/results
    python benchmarks/quantization_quality.py --model models/z-image-tiny --builds build --max-image 96

The model is a lidit-export model folder or a diffusers checkpoint of a supported family (Z-Image, Lumina-2);
for those the held-out images are compared with the diffusers pipeline's own.

For each precision: `build` (reusing any up-to-date calibration and graphs under BUILDS/<name>-<precision>),
then the quality report (component errors vs FP32, DiT per-layer sensitivity, held-out image PSNR/SSIM),
saved with the hardware and versions to OUT/quality_<name>_<precision>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import describe_environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--builds", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--precisions", nargs="+", default=["fp8", "int8"])
    parser.add_argument("--num-eval", type=int, default=8)
    parser.add_argument("--max-image", type=int, default=None, help="largest side of the builds (and their default)")
    args = parser.parse_args()

    from lidit_export.artifacts import atomic_write_text
    from lidit_export.stages import BuildOptions, build_pipeline
    from lidit_export.check.quality import quality_report
    from lidit_export.config import PipelineConfig
    from lidit_export.export.graph_spec import ShapeProfile
    from lidit_export.families import family_of
    from lidit_export.families.build import read_index
    from lidit_export.model.pipeline import INDEX

    index = read_index(Path(args.model))
    if index is not None:  # a diffusers checkpoint: its folder's name (checked to be a supported family)
        family_of(index["_class_name"])
        name = Path(args.model).resolve().name
    else:
        name = PipelineConfig.from_json_file(Path(args.model) / INDEX).name
    for precision in args.precisions:
        build = Path(args.builds) / f"{name}-{precision}"
        build_pipeline(args.model, build, BuildOptions(precision=precision, profile=ShapeProfile(max_image=args.max_image),
                                                       engines=None))
        report = quality_report(args.model, build, num_eval=args.num_eval)
        build_report = json.loads((build / "build_report.json").read_text())
        result = {"benchmark": "quantization_quality", "model": name, "precision": precision,
                  "calibration": build_report["stages"].get("calibrate"), "recipe": build_report.get("recipe"),
                  "environment": describe_environment(), **report}
        out = Path(args.out) / f"quality_{name}_{precision}.json"
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        im = report["images"]
        print(f"{precision}: mean PSNR {im['mean_psnr_db']:.2f} dB (min {im['min_psnr_db']:.2f}), "
              f"SSIM {im['mean_ssim']:.4f} -> {out}")


if __name__ == "__main__":
    main()
