"""Issue 6: TensorRT engines built by TensorRT for RTX on this CPU; cache, manifest, refusals.

Running engines needs a GPU with TensorRT; those tests skip with the reason when either is missing."""
import importlib.util
import json
import shutil

import numpy as np
import pytest

from lidit_export.stages import BuildOptions, build_pipeline
from lidit_export.engine.builder import EngineOptions, EngineRefused, EngineUnavailable
from lidit_runtime.errors import ArtifactError
from lidit_runtime.manifest import check_engines, load_manifest

from helpers import needs_smollm2
from helpers import graph_file

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="TensorRT for RTX not installed: pip install tensorrt-rtx")
COMPONENTS = {"encoder_0", "encoder_1", "refiner", "dit", "vae_decoder"}


def build(model, out, precision="fp32", **engine):
    options = BuildOptions(precision=precision, num_prompts=2, steps=2, engines=EngineOptions(**engine))
    logs = []
    manifest = build_pipeline(model, out, options, progress=logs.append)
    return manifest, logs


@pytest.fixture(scope="module")
def fp32_build(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "fp32"
    manifest, _ = build(tiny_folder, out, target="trt-rtx")
    return out, manifest


def test_engines_for_every_component_with_a_complete_manifest(fp32_build):
    out, manifest = fp32_build
    assert set(manifest.engines) == COMPONENTS
    import tensorrt_rtx

    for name, rec in manifest.engines.items():
        assert rec.target == "trt-rtx" and rec.tensorrt_version == tensorrt_rtx.__version__
        assert rec.compute_capability == "8.9" and rec.precision == "fp32"
        assert rec.onnx_sha256 == manifest.components[name].sha256 and len(rec.key) == 64
        assert rec.dims == manifest.components[name].dims
        assert (out / rec.file).stat().st_size > 10_000
    # the saved manifest has them too, and the report lists engine sizes and times
    assert set(load_manifest(out).engines) == COMPONENTS
    report = json.loads((out / "build_report.json").read_text())
    assert all(report["components"][c]["engine_bytes"] > 0 for c in COMPONENTS)
    check_engines(load_manifest(out), out, "trt-rtx", tensorrt_rtx.__version__, "8.9")


def test_second_build_is_a_no_op_and_a_dit_profile_rebuilds_only_the_dit(fp32_build, tiny_folder):
    out, first = fp32_build
    mtimes = {n: (out / r.file).stat().st_mtime_ns for n, r in first.engines.items()}
    _, logs = build(tiny_folder, out, target="trt-rtx")
    assert not any("building" in line for line in logs)
    assert {n: (out / r.file).stat().st_mtime_ns for n, r in load_manifest(out).engines.items()} == mtimes
    manifest, logs = build(tiny_folder, out, target="trt-rtx", profiles={"dit": {"latent_height": [4, 8, 32]}})
    assert [line.split()[0] for line in logs if "building" in line] == ["dit"]
    assert manifest.engines["dit"].dims["latent_height"] == [4, 8, 32]
    changed = {n for n, r in manifest.engines.items() if (out / r.file).stat().st_mtime_ns != mtimes[n]}
    assert changed == {"dit"}


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp8", "int8-wo"])
def test_quantized_and_half_graphs_build(tiny_folder, tmp_path, precision):
    manifest, _ = build(tiny_folder, tmp_path / precision, precision, target="trt-rtx")
    assert set(manifest.engines) == COMPONENTS
    assert manifest.engines["dit"].precision == precision and manifest.engines["encoder_0"].precision == "fp32"


def test_int8_weight_only_graph_keeps_weights_quantized_only(tiny_folder, tmp_path):
    import onnx

    build(tiny_folder, tmp_path / "wo", "int8-wo", target="trt-rtx")
    graph = onnx.load(str(graph_file(tmp_path / "wo", "dit"))).graph
    weights = {t.name for t in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(n.input[0] in weights for n in dq)
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear"]


def test_refusals(tiny_folder, tmp_path, fp32_build):
    with pytest.raises(EngineRefused, match="weight-only"):
        build(tiny_folder, tmp_path / "int8", "int8", target="trt-rtx")
    with pytest.raises(EngineRefused, match="8.9 or newer"):
        build(tiny_folder, tmp_path / "fp8", "fp8", target="trt-rtx", compute_capability="8.6")
    with pytest.raises(Exception, match="cannot target compute capability 9.0"):
        build(tiny_folder, tmp_path / "h100", target="trt-rtx", compute_capability="9.0")
    # --target auto keeps the ONNX build and says why there are no engines
    manifest, logs = build(tiny_folder, tmp_path / "int8auto", "int8", target="auto")
    assert not manifest.engines and any("weight-only" in line for line in logs)


def test_no_tensorrt_stops_after_the_onnx_stages(tiny_folder, tmp_path, monkeypatch):
    import lidit_export.engine.builder as builder

    monkeypatch.setattr(builder, "TARGETS", {"trt": "no_such_tensorrt", "trt-rtx": "no_such_tensorrt_rtx"})
    manifest, logs = build(tiny_folder, tmp_path / "none", target="auto")
    assert not manifest.engines and set(manifest.components) == COMPONENTS
    assert any("stopped after the ONNX stages" in line and "--backend onnxruntime" in line for line in logs)
    with pytest.raises(EngineUnavailable, match="no TensorRT installed"):
        build(tiny_folder, tmp_path / "none", target="trt")


def test_tampered_engine_and_other_versions_are_refused(fp32_build, tmp_path):
    src, _ = fp32_build
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    manifest = load_manifest(out)
    version = manifest.engines["dit"].tensorrt_version
    with pytest.raises(ArtifactError, match=r"built by trt-rtx .*, this is trt-rtx 9.9; rebuild with `lidit-export build"):
        check_engines(manifest, out, "trt-rtx", "9.9", "8.9")
    with pytest.raises(ArtifactError, match="built by trt-rtx .*, this is trt 10"):
        check_engines(manifest, out, "trt", "10.13", "8.9")
    with pytest.raises(ArtifactError, match="built for compute capability 8.9, this GPU is 12.0"):
        check_engines(manifest, out, "trt-rtx", version, "12.0")
    engine = out / manifest.engines["dit"].file
    engine.write_bytes(engine.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="does not match its manifest hash .* rebuild with"):
        check_engines(manifest, out, "trt-rtx", version, "8.9")


def _gpu_with_tensorrt() -> str | None:
    """Why the TensorRT backend cannot run here, or None when it can."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (the TensorRT backend's device memory)"
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no GPU"
    except cupy.cuda.runtime.CUDARuntimeError:
        return "no CUDA driver / GPU"
    if importlib.util.find_spec("tensorrt") is None:
        return "full TensorRT is not installed (TensorRT for RTX engines need an RTX GPU)"
    return None


@pytest.mark.skipif(_gpu_with_tensorrt() is not None, reason=str(_gpu_with_tensorrt()))
def test_tensorrt_backend_matches_onnxruntime(tiny_folder, tmp_path):
    from lidit_runtime.pipeline import Pipeline

    build(tiny_folder, tmp_path / "gpu", target="trt")
    reference = Pipeline.load(tmp_path / "gpu").generate("a red circle", steps=4, seed=1).images[0].astype(float)
    trt = Pipeline.load(tmp_path / "gpu", backend="tensorrt")
    # first call eager (warm-up), second captures the loop as a CUDA graph and replays it, third replays
    runs = [trt.generate("a red circle", steps=4, seed=1) for _ in range(3)]
    assert len(trt.backend._graphs) == 1
    assert np.array_equal(runs[0].latents, runs[1].latents) and np.array_equal(runs[1].latents, runs[2].latents)
    other = trt.generate("a red circle", steps=4, seed=2)  # same shapes, new noise: the graph replays it
    assert len(trt.backend._graphs) == 1 and not np.array_equal(other.latents, runs[2].latents)
    other_reference = Pipeline.load(tmp_path / "gpu").generate("a red circle", steps=4, seed=2).images[0]
    for ours, ref in ((runs[2].images[0], reference), (other.images[0], other_reference)):
        mse = ((ref.astype(float) - ours.astype(float)) ** 2).mean()
        assert mse < 255 ** 2 * 1e-4  # PSNR > 40 dB


@needs_smollm2
@pytest.mark.slow  # two minutes of engine builds; tiny covers every precision (above) and partial rebuilds
def test_smol_engines_for_every_precision_rebuild_only_what_changed(smol_folder, tmp_path):
    """smol (SmolLM2 + a second LLM): TensorRT for RTX engines from the FP32, FP16, BF16, FP8 and INT8
    weight-only graphs, built one after another into one folder: the encoders and the VAE stay FP32 in
    every precision, so after the first build only the refiner and the DiT are rebuilt."""
    out = tmp_path / "smol"
    manifest, logs = build(smol_folder, out, target="trt-rtx")
    assert set(manifest.engines) == COMPONENTS and all((out / r.file).stat().st_size > 0
                                                        for r in manifest.engines.values())
    fixed = {n: (out / manifest.engines[n].file).stat().st_mtime_ns for n in ("encoder_0", "encoder_1", "vae_decoder")}
    for precision in ("fp16", "bf16", "fp8", "int8-wo"):
        manifest, logs = build(smol_folder, out, precision, target="trt-rtx")
        assert sorted(line.split()[0] for line in logs if "building" in line) == ["dit", "refiner"], precision
        assert set(manifest.engines) == COMPONENTS
        assert {n: r.precision for n, r in manifest.engines.items() if n in ("refiner", "dit")} == {
            "refiner": precision, "dit": precision}
        assert {n: (out / manifest.engines[n].file).stat().st_mtime_ns for n in fixed} == fixed
    report = json.loads((out / "build_report.json").read_text())
    dit = report["components"]["dit"]
    assert dit["precision"] == "int8-wo" and dit["engine_bytes"] > 0 and dit["quantized_layers"] > 0
