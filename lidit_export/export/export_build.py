"""`lidit-export export`: model folder -> BUILD/{onnx/*.onnx, tokenizers/, manifest.json}.

A graph is re-exported only when its input key changes: the hash of its weights, the pipeline config,
its graph spec and the exporter settings. A killed export leaves no partial graph (each file is moved
into place whole) and the next run redoes only what is missing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from lidit_runtime.manifest import FORMAT, MANIFEST, ComponentRecord, EncoderRecord, Manifest, file_sha256

from .. import __version__
from ..artifacts import atomic_write_text
from ..errors import ArtifactError
from ..model.pipeline import WEIGHTS, LiDiTPipeline
from .graph_spec import ShapeProfile, graph_specs
from .graph_passes import HALF_TYPES
from .onnx_export import OPSET, check_exported_io, component_inputs, component_modules, copy_tokenizers, export_graph


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"lidit-export": __version__}
    for pkg in ("torch", "transformers", "diffusers", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers",
                "nvidia-modelopt", "polygraphy", "tensorrt", "tensorrt-rtx"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


HALF_COMPONENTS = ("refiner", "dit")  # what --precision fp16 / bf16 converts (encoders and VAE stay FP32)


def _source_files(model_dir: Path, pipe: LiDiTPipeline, name: str) -> list[Path]:
    if name.startswith("encoder_"):
        folder = model_dir / pipe.config.encoders[int(name.split("_")[1])].path
        return sorted(folder.glob("*.safetensors")) + [folder / "config.json"]
    key = {"refiner": "refiner", "dit": "transformer", "vae_decoder": "vae"}[name]
    return [model_dir / WEIGHTS[key]]


def _component_config(config, name: str) -> dict:
    """The part of the pipeline config a graph depends on (so a DiT change never re-exports encoders)."""
    if name.startswith("encoder_"):
        i = int(name.split("_")[1])
        return {"encoder": asdict(config.encoders[i]), "prefix_length": config.refiner.prefix_lengths[i]}
    return asdict({"refiner": config.refiner, "dit": config.transformer, "vae_decoder": config.vae}[name])


def input_key(model_dir: Path, pipe: LiDiTPipeline, name: str, spec, prefix_cache: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"config": _component_config(pipe.config, name), "spec": spec.to_dict(), "opset": OPSET,
                         "exporter": "torchscript", "lidit-export": __version__,
                         "prefix_cache": prefix_cache and name.startswith("encoder_")}, sort_keys=True).encode())
    for f in _source_files(model_dir, pipe, name):
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def load_previous(build_dir: Path) -> Manifest | None:
    from lidit_runtime.manifest import load_manifest

    try:
        return load_manifest(build_dir, check_files=False)
    except ArtifactError:  # no or unreadable manifest: everything is redone
        return None


def export_model(model_dir: str | Path, build_dir: str | Path, profile: ShapeProfile | None = None,
                 prefix_cache: bool = True, pipe: LiDiTPipeline | None = None, progress=print,
                 quantized: dict | None = None, precision: str = "fp32") -> Manifest:
    """Export every component. prefix_cache (default on) bakes each LLM's constant prefix into its
    encoder graph, which then runs the caption tokens only. quantized: component -> Calibrated
    (from quant.calibrate) exported as `precision` Q/DQ graphs in place of the FP32 ones."""
    quantized = quantized or {}
    model_dir, build_dir = Path(model_dir), Path(build_dir)
    pipe = pipe or LiDiTPipeline.from_pretrained(model_dir)
    config = pipe.config
    specs = graph_specs(config, profile, prefix_cache)
    old_manifest = load_previous(build_dir)
    previous = old_manifest.components if old_manifest else {}
    opt = [specs["refiner"].dims[f"text_len_{i}"][1] for i in range(len(config.encoders))]
    latent = specs["dit"].dims["latent_height"][1]
    sample = component_inputs(pipe, batch=2, text_lengths=opt, latent_hw=(latent, latent))
    modules = component_modules(pipe, prefix_cache, {c: q.module for c, q in quantized.items()})
    prefixes = config.refiner.prefix_lengths
    if prefix_cache:  # cached encoder graphs are traced on caption tokens only
        for i, p in enumerate(prefixes):
            sample[f"encoder_{i}"] = {k: v[:, p:] for k, v in sample[f"encoder_{i}"].items()}
    records = {}
    for name, spec in specs.items():
        key = input_key(model_dir, pipe, name, spec, prefix_cache)
        half = precision in HALF_TYPES and name in HALF_COMPONENTS
        graph_precision = precision if name in quantized or half else "fp32"
        if name in quantized:  # the calibration key covers the recipe, settings and weights
            key = hashlib.sha256(f"{key}:{precision}:{quantized[name].key}".encode()).hexdigest()
        elif half:
            key = hashlib.sha256(f"{key}:{precision}".encode()).hexdigest()
        file = f"onnx/{name}.onnx"
        old = previous.get(name)
        if old and old.input_key == key and (build_dir / file).exists() and file_sha256(build_dir / file) == old.sha256:
            progress(f"  {name} ({graph_precision}): up to date")
            records[name] = old
            continue
        progress(f"  {name} ({graph_precision}): exporting ...")
        digest = export_graph(modules[name], spec, sample[name], build_dir / file, precision=graph_precision)
        check_exported_io(build_dir / file, spec)
        records[name] = ComponentRecord(
            name=name, file=file, sha256=digest, precision=graph_precision,
            # Q/DQ graphs run at ORT_ENABLE_BASIC: CPU INT8 is inexact at higher levels on AVX2-only CPUs.
            ort_optimization="basic" if name in quantized or half else "all",
            inputs=[asdict(t) for t in spec.inputs], outputs=[asdict(t) for t in spec.outputs],
            dims={k: list(v) for k, v in spec.dims.items()}, derived_dims=spec.derived_dims, input_key=key)
    tokenizer_files = copy_tokenizers(pipe, build_dir)
    manifest = Manifest(
        format=FORMAT, model_name=config.name, latent_channels=config.vae.latent_channels,
        vae_scale_factor=config.vae.scale_factor, patch_size=config.transformer.patch_size,
        default_height=config.default_height, default_width=config.default_width,
        scheduler=asdict(config.scheduler),
        encoders=[EncoderRecord(f, e.prefix_text, e.suffix_text, e.caption_separator, e.max_length, e.pad_token_id,
                                prefixes[i], prefix_cache)
                  for i, (f, e) in enumerate(zip(tokenizer_files, config.encoders))],
        components=records, tool_versions=tool_versions(),
        engines=old_manifest.engines if old_manifest else {})  # the engine stage decides which are still valid
    atomic_write_text(build_dir / MANIFEST, manifest.to_json())
    return manifest
