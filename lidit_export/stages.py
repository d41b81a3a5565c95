"""The stages of `lidit-export build`, in order: calibrate (quantized precisions: the reference sampler over
real prompts, cached) -> export (one ONNX graph per component, Q/DQ graphs for the quantized ones, half graphs
for fp16 / bf16) -> TensorRT engines (when a TensorRT is installed) -> the manifest, committed once -> a build
report. Each stage skips itself on matching input hashes, not on a file existing."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from lidit_runtime.manifest import Manifest
from lidit_runtime.precision import ENCODER_WEIGHTS, INT8_KERNELS, Precision

from .artifacts import atomic_write_text
from .build_folder import BuildFolder
from .engine.builder import EngineOptions, EngineRefused, EngineUnavailable, build_engines
from .errors import ConfigError
from .export.export_build import export_model
from .export.graph_spec import ShapeProfile
from .model.pipeline import LiDiTPipeline
from .quant.calibrate import CalibrationSettings, QuantizedComponent, calibrate, with_integer_kernel_weights
from .quant.prompts import load_prompts
from .quant.recipes import QuantRecipe


@dataclass
class BuildOptions:
    precision: Precision = Precision.FP32
    prompts_file: str | None = None  # default: calibration split of the model's prompts.jsonl, else the shipped set
    num_prompts: int | None = None  # default: the precision policy's (128 for fp8, 64 for int8)
    steps: int | None = None  # default: the model's production steps
    seed: int = 0
    smoothquant_alpha: float = 0.5
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns kept in high precision (recipe.extra_exclude)
    prefix_cache: bool = True
    encoder_weights: str = "fp32"  # fp32 | int8 | int4 (ONNX Runtime only) | fp16 | bf16 (whole graph): LLM encoders
    calibration_dir: str | None = None  # calibration cache; default BUILD/calibration (share one between builds)
    int8_kernels: str = "qdq"  # INT8 only. qdq: 127-level weights, exact Q/DQ at ONNX Runtime's BASIC level (and
    # TensorRT); integer: 63-level weights, run by ONNX Runtime's fused integer kernels (exact without VNNI)
    profile: ShapeProfile = field(default_factory=ShapeProfile)
    engines: EngineOptions | None = field(default_factory=EngineOptions)  # None: stop after the ONNX stages

    def validate(self) -> "BuildOptions":
        self.precision = Precision.parse(self.precision, "precision")
        for name in ("num_prompts", "steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be an integer >= 1 (None: the default)", name)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be an integer >= 0", "seed")
        if self.encoder_weights not in ENCODER_WEIGHTS:
            raise ConfigError(f"encoder_weights={self.encoder_weights!r} is unknown; use one of "
                              f"{', '.join(ENCODER_WEIGHTS)}", "encoder_weights")
        if self.calibration_dir is not None and Path(self.calibration_dir).exists() and not Path(self.calibration_dir).is_dir():
            raise ConfigError(f"calibration_dir={str(self.calibration_dir)!r} is not a folder; name a folder (it is "
                              "created if missing)", "calibration_dir")
        if self.int8_kernels not in INT8_KERNELS:
            raise ConfigError(f"int8_kernels={self.int8_kernels!r} is unknown; use one of {', '.join(INT8_KERNELS)}",
                              "int8_kernels")
        if self.int8_kernels != "qdq" and self.precision is not Precision.INT8:
            raise ConfigError(f"int8_kernels={self.int8_kernels!r} applies to --precision int8 only (got "
                              f"{self.precision}); drop --int8-kernels", "int8_kernels")
        self.profile.validate()
        return self


def build_pipeline(model_dir: str | Path, build_dir: str | Path, options: BuildOptions, progress=print) -> Manifest:
    """Every stage into `build_dir` as one transaction (build_folder.BuildFolder): the folder is locked, the
    manifest replaced once at the end, and a killed build leaves the previous one usable and resumable."""
    from .families.reference import load_reference

    options.validate()
    model_dir, build_dir = Path(model_dir), Path(build_dir)
    pipe = load_reference(model_dir, profile=options.profile)
    with BuildFolder(build_dir) as folder:
        return _build(pipe, model_dir, folder, options, progress)


def _export(pipe, model_dir: Path, folder: BuildFolder, options: BuildOptions, quantized: dict, progress) -> Manifest:
    """The export stage of either kind of model folder: lidit-export's own, or a diffusers family checkpoint."""
    from .families.build import export_family
    from .families.reference import FamilyReference

    if isinstance(pipe, FamilyReference):
        return export_family(model_dir, folder, options.profile, progress, loaded=(pipe.family, pipe.pipe),
                             quantized=quantized, precision=options.precision, encoder_weights=options.encoder_weights)
    return export_model(model_dir, folder.path, options.profile, options.prefix_cache, pipe, progress,
                        quantized=quantized, precision=options.precision, folder=folder,
                        encoder_weights=options.encoder_weights)


def _build(pipe: LiDiTPipeline, model_dir: Path, folder: BuildFolder, options: BuildOptions, progress) -> Manifest:
    build_dir = folder.path
    precision, policy = options.precision, options.precision.policy
    started = time.perf_counter()
    report: dict = {"precision": precision.value, "model": str(model_dir), "stages": {}}
    quantized: dict[str, QuantizedComponent] = {}
    if policy.calibrated is not None:
        recipe = QuantRecipe(policy.calibrated, smoothquant_alpha=options.smoothquant_alpha,
                             extra_exclude=list(options.exclude)).validate()
        prompts = load_prompts(options.prompts_file, split="calibration", model_dir=model_dir)
        count = policy.calibration_prompts if options.num_prompts is None else options.num_prompts
        default_steps, cfg, height, width = pipe.defaults
        steps = default_steps if options.steps is None else options.steps
        settings = CalibrationSettings(prompts=prompts[:count], steps=steps,
                                       cfg=cfg, seed=options.seed, height=height, width=width)
        t0 = time.perf_counter()
        cache = Path(options.calibration_dir) if options.calibration_dir else build_dir / "calibration"
        quantized = calibrate(pipe, model_dir, recipe, settings, cache, progress)
        if options.int8_kernels == "integer":
            quantized = {c: with_integer_kernel_weights(q) for c, q in quantized.items()}
        report["stages"]["calibrate"] = {"seconds": time.perf_counter() - t0, "prompts": len(settings.prompts),
                                         "steps": settings.steps, "reused": all(q.from_cache for q in quantized.values())}
        report["recipe"] = recipe.to_dict()
        for c, q in quantized.items():
            attention = f", FP8 attention in {len(q.plan.attention)} modules" if q.plan.attention else ""
            progress(f"  {c}: {len(q.plan.quantized)} linear layers quantized to {precision}, "
                     f"{len(q.plan.excluded)} kept in high precision{attention}")
            reasons: dict[str, list[str]] = {}
            for layer, why in q.plan.excluded.items():
                reasons.setdefault(why, []).append(layer)
            for why, layers in reasons.items():
                progress(f"    kept ({why}): {', '.join(layers[:4])}{' ...' if len(layers) > 4 else ''}")
    t0 = time.perf_counter()
    manifest = _export(pipe, model_dir, folder, options, quantized, progress)
    report["stages"]["export"] = {"seconds": time.perf_counter() - t0}
    report["components"] = {}
    for name, rec in manifest.components.items():
        plan = quantized[name].plan if name in quantized else None
        files = (build_dir / rec.file).parent.glob(Path(rec.file).name + "*")  # the graph and its external data
        report["components"][name] = {
            "precision": rec.precision, "file": rec.file, "bytes": sum(f.stat().st_size for f in files),
            "quantized_layers": len(plan.quantized) if plan else 0, "excluded_layers": plan.excluded if plan else {},
            "fp8_attention": plan.attention if plan else []}
    if options.engines is not None:
        _engine_stage(folder, manifest, options.engines, report, progress)
    folder.commit(manifest)
    report["seconds"] = time.perf_counter() - started
    atomic_write_text(build_dir / "build_report.json", json.dumps(report, indent=2) + "\n")
    return manifest


def _engine_stage(folder: BuildFolder, manifest: Manifest, options: EngineOptions, report: dict, progress) -> None:
    """TensorRT engines; with --target auto and no TensorRT at all, the build ends after the ONNX stages."""
    build_dir = folder.path
    t0 = time.perf_counter()
    try:
        result = build_engines(folder, manifest, options, progress)
    except (EngineUnavailable, EngineRefused) as e:
        if options.target != "auto":
            raise
        report["stages"]["engines"] = {"skipped": str(e)}
        progress(f"{e}. The build stopped after the ONNX stages: {build_dir}/onnx holds the graphs and "
                 f"{build_dir}/manifest.json describes them; run them with `lidit-export generate --backend "
                 f"onnxruntime --build {build_dir} --prompt \"...\"`")
        return
    manifest.engines = result["engines"]
    report["stages"]["engines"] = {"seconds": time.perf_counter() - t0, **result["target"]}
    for name, r in result["report"].items():
        report["components"][name].update({f"engine_{k}": v for k, v in r.items()})
        report["components"][name]["engine_file"] = manifest.engines[name].file
