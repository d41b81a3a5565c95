"""Quality report of a quantized build: component errors vs FP32, DiT per-layer sensitivity, and final
images over the held-out evaluation prompts (PSNR/SSIM vs the FP32 PyTorch reference)."""
from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lidit_runtime.pipeline import GenerateRequest, Pipeline
from lidit_runtime.precision import Precision

from ..artifacts import atomic_write_bytes, atomic_write_text
from ..model.pipeline import LiDiTPipeline
from ..quant.prompts import load_prompts
from .metrics import psnr, ssim
from ..export.graph_spec import ShapeProfile
from .parity import THRESHOLDS, check_components, parity_shapes


def evaluate_images(pipe: LiDiTPipeline, runtime: Pipeline, prompts: list[str], steps: int, seed: int):
    """Build vs reference images; for a diffusers checkpoint the reference image is the diffusers pipeline's."""
    rows, pairs = [], []
    m = runtime.manifest
    for i, prompt in enumerate(prompts):
        request = GenerateRequest([prompt], steps=steps, seed=seed + i).with_defaults(  # the build's cfg and size
            runtime.scheduler, m.default_height, m.default_width, runtime.chain)
        if pipe.family_name is not None:
            from ..families.parity import diffusers_image

            ref = diffusers_image(pipe, request)
        else:
            ref = pipe.generate(request).images[0]
        out = runtime.generate(request).images[0]
        rows.append({"prompt": prompt, "psnr_db": min(psnr(out, ref), 100.0), "ssim": ssim(out, ref),
                     "pixel_std": float(out.std())})
        pairs.append((ref, out))
    return rows, pairs


def quality_report(model_dir: str | Path, build_dir: str | Path, num_eval: int = 8, steps: int | None = None,
                   sensitivity_prompts: int = 2, seed: int = 1000, progress=print) -> dict:
    from ..quant.sensitivity import dit_sensitivity, record_dit_inputs

    build_dir = Path(build_dir)
    out_dir = build_dir / "report"
    from ..families.reference import load_reference

    runtime = Pipeline.load(build_dir)
    m = runtime.manifest
    pipe = load_reference(model_dir, profile=ShapeProfile(max_image=max(m.default_height, m.default_width)))
    precision = runtime.manifest.components["dit"].precision
    steps = pipe.defaults[0] if steps is None else steps
    progress(f"quality report for a {precision} build: components ...")
    if pipe.family_name is not None:
        from ..families.parity import component_rows

        components = component_rows(pipe, runtime, THRESHOLDS)
    else:
        components = check_components(pipe, runtime, parity_shapes(runtime.manifest, pipe.config))
    summary = {}
    for row in components:
        key = f"{row['component']}.{row['output']}"
        s = summary.setdefault(key, {"precision": row["precision"], "worst_rel_l2": 0.0, "min_cosine": 1.0})
        s["worst_rel_l2"] = max(s["worst_rel_l2"], row["rel_l2"])
        s["min_cosine"] = min(s["min_cosine"], row["cosine"])
    progress(f"  held-out images: {num_eval} evaluation prompts x {steps} steps ...")
    prompts = load_prompts(split="evaluation", model_dir=model_dir)[:num_eval]
    images, pairs = evaluate_images(pipe, runtime, prompts, steps, seed)
    sensitivity = []
    if precision in Precision.calibrated_ones():
        progress("  DiT per-layer sensitivity ...")
        calibration = load_prompts(split="calibration", model_dir=model_dir)[:sensitivity_prompts]
        inputs = record_dit_inputs(pipe, calibration, steps, every=max(1, steps // 5))
        sensitivity = dit_sensitivity(pipe, precision, inputs)
    psnrs = [r["psnr_db"] for r in images]
    report = {
        "precision": precision,
        "reference": "the diffusers pipeline" if pipe.family_name is not None else "the FP32 PyTorch reference",
        "thresholds": asdict(Precision(precision).policy.thresholds), "components": summary,
        "images": {"prompts": len(images), "steps": steps, "mean_psnr_db": float(np.mean(psnrs)),
                   "min_psnr_db": float(np.min(psnrs)), "mean_ssim": float(np.mean([r["ssim"] for r in images])),
                   "per_prompt": images},
        "sensitivity": sensitivity,
        "manifest_precisions": {n: r.precision for n, r in runtime.manifest.components.items()},
    }
    atomic_write_text(out_dir / "quality.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "quality.md", render_markdown(report))
    atomic_write_bytes(out_dir / "quality.png", image_grid(pairs[:4]))
    return report


def render_markdown(report: dict) -> str:
    lines = [f"# Quality report: {report['precision']} build vs {report.get('reference', 'the FP32 PyTorch reference')}", "",
             "| component output | precision | worst rel L2 | min cosine |", "|---|---|---|---|"]
    for key, s in report["components"].items():
        lines.append(f"| {key} | {s['precision']} | {s['worst_rel_l2']:.2e} | {s['min_cosine']:.6f} |")
    im = report["images"]
    lines += ["", f"Held-out images ({im['prompts']} evaluation prompts, {im['steps']} steps): mean PSNR "
                  f"{im['mean_psnr_db']:.2f} dB (min {im['min_psnr_db']:.2f}), mean SSIM {im['mean_ssim']:.4f}; "
                  f"threshold {report['thresholds']['image_psnr_db']} dB.", ""]
    if report["sensitivity"]:
        lines += ["DiT per-layer sensitivity (output rel L2 with only that layer quantized), top 15:", "",
                  "| rank | layer | rel L2 | kept in high precision by the recipe |", "|---|---|---|---|"]
        for r in report["sensitivity"][:15]:
            lines.append(f"| {r['rank']} | {r['layer']} | {r['rel_l2']:.2e} | {r['reason'] or '-'} |")
    return "\n".join(lines) + "\n"


def image_grid(pairs) -> bytes:
    """Rows of (reference | build | |diff| x10) for up to four prompts, as PNG bytes."""
    from PIL import Image

    rows = [np.concatenate([r, o, np.clip(np.abs(o.astype(np.int16) - r) * 10, 0, 255).astype(np.uint8)], axis=1)
            for r, o in pairs]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buf, format="PNG")
    return buf.getvalue()
