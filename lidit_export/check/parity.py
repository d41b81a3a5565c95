"""The parity ladder: per component -> per-step latent cosine along the trajectory -> final image.

Both sides get the same inputs: the same prompts, the same seed and host-drawn noise, the same
sampler (the shared chain); only the backend that executes the graphs differs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lidit_runtime.dependencies import require
from lidit_runtime.manifest import load_manifest
from lidit_runtime.pipeline import GenerateRequest, Pipeline
from lidit_runtime.precision import Precision

from ..artifacts import atomic_write_bytes, atomic_write_text
from ..components import component
from ..model.pipeline import LiDiTPipeline
from .metrics import psnr, ssim, tensor_errors

# The gates per precision live in the precision policy table (lidit_runtime.precision), each with its reason.
THRESHOLDS = {p.value: asdict(p.policy.thresholds) for p in Precision}
PIXEL_STD_FLOOR = 2.0  # a flat image means a dead pipeline, whatever it matches


@dataclass
class ParityReport:
    precision: str
    thresholds: dict
    components: list = field(default_factory=list)
    trajectory: dict = field(default_factory=dict)
    image: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def parity_shapes(manifest, config) -> list[dict]:
    """Three shapes per component: batch, text length and latent size all varied, including values
    strictly between the profile's min and max (not only at them)."""
    dims = manifest.components["dit"].dims
    lat_min, lat_opt, lat_max = dims["latent_height"]
    patch = config.transformer.patch_size
    mid = lat_min + ((lat_max - lat_min) // 2 // patch) * patch + patch
    shapes = []
    for batch, text_at, latent in ((1, 0.0, (lat_opt, lat_opt)), (3, 0.5, (mid, lat_min)), (2, 0.9, (lat_min, mid))):
        lengths = []
        for i in range(len(config.encoders)):
            lo, _, hi = manifest.components["refiner"].dims[f"text_len_{i}"]
            lengths.append(None if text_at == 0.0 else int(lo + (hi - lo) * text_at))
        shapes.append({"batch": batch, "text_lengths": lengths, "latent_hw": list(latent)})
    return shapes


def reference_case(modules: dict, manifest, name: str, inputs: dict[str, np.ndarray]):
    """(feeds of graph `name`, FP32 reference outputs as numpy) for full-prompt component inputs; a
    prefix-cached encoder graph takes the caption tokens only."""
    expected = modules[name](*(torch.from_numpy(v) for v in inputs.values()))
    expected = expected if isinstance(expected, tuple) else (expected,)
    llm = component(name).llm
    if llm is not None:
        inputs = manifest.encoders[llm].encoder_inputs(**inputs)
    return inputs, tuple(e.float().numpy() for e in expected)


@torch.inference_mode()
def check_components(pipe: LiDiTPipeline, runtime: Pipeline, shapes: list[dict]) -> list[dict]:
    """Each graph against the FP32 reference module; a graph passes at its own precision's threshold."""
    from ..export.onnx_export import component_inputs, component_modules

    modules = component_modules(pipe)
    rows = []
    for shape in shapes:
        feeds = component_inputs(pipe, shape["batch"], shape["text_lengths"], tuple(shape["latent_hw"]), seed=7)
        for name, inputs in feeds.items():
            graph_feeds, expected = reference_case(modules, runtime.manifest, name, inputs)
            actual = runtime.backend.run(name, graph_feeds)
            precision = runtime.manifest.components[name].precision
            limit = THRESHOLDS[precision]["component_rel_l2"]
            for out_name, a, e in zip(runtime.backend.output_names[name], actual, expected):
                errors = tensor_errors(a, e)
                rows.append({"component": name, "output": out_name, "precision": precision, "shape": list(a.shape),
                             "inputs": {k: list(v.shape) for k, v in inputs.items()}, **errors,
                             "limit": limit, "passed": errors["rel_l2"] <= limit})
    return rows


def run_parity(model_dir: str | Path, build_dir: str | Path, out_dir: str | Path | None = None,
               prompt: str = "a red circle to the left of a blue square", steps: int = 8, cfg: float = 5.0,
               seed: int = 0, height: int | None = None, width: int | None = None,
               pipe: LiDiTPipeline | None = None) -> ParityReport:
    """The ladder for one build; trajectory and image thresholds are those of the DiT's precision."""
    from ..families.reference import load_reference

    build_dir = Path(build_dir)
    out_dir = Path(out_dir or build_dir / "parity")
    pipe = pipe or load_reference(model_dir)
    runtime = Pipeline.load(build_dir)
    precision = runtime.manifest.components["dit"].precision
    limits = THRESHOLDS[precision]
    report = ParityReport(precision, limits)

    family = pipe.family_name is not None  # a diffusers checkpoint: its own graphs, and diffusers draws the image
    if family:
        from ..families.parity import component_rows

        report.components = component_rows(pipe, runtime, THRESHOLDS)
    else:
        report.components = check_components(pipe, runtime, parity_shapes(runtime.manifest, pipe.config))
    report.failures += [f"{r['component']}.{r['output']} at {r['inputs']}: rel_l2 {r['rel_l2']:.3g} > "
                        f"{r['limit']:.3g}" for r in report.components if not r["passed"]]

    request = GenerateRequest([prompt], steps=steps, cfg=cfg, seed=seed, height=height, width=width).with_defaults(
        runtime.scheduler, runtime.manifest.default_height, runtime.manifest.default_width, runtime.chain)
    ref = pipe.generate(request, keep_trajectory=True)
    out = runtime.generate(request, keep_trajectory=True)
    cosines = [tensor_errors(a, r)["cosine"] for a, r in zip(out.trajectory, ref.trajectory)]
    report.trajectory = {"steps": steps, "cfg": cfg, "seed": seed, "cosine_per_step": cosines,
                         "min_cosine": min(cosines)}
    if min(cosines) < limits["step_cosine"]:
        worst = int(np.argmin(cosines))
        report.failures.append(f"latent cosine {cosines[worst]:.6f} at step {worst} < {limits['step_cosine']}")

    a, r = out.images[0], ref.images[0]
    if family:
        from ..families.parity import diffusers_image

        r = diffusers_image(pipe, request)
    # PSNR of identical images is infinite; JSON has no infinity, so it is capped at 100 dB.
    report.image = {"psnr_db": min(psnr(a, r), 100.0), "ssim": ssim(a, r), "finite": bool(np.isfinite(out.latents).all()),
                    "pixel_std": float(a.std()), "reference_pixel_std": float(r.std()),
                    "resolution": [ref.request.height, ref.request.width], "prompt": prompt,
                    "reference": "the diffusers pipeline" if family else "the PyTorch reference"}
    if report.image["psnr_db"] < limits["image_psnr_db"]:
        report.failures.append(f"image PSNR {report.image['psnr_db']:.1f} dB < {limits['image_psnr_db']} dB")
    if report.image["ssim"] < limits["image_ssim"]:
        report.failures.append(f"image SSIM {report.image['ssim']:.4f} < {limits['image_ssim']}")
    if not report.image["finite"] or report.image["pixel_std"] < PIXEL_STD_FLOOR:
        report.failures.append(f"unhealthy image: finite={report.image['finite']}, pixel std "
                               f"{report.image['pixel_std']:.2f} (floor {PIXEL_STD_FLOOR})")

    write_report(report, out_dir, r, a)
    return report


def write_report(report: ParityReport, out_dir: Path, reference: np.ndarray, exported: np.ndarray) -> None:
    from PIL import Image

    data = {"passed": report.passed, "precision": report.precision, "thresholds": report.thresholds,
            "failures": report.failures, "image": report.image, "trajectory": report.trajectory,
            "components": report.components, "validated_shapes": validated_shapes(report)}
    atomic_write_text(out_dir / "parity.json", json.dumps(data, indent=2) + "\n")
    diff = np.abs(exported.astype(np.int16) - reference.astype(np.int16))
    diff = np.clip(diff * 10, 0, 255).astype(np.uint8)  # x10 so that small errors are visible
    strip = np.concatenate([reference, exported, diff], axis=1)
    import io

    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    atomic_write_bytes(out_dir / "parity.png", buf.getvalue())


def validated_shapes(report: ParityReport) -> dict:
    """component -> the input shapes its graph was checked at (what 'validated' means for a build). Parity
    writes them to its own report: a check never rewrites the build it checks."""
    shapes: dict = {}
    for row in report.components:
        shapes.setdefault(row["component"], set()).add(json.dumps(row["inputs"], sort_keys=True))
    return {name: [json.loads(s) for s in sorted(seen)] for name, seen in shapes.items()}


POLYGRAPHY_COMMAND = ("polygraphy run {graph} --onnxrt --load-inputs {inputs} --load-outputs {reference} "
                      "--atol 1e-4 --rtol 1e-3")


@torch.inference_mode()
def dump_polygraphy(model_dir: str | Path, build_dir: str | Path, out_dir: str | Path | None = None) -> list[str]:
    """Write each graph's inputs and PyTorch reference outputs in polygraphy's formats; returns the
    `polygraphy run` commands that compare ONNX Runtime (add --trt for TensorRT) against them."""
    require("polygraphy", "parity --polygraphy")
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    from ..export.onnx_export import component_inputs, component_modules

    build_dir = Path(build_dir)
    out_dir = Path(out_dir or build_dir / "parity" / "polygraphy")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = LiDiTPipeline.from_pretrained(model_dir)
    manifest = load_manifest(build_dir)
    shape = parity_shapes(manifest, pipe.config)[1]
    feeds = component_inputs(pipe, shape["batch"], shape["text_lengths"], tuple(shape["latent_hw"]), seed=7)
    modules = component_modules(pipe)
    commands = []
    for name, record in manifest.components.items():
        inputs, expected = reference_case(modules, manifest, name, feeds[name])
        outputs = {o["name"]: e for o, e in zip(record.outputs, expected)}
        inputs_file, reference_file = out_dir / f"{name}_inputs.json", out_dir / f"{name}_reference.json"
        save_json([inputs], str(inputs_file))
        RunResults([("torch-reference", [IterationResult(outputs, runner_name="torch-reference")])]).save(str(reference_file))
        commands.append(POLYGRAPHY_COMMAND.format(graph=build_dir / record.file, inputs=inputs_file,
                                                  reference=reference_file))
    return commands
