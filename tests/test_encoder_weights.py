"""--encoder-weights int8 / int4: the LLM encoder graphs with block-quantized weights for ONNX Runtime."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from lidit_runtime.errors import ArtifactError
from lidit_runtime.manifest import load_manifest
from lidit_runtime.pipeline import Pipeline


def ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

PROMPTS = ["a red circle to the left of a blue square", "two small cats on a sofa, photographed from above"]


def encoder_build(tiny_folder, tmp_path_factory, weights: str):
    """The tiny model's FP32 build with its encoders exported with --encoder-weights `weights`: (weights, folder)."""
    from lidit_export.export.export_build import export_model

    build = tmp_path_factory.mktemp("builds") / f"tiny-{weights}-encoders"
    export_model(tiny_folder, build, progress=lambda *_: None, encoder_weights=weights)
    return weights, build


@pytest.fixture(scope="module", params=["int8", "int4"])
def weights_build(request, tiny_folder, tmp_path_factory):
    return encoder_build(tiny_folder, tmp_path_factory, request.param)


def graph(build, name):
    return build / load_manifest(build).components[name].file


def test_only_the_encoders_change_and_every_weight_is_quantized(weights_build, tiny_build):
    weights, build = weights_build
    fp32, quant = load_manifest(tiny_build), load_manifest(build)
    for name, rec in quant.components.items():
        if name.startswith("encoder_"):
            assert rec.weights == weights and rec.precision == "fp32"
            model, ref = onnx.load(str(build / rec.file)), onnx.load(str(tiny_build / fp32.components[name].file))
            ops = [n.op_type for n in model.graph.node]
            constant = {i.name for i in ref.graph.initializer}
            weight_matmuls = sum(n.op_type == "MatMul" and n.input[1] in constant for n in ref.graph.node)
            assert ops.count("MatMulNBits") == weight_matmuls > 0
            assert all(a.i == {"int8": 8, "int4": 4}[weights] for n in model.graph.node if n.op_type == "MatMulNBits"
                       for a in n.attribute if a.name == "bits")
            matrices = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
            read = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in matrices
                    or n.op_type == "Gather" and n.input[0] in matrices]
            assert not read, [n.name for n in read]  # no float matrix is read: the embedding table is quantized too
            tables = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized" or n.name.endswith("_gather_q")]
            assert len(tables) == 1
        else:  # the other graphs are the FP32 build's, byte for byte
            assert rec.weights is None and rec.sha256 == fp32.components[name].sha256


def test_quantized_encoder_features_stay_close_to_fp32(weights_build, tiny_build, tiny_pipe):
    from lidit_export.export.onnx_export import component_inputs

    weights, build = weights_build
    inputs = component_inputs(tiny_pipe, batch=2, text_lengths=None, latent_hw=(8, 8))
    for i, prefix in enumerate(tiny_pipe.config.refiner.prefix_lengths):
        name = f"encoder_{i}"
        feeds = {k: v[:, prefix:] for k, v in inputs[name].items()}  # cached graphs take the caption
        ref = ort_session(graph(tiny_build, name)).run(None, feeds)
        out = ort_session(graph(build, name)).run(None, feeds)
        for a, b in zip(out, ref):
            rel = np.linalg.norm(a - b) / np.linalg.norm(b)
            assert rel < {"int8": 0.02, "int4": 0.15}[weights], (name, rel)


def test_a_quantized_encoder_build_draws_like_the_fp32_build(weights_build, tiny_build):
    weights, build = weights_build
    ref, pipe = Pipeline.load(tiny_build), Pipeline.load(build)
    for seed, prompt in enumerate(PROMPTS):
        a = ref.generate(prompt, seed=seed, steps=4).latents.ravel().astype(np.float64)
        b = pipe.generate(prompt, seed=seed, steps=4).latents.ravel().astype(np.float64)
        cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert cosine > {"int8": 0.999, "int4": 0.98}[weights], (prompt, cosine)


def test_engines_of_a_quantized_encoder_are_refused_with_the_fix(weights_build, tiny_folder):
    """TensorRT cannot parse MatMulNBits: asking for engines names the flag that makes parsable graphs."""
    weights, build = weights_build
    run = subprocess.run([sys.executable, "-m", "lidit_export.cli", "build", "--model", tiny_folder, "--out", build,
                          "--encoder-weights", weights, "--target", "trt-rtx"], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    message = run.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "MatMulNBits" in message and "--encoder-weights fp32" in message and "--target none" in message


def test_unknown_encoder_weights_are_refused_in_one_line(tiny_folder, tmp_path):
    from lidit_export.errors import ConfigError
    from lidit_export.stages import BuildOptions

    run = subprocess.run([sys.executable, "-m", "lidit_export.cli", "build", "--model", tiny_folder, "--out",
                          tmp_path / "b", "--encoder-weights", "int3"], capture_output=True, text=True)
    message = run.stderr.strip()
    assert run.returncode == 2 and "\n" not in message and "Traceback" not in message
    assert "--encoder-weights" in message and "int3" in message and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match=r"encoder_weights='int3' is unknown; use one of fp32, int8, int4"):
        BuildOptions(encoder_weights="int3").validate()


def test_unknown_weights_in_a_manifest_are_refused(weights_build, tmp_path):
    import shutil

    from test_cpp import cpp_tool

    _, build = weights_build
    copy = tmp_path / "build"
    shutil.copytree(build, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["components"]["encoder_0"]["weights"] = "int3"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"components.encoder_0.weights='int3' is not one of"):
        Pipeline.load(copy)
    run = subprocess.run([cpp_tool("lidit-generate"), "--build", copy, "--prompt", "a cat", "--out", tmp_path / "c.png"],
                         capture_output=True, text=True)
    assert run.returncode in (1, 2) and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "components.encoder_0.weights" in run.stderr and "int3" in run.stderr, run.stderr


def test_the_cpp_runtime_runs_a_quantized_encoder_build_like_python(weights_build, tmp_path):
    from PIL import Image

    from test_cpp import cpp_tool

    _, build = weights_build
    tool = cpp_tool("lidit-generate")
    ref = Pipeline.load(build).generate(PROMPTS[0], seed=3, steps=4)
    out, lat = tmp_path / "c.png", tmp_path / "c.f32"
    run = subprocess.run([tool, "--build", build, "--prompt", PROMPTS[0], "--seed", "3", "--steps", "4", "--out", out,
                          "--latents", lat], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert np.abs(np.asarray(Image.open(out)).astype(int) - ref.images[0]).max() <= 1
    a, b = np.fromfile(lat, dtype=np.float32).astype(np.float64), ref.latents.ravel().astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.99999


# --encoder-weights fp16 / bf16: the whole encoder graph in half precision, for GPU targets.
@pytest.fixture(scope="module", params=["fp16", "bf16"])
def half_build(request, tiny_folder, tmp_path_factory):
    return encoder_build(tiny_folder, tmp_path_factory, request.param)


def test_half_encoders_are_half_graphs_with_fp32_io_and_nothing_else_changes(half_build, tiny_build):
    half, build = half_build
    fp32, built = load_manifest(tiny_build), load_manifest(build)
    elem = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[half]
    for name, rec in built.components.items():
        if not name.startswith("encoder_"):
            assert rec.sha256 == fp32.components[name].sha256 and rec.precision == "fp32"
            continue
        assert rec.precision == half and rec.weights is None
        model = onnx.load(str(build / rec.file))
        matrices = [i for i in model.graph.initializer if len(i.dims) == 2]
        assert matrices and all(i.data_type == elem for i in matrices)  # every weight matrix, embeddings included (tiny: 63% of the size; the norms and the graph stay)
        io = list(model.graph.input) + list(model.graph.output)
        assert all(v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for v in io)
        assert (build / rec.file).stat().st_size < 0.7 * (tiny_build / fp32.components[name].file).stat().st_size


def test_half_encoder_features_and_images_stay_close_to_fp32(half_build, tiny_build, tiny_pipe):
    """Features on ONNX Runtime's CPU provider (BF16 through the runtime's emulation) against the FP32 graph;
    the relative error is of the order of the half type's rounding (FP16 2^-11, BF16 2^-8) over a few layers."""
    from lidit_export.export.onnx_export import component_inputs

    half, build = half_build
    inputs = component_inputs(tiny_pipe, batch=2, text_lengths=None, latent_hw=(8, 8))
    pipe, ref = Pipeline.load(build), Pipeline.load(tiny_build)
    assert pipe.backend.emulated_bf16 == (["encoder_0", "encoder_1"] if half == "bf16" else [])
    for i, prefix in enumerate(tiny_pipe.config.refiner.prefix_lengths):
        name = f"encoder_{i}"
        feeds = {k: v[:, prefix:] for k, v in inputs[name].items()}
        want = ort_session(graph(tiny_build, name)).run(None, feeds)
        got = pipe.backend.sessions[name].run(None, feeds)
        for a, b in zip(got, want):
            assert a.dtype == np.float32
            rel = np.linalg.norm(a - b) / np.linalg.norm(b)
            assert rel < {"fp16": 2e-3, "bf16": 2e-2}[half], (name, rel)
    for seed, prompt in enumerate(PROMPTS):
        a = ref.generate(prompt, seed=seed, steps=4).latents.ravel().astype(np.float64)
        b = pipe.generate(prompt, seed=seed, steps=4).latents.ravel().astype(np.float64)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999, prompt


def test_an_encoder_that_overflows_fp16_is_refused_with_the_fix(tiny_folder, tmp_path):
    """LLM outliers past FP16's 65504 make the features wrong (the converter clips weights, squared norms go to
    inf, RMSNorm then scales by 0): the build checks the half graph against FP32 on its export sample and
    names bf16, whose range is FP32's."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_folder, model)
    weights = next((model / "llm_0").glob("*.safetensors"))
    state = load_file(str(weights))
    table = next(k for k in state if k.endswith("embed_tokens.weight"))
    state[table] = state[table] * 1e7  # embeddings of ~1e5: past FP16's range from the first layer on
    save_file(state, str(weights))
    run = subprocess.run([sys.executable, "-m", "lidit_export.cli", "build", "--model", model, "--out",
                          tmp_path / "b", "--encoder-weights", "fp16", "--target", "none"], capture_output=True, text=True)
    message = run.stderr.strip()
    assert run.returncode == 2 and "\n" not in message and "Traceback" not in message, run.stderr
    assert "encoder_0 in fp16 drifts from FP32" in message and "use bf16" in message, message
    assert not (tmp_path / "b" / "manifest.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                    reason="TensorRT for RTX not installed: pip install tensorrt-rtx")
def test_tensorrt_builds_a_half_encoder_and_names_the_fix_where_it_fails(half_build, tiny_folder, tmp_path):
    """TensorRT for RTX builds the half Llama encoder (head size 16; SmolLM2's, 64, builds too); the tiny Qwen2
    encoder's head size of 12 fails inside TensorRT 1.7's Myelin in FP16 and BF16 alike (FP32 builds): the
    build stops with the way out instead of a bare builder error, and the engine made before it is kept."""
    import shutil

    half, build = half_build
    out = tmp_path / "b"
    shutil.copytree(build, out)
    run = subprocess.run([sys.executable, "-m", "lidit_export.cli", "build", "--model", tiny_folder, "--out", out,
                          "--encoder-weights", half, "--target", "trt-rtx"], capture_output=True, text=True)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "encoder_1" in last and "--encoder-weights fp32" in last and "head size 12" in last, last
    engines = list((out / "engines").glob("encoder_0-*.trt-rtx.engine"))
    assert len(engines) == 1 and engines[0].stat().st_size > 10_000


def test_the_cpp_runtime_runs_fp16_encoders_like_python_and_refuses_bf16_on_cpu(half_build, tmp_path):
    from PIL import Image

    from test_cpp import cpp_tool

    half, build = half_build
    out, lat = tmp_path / "c.png", tmp_path / "c.f32"
    run = subprocess.run([cpp_tool("lidit-generate"), "--build", build, "--prompt", PROMPTS[0], "--seed", "3", "--steps",
                          "4", "--out", out, "--latents", lat], capture_output=True, text=True)
    if half == "bf16":  # ONNX Runtime's CPU provider has no BF16 kernels; only the Python runtime emulates them
        assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "no BF16 kernels" in run.stderr and "fp16 / fp32" in run.stderr and not out.exists(), run.stderr
        return
    assert run.returncode == 0, run.stderr
    ref = Pipeline.load(build).generate(PROMPTS[0], seed=3, steps=4)
    assert np.abs(np.asarray(Image.open(out)).astype(int) - ref.images[0]).max() <= 1
    a, b = np.fromfile(lat, dtype=np.float32).astype(np.float64), ref.latents.ravel().astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.99999
