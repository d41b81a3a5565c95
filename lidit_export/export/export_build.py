"""`lidit-export export`: model folder -> BUILD/{onnx/*.onnx, tokenizers/, manifest.json}.

A graph is re-exported only when its input key changes: the hash of its weights, the pipeline config,
its graph spec and the exporter settings. Files are named after their key and the manifest is replaced
once at the end (`build_folder.BuildFolder`): a killed export leaves the previous build usable and the
next run redoes only what is missing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from lidit_runtime.manifest import FORMAT, ComponentRecord, EncoderRecord, Manifest, file_sha256
from lidit_runtime.precision import HALF_ENCODERS, Precision

from .. import __version__
from ..build_folder import BuildFolder
from ..components import Component, components, encoder
from ..model.pipeline import LiDiTPipeline
from .graph_passes import PASSES_REVISION
from .graph_spec import ShapeProfile, graph_specs
from .onnx_export import (OPSET, check_exported_io, check_half_drift, component_inputs, component_modules,
                          copy_tokenizers, export_graph)


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


def input_key(model_dir: Path, config, comp: Component, spec, prefix_cache: bool) -> str:
    """Hash of everything a graph is made from: its part of the config, its spec, the exporter, its weights."""
    h = hashlib.sha256()
    h.update(json.dumps({"config": comp.config_slice(config), "spec": spec.to_dict(), "opset": OPSET,
                         "exporter": "torchscript", "lidit-export": __version__, "passes": PASSES_REVISION,
                         "prefix_cache": prefix_cache and comp.llm is not None}, sort_keys=True).encode())
    for f in comp.source_files(model_dir, config):
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def graph_weights(comp, encoder_weights: str) -> str | None:
    """What a component's graph is exported with beyond its precision: an LLM encoder's --encoder-weights when
    not fp32 (int8 / int4 blocks, or fp16 / bf16 for the whole graph), else None (every other graph keeps its
    precision's weights)."""
    return encoder_weights if comp.llm is not None and encoder_weights != "fp32" else None


def export_component(folder: BuildFolder, name: str, spec, key: str, module, sample, precision: Precision,
                     calibration: str | None, half: bool, progress, weights: str | None = None,
                     ort_optimization: str | None = None) -> ComponentRecord:
    """One graph of a build: reused when its key matches, else traced from `module` on `sample()` (called only
    then) into a file named after the key. calibration: the calibration key of a quantized module (the graph
    is then `precision` Q/DQ); half: converted to the half precision; weights: "int8" / "int4" block-quantized
    weights for ONNX Runtime, or "fp16" / "bf16" for the whole graph (an encoder's --encoder-weights);
    ort_optimization: the manifest's ONNX Runtime level for this graph (None: its precision's)."""
    graph_precision = precision if calibration is not None or half else Precision.FP32
    half_encoder = weights in HALF_ENCODERS  # an encoder's whole graph in FP16 / BF16: a precision, not a weight format
    if half_encoder:
        graph_precision, precision, half, weights = Precision(weights), Precision(weights), True, None
    if calibration is not None:  # the calibration key covers the recipe, settings and weights
        key = hashlib.sha256(f"{key}:{precision}:{calibration}".encode()).hexdigest()
    elif half:
        key = hashlib.sha256(f"{key}:{precision}".encode()).hexdigest()
    if weights is not None:
        key = hashlib.sha256(f"{key}:weights-{weights}".encode()).hexdigest()
    label = f"{graph_precision}" + (f", {weights} weights" if weights else "")
    old = folder.reusable_component(name, key)
    if old is not None:
        progress(f"  {name} ({label}): up to date")
        return old
    progress(f"  {name} ({label}): exporting ...")
    file = f"onnx/{name}-{key[:16]}.onnx"  # named after its key: the graph of the build in place stays
    inputs = sample()
    digest = export_graph(module, spec, inputs, folder.path / file, precision=graph_precision, weights=weights)
    check_exported_io(folder.path / file, spec)
    if half_encoder:
        drift = check_half_drift(folder.path / file, spec, module, inputs, graph_precision)
        progress(f"  {name} ({label}): relative error {drift:.2g} against FP32 on the export sample")
    data = folder.path / (file + ".data")
    record = ComponentRecord(
        name=name, file=file, sha256=digest, precision=graph_precision.value,
        ort_optimization=ort_optimization or graph_precision.policy.ort_optimization,
        inputs=[asdict(t) for t in spec.inputs], outputs=[asdict(t) for t in spec.outputs],
        dims={k: list(v) for k, v in spec.dims.items()}, derived_dims=spec.derived_dims, input_key=key,
        data_file=file + ".data" if data.exists() else None,
        data_sha256=file_sha256(data) if data.exists() else None, weights=weights)
    folder.add_component(record)
    return record


def export_model(model_dir: str | Path, build_dir: str | Path, profile: ShapeProfile | None = None,
                 prefix_cache: bool = True, pipe: LiDiTPipeline | None = None, progress=print,
                 quantized: dict | None = None, precision: Precision = Precision.FP32,
                 folder: BuildFolder | None = None, encoder_weights: str = "fp32") -> Manifest:
    """Export every component. prefix_cache (default on) bakes each LLM's constant prefix into its
    encoder graph, which then runs the caption tokens only. quantized: component -> Calibrated
    (from quant.calibrate) exported as `precision` Q/DQ graphs in place of the FP32 ones.
    folder: an open BuildFolder of a larger build, which commits the manifest itself; without it the
    folder is locked here and the manifest committed at the end. encoder_weights: fp32, or int8 / int4
    block-quantized LLM encoder graphs for ONNX Runtime."""
    if folder is None:
        with BuildFolder(build_dir) as own:
            manifest = export_model(model_dir, build_dir, profile, prefix_cache, pipe, progress, quantized, precision, own,
                                    encoder_weights)
            own.commit(manifest)
            return manifest
    quantized = quantized or {}
    precision = Precision(precision)
    model_dir, build_dir = Path(model_dir), Path(build_dir)
    pipe = pipe or LiDiTPipeline.from_pretrained(model_dir)
    config = pipe.config
    specs = graph_specs(config, profile, prefix_cache)
    opt = [specs["refiner"].dims[f"text_len_{i}"][1] for i in range(len(config.encoders))]
    latent = specs["dit"].dims["latent_height"][1]
    sample = component_inputs(pipe, batch=2, text_lengths=opt, latent_hw=(latent, latent))
    modules = component_modules(pipe, prefix_cache, {c: q.module for c, q in quantized.items()})
    prefixes = config.refiner.prefix_lengths
    if prefix_cache:  # cached encoder graphs are traced on caption tokens only
        for i, p in enumerate(prefixes):
            name = encoder(i).name
            sample[name] = {k: v[:, p:] for k, v in sample[name].items()}
    records = {}
    for comp in components(config):
        name = comp.name
        records[name] = export_component(
            folder, name, specs[name], input_key(model_dir, config, comp, specs[name], prefix_cache), modules[name],
            lambda name=name: sample[name], precision, quantized[name].key if name in quantized else None,
            precision.policy.half and comp.half_convertible, progress,
            weights=graph_weights(comp, encoder_weights),
            ort_optimization=quantized[name].ort_optimization if name in quantized else None)
    tokenizers = copy_tokenizers(pipe, build_dir)
    previous = folder.previous.engines if folder.previous else {}
    manifest = Manifest(
        format=FORMAT, model_name=config.name, latent_channels=config.vae.latent_channels,
        vae_scale_factor=config.vae.scale_factor, patch_size=config.transformer.patch_size,
        default_height=config.default_height, default_width=config.default_width,
        scheduler=asdict(config.scheduler),
        encoders=[EncoderRecord(f, digest, e.prefix_text, e.suffix_text, e.caption_separator, e.max_length,
                                e.pad_token_id, prefixes[i], prefix_cache)
                  for i, ((f, digest), e) in enumerate(zip(tokenizers, config.encoders))],
        components=records, tool_versions=tool_versions(),
        # engines of graphs that did not change stay; the engine stage decides which are still valid
        engines={n: e for n, e in previous.items() if n in records and e.onnx_sha256 == records[n].sha256})
    return manifest
