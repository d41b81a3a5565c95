"""Quantization: recipes, calibration over the sampler (deterministic, cached), faithful Q/DQ graphs."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lidit_export.stages import BuildOptions
from lidit_export.check.parity import THRESHOLDS
from lidit_export.errors import ConfigError
from lidit_export.export.graph_passes import count_quantized_layers
from lidit_export.export.onnx_export import component_inputs, component_modules
from lidit_export.quant.calibrate import CalibrationSettings, calibrate
from lidit_export.quant.prompts import load_prompts
from lidit_export.quant.recipes import QuantRecipe, plan_layers
from helpers import graph_file
from lidit_runtime.manifest import load_manifest

pytest.importorskip("modelopt", reason="NVIDIA ModelOpt not installed: pip install nvidia-modelopt==0.47.0")
SETTINGS = dict(steps=3, height=64, width=64, batch=2)


def test_shipped_prompt_set_has_512_plus_captions_split_in_two():
    calibration, evaluation = load_prompts(split="calibration"), load_prompts(split="evaluation")
    assert len(calibration) + len(evaluation) >= 512
    assert len(evaluation) >= 100 and not set(calibration) & set(evaluation)


def test_recipe_keeps_sensitive_layers_and_edge_blocks_of_deep_models(tiny_pipe):
    plan = plan_layers("dit", tiny_pipe.transformer, QuantRecipe("fp8"), depth=2)
    assert "blocks.0.mlp.fc1" in plan.quantized and "blocks.1.cross_attn.to_k" in plan.quantized
    for kept in ("t_embedder.mlp.0", "y_embedder.mlp.2", "blocks.0.adaLN_modulation.1", "final_layer.linear"):
        assert kept in plan.excluded
    assert len(plan.quantized) == 2 * 10  # q, k, v, out of two attentions + fc1, fc2 per block
    assert plan.attention == ["blocks.0.self_attn", "blocks.0.cross_attn", "blocks.1.self_attn", "blocks.1.cross_attn"]
    assert plan_layers("dit", tiny_pipe.transformer, QuantRecipe("int8"), depth=2).attention == []

    from lidit_export.config import DiTConfig
    from lidit_export.model.dit import LiDiT
    from lidit_export.presets import PRESETS

    p = PRESETS["li-dit-1b"]
    with torch.device("meta"):
        dit = LiDiT(DiTConfig(in_channels=16, context_dim=p.refiner_width, pooled_dim=8192, **p.dit))
    deep = plan_layers("dit", dit, QuantRecipe("int8"), depth=28)
    edge = {n.split(".")[1] for n, why in deep.excluded.items() if why.startswith("first/last")}
    assert edge == {"0", "1", "26", "27"}
    assert len(deep.quantized) == 24 * 8  # INT8 also keeps the 2 context K/V projections per block
    assert plan_layers("dit", dit, QuantRecipe("fp8"), depth=28).attention == []  # head_dim 72: no FP8 MHA
    p10 = PRESETS["li-dit-10b"]
    with torch.device("meta"):
        dit10 = LiDiT(DiTConfig(in_channels=16, context_dim=p10.refiner_width, pooled_dim=8192, **p10.dit))
    attention = plan_layers("dit", dit10, QuantRecipe("fp8"), depth=48).attention  # head_dim 64
    assert len(attention) == 2 * (48 - 4) and "blocks.0.self_attn" not in attention


def test_bad_recipes_are_refused():
    with pytest.raises(ConfigError, match="'fp4'"):
        QuantRecipe("fp4").validate()
    with pytest.raises(ConfigError, match="smoothquant_alpha"):
        QuantRecipe("int8", smoothquant_alpha=1.5).validate()
    with pytest.raises(ConfigError, match="unknown; use one of fp32, fp16, bf16"):
        BuildOptions(precision="fp4").validate()


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_calibration_is_deterministic_and_reused_from_cache(tiny_pipe, tiny_folder, tmp_path, precision):
    settings = CalibrationSettings(load_prompts(split="calibration")[:4], **SETTINGS)
    recipe = QuantRecipe(precision)
    first = calibrate(tiny_pipe, tiny_folder, recipe, settings, tmp_path, progress=lambda *_: None)
    again = calibrate(tiny_pipe, tiny_folder, recipe, settings, tmp_path, progress=lambda *_: None)
    fresh = calibrate(tiny_pipe, tiny_folder, recipe, settings, tmp_path, progress=lambda *_: None, use_cache=False)
    for c in ("refiner", "dit"):
        assert not first[c].from_cache and again[c].from_cache
        assert first[c].amax.keys() == again[c].amax.keys() == fresh[c].amax.keys()
        assert len(first[c].amax) >= 2 * len(first[c].plan.quantized)
        assert all(torch.equal(first[c].amax[k], fresh[c].amax[k]) for k in first[c].amax)
        assert all(torch.equal(first[c].amax[k], again[c].amax[k]) for k in first[c].amax)
    other = CalibrationSettings(settings.prompts, **{**SETTINGS, "steps": 2})
    changed = calibrate(tiny_pipe, tiny_folder, recipe, other, tmp_path, progress=lambda *_: None)
    assert not changed["dit"].from_cache and changed["dit"].key != first["dit"].key


def _layer_census(build, name):
    model = onnx.load(str(graph_file(build, name)))
    census = count_quantized_layers(model)
    quantized = {layer for layer, q in census.items() if q}
    plain = {layer for layer, q in census.items() if not q}
    return model, quantized, plain


@pytest.mark.parametrize("fixture, precision", [("tiny_fp8_build", "fp8"), ("tiny_int8_build", "int8")])
def test_qdq_graphs_quantize_exactly_the_planned_layers(request, fixture, precision):
    build = request.getfixturevalue(fixture)
    report = json.loads((build / "build_report.json").read_text())
    for name, prefix in (("dit", ""), ("refiner", "refiner.")):
        model, quantized, plain = _layer_census(build, name)
        ops = {(n.domain, n.op_type) for n in model.graph.node}
        assert ("trt", "TRT_FP8QuantizeLinear") not in ops and ("", "QuantizeLinear") in ops
        planned = report["components"][name]
        excluded = {prefix + layer for layer in planned["excluded_layers"]}
        attention = {prefix + a for a in planned["fp8_attention"]}
        assert len(quantized - attention) == planned["quantized_layers"] > 0  # weight-quantized linears
        assert attention <= quantized  # FP8 attention: its matmuls read dequantized K and V
        assert bool(attention) == (precision == "fp8")
        assert not quantized & excluded
        assert excluded <= plain  # every excluded linear is still in the graph, unquantized
        low = onnx.TensorProto.FLOAT8E4M3FN if precision == "fp8" else onnx.TensorProto.INT8
        weights = [i for i in model.graph.initializer if i.data_type == low and len(i.dims) == 2]
        assert len(weights) == planned["quantized_layers"]  # stored quantized: ~4x smaller than FP32


def _fake_quant_modules(pipe, build, precision, integer=False, calibration=None):
    from lidit_export.quant.calibrate import load_calibration, with_integer_kernel_weights

    (cache,) = Path(calibration or build / "calibration").glob(f"{precision}-*")
    fake = {c: (with_integer_kernel_weights(q) if integer else q).module
            for c, q in load_calibration(pipe, cache).items()}
    return component_modules(pipe, replace=fake), component_modules(pipe)


def _check_faithful(pipe, build, precision, shapes, integer=False, calibration=None):
    """(1) every quantizer's Q/DQ in the graph returns exactly what ModelOpt's fake quant returns on the
    same tensor; (2) whole graphs: ONNX Runtime (at the manifest's level: BASIC, or ALL for integer-kernel
    graphs) vs fake quant differs far less than fake quant differs from FP32 (rounding flips from kernel
    summation order are the only source)."""
    from lidit_export.check.qdq_faithfulness import check_quantizers
    from lidit_runtime.manifest import load_manifest

    fake, fp32 = _fake_quant_modules(pipe, build, precision, integer, calibration)
    options = ort.SessionOptions()
    level = {load_manifest(build).components[n].ort_optimization for n in ("refiner", "dit")}
    assert level == ({"all"} if integer else {"basic"})
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if integer
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    gaps = []
    for batch, hw in shapes:
        feeds = component_inputs(pipe, batch, None, hw, seed=3)
        for name in ("refiner", "dit"):
            args = tuple(torch.from_numpy(v) for v in feeds[name].values())
            rows = check_quantizers(fake[name], graph_file(build, name), args)
            assert rows and all(r["found_in_graph"] for r in rows)
            assert max(r["rel_l2"] for r in rows) <= 1e-6, name
            session = ort.InferenceSession(str(graph_file(build, name)), options)
            got = session.run(None, feeds[name])[0]
            with torch.no_grad():
                want = fake[name](*args)[0 if name == "refiner" else slice(None)]
                ref = fp32[name](*args)[0 if name == "refiner" else slice(None)]
            rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
            gaps.append((rel(got, want.numpy()), rel(want.numpy(), ref.numpy())))
    return gaps


@pytest.mark.parametrize("fixture, precision", [("tiny_fp8_build", "fp8"), ("tiny_int8_build", "int8")])
def test_qdq_graphs_are_faithful_to_modelopt_on_tiny(request, tiny_pipe, fixture, precision):
    gaps = _check_faithful(tiny_pipe, request.getfixturevalue(fixture), precision, [(2, (8, 8)), (3, (6, 10))])
    # Most cases sit at float noise (~1e-7); where one value lands on the other side of an FP8 rounding tie in
    # an early layer, the later layers carry it: the tiny FP8 DiT at batch 2, 8x8 measured 0.14x its
    # quantization error on an AVX2-only CPU (< 0.1x with AVX-512 kernels, whose sums run in another order).
    # A wrong scale or a misplaced quantizer moves the graph by about the quantization error itself.
    for runtime_gap, quant_error in gaps:
        assert runtime_gap <= 0.25 * quant_error


def test_integer_kernel_int8_graphs_are_faithful_to_modelopt_at_onnx_runtimes_full_level(tiny_pipe, tiny_int8_build,
                                                                                          tiny_int8_integer_build):
    """--int8-kernels integer: weights on 63 levels, graphs at ONNX Runtime's ALL level, where its Q/DQ MatMuls
    become integer GEMMs (MatMulIntegerToFloat); as faithful to ModelOpt's simulation as the BASIC graphs are.
    The build reused tiny_int8_build's calibration through --calibration-cache instead of calibrating again."""
    build = tiny_int8_integer_build
    report = json.loads((build / "build_report.json").read_text())
    assert report["stages"]["calibrate"]["reused"] and not (build / "calibration").exists()
    for name in ("refiner", "dit"):
        model = onnx.load(str(graph_file(build, name)))
        codes = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                 if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
        assert codes and max(int(np.abs(c.astype(np.int16)).max()) for c in codes) == 63
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(build / f"{name}.optimized.onnx")
        ort.InferenceSession(str(graph_file(build, name)), options)
        fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        assert fused.count("MatMulIntegerToFloat") >= len(codes) // 2, name  # the integer kernels run
    gaps = _check_faithful(tiny_pipe, build, "int8", [(2, (8, 8)), (3, (6, 10))], integer=True,
                           calibration=tiny_int8_build / "calibration")
    for runtime_gap, quant_error in gaps:
        assert runtime_gap <= 0.25 * quant_error


def test_onnx_runtimes_integer_gemm_is_exact_with_63_level_weights(tmp_path):
    """Why --int8-kernels integer uses 63 levels: ONNX Runtime's fused INT8 GEMM (u8 x s8 products added in
    pairs into int16 on AVX2 without VNNI) saturates once a pair passes 32767 (2 x 255 x 127 does); with
    |w| <= 63 it cannot, and the fused kernel equals the Q/DQ graph at BASIC to float rounding (127 levels:
    benchmarks/int8_kernels.py measures the gap; CPUs with VNNI add in int32 and are exact either way)."""
    from lidit_export.check.int8_kernels import integer_gemm_gap

    gap = integer_gemm_gap(63, tmp_path / "optimized.onnx", rows=64, n=256)
    assert gap["all_runs"].get("MatMulIntegerToFloat") == 1  # the integer kernel ran
    assert gap["rel_l2_all_vs_basic"] <= 1e-6  # measured 2e-7 (float rounding of the dequantized sum)


def test_qdq_int8_graphs_run_at_the_full_level_only_where_the_fused_kernels_are_exact(tiny_int8_build, tmp_path):
    """The runtime asks the CPU once (backends/int8_probe.py) and runs the Q/DQ INT8 graphs the build pinned to
    BASIC at ALL where the fused integer GEMM computes what the graph says (VNNI); elsewhere they stay at BASIC.
    Either way the images are the BASIC graphs' (this also catches a probe that is wrong on the CI's CPU)."""
    from lidit_export.check.int8_kernels import write_probe
    from lidit_runtime.backends.int8_probe import PROBE, fused_int8_exact, probe_gap
    from lidit_runtime.pipeline import Pipeline

    write_probe(tmp_path / "probe.onnx")
    assert (tmp_path / "probe.onnx").read_bytes() == PROBE.read_bytes()  # the shipped probe is the generator's
    exact = fused_int8_exact()
    assert exact == (probe_gap() < 1e-5)
    records = load_manifest(tiny_int8_build).components
    assert records["dit"].ort_optimization == records["refiner"].ort_optimization == "basic"
    auto, basic = Pipeline.load(tiny_int8_build), Pipeline.load(tiny_int8_build, optimization="basic")
    want = {n: ("all" if exact and n in ("refiner", "dit") else r.ort_optimization) for n, r in records.items()}
    assert auto.backend.levels == want and set(basic.backend.levels.values()) == {"basic"}
    for seed, prompt in enumerate(["a red circle to the left of a blue square", "two cats on a sofa"]):
        a = auto.generate(prompt, seed=seed, steps=4).latents.astype(np.float64)
        b = basic.generate(prompt, seed=seed, steps=4).latents.astype(np.float64)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4, prompt  # saturation would show ~1e-2


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_qdq_graphs_are_faithful_to_modelopt_on_smol(smol_folder, tmp_path_factory, precision):
    from helpers import quantized_build
    from lidit_export.model.pipeline import LiDiTPipeline

    build = quantized_build(smol_folder, tmp_path_factory.mktemp("builds") / f"smol_{precision}", precision,
                            prompts=2, steps=2)
    pipe = LiDiTPipeline.from_pretrained(smol_folder)
    # 8 blocks deep, rounding flips cascade into noise of the size of quantization itself (measured:
    # INT8 DiT 4.1e-3 runtime gap vs 7.9e-3 quantization error); every quantizer is still exact.
    for runtime_gap, quant_error in _check_faithful(pipe, build, precision, [(2, (16, 16))]):
        assert runtime_gap <= quant_error


@pytest.mark.parametrize("fixture", ["tiny_fp8_build", "tiny_int8_build", "tiny_int8_integer_build"])
def test_quantized_builds_pass_their_parity_thresholds(request, tiny_folder, tiny_pipe, fixture):
    from lidit_export.check.parity import run_parity

    report = run_parity(tiny_folder, request.getfixturevalue(fixture), steps=4, pipe=tiny_pipe)
    assert report.passed, report.failures
    quantized = [r for r in report.components if r["component"] in ("refiner", "dit")]
    assert all(r["precision"] == report.precision for r in quantized)
    assert max(r["rel_l2"] for r in quantized) > 1e-4  # quantization really happened


def test_quality_report_ranks_the_excluded_layers_among_the_most_sensitive(tiny_folder, tiny_fp8_build):
    from lidit_export.check.quality import quality_report

    report = quality_report(tiny_folder, tiny_fp8_build, num_eval=2, steps=3, progress=lambda *_: None)
    assert report["precision"] == "fp8"
    assert report["components"]["dit.model_out"]["worst_rel_l2"] > 0
    assert report["images"]["prompts"] == 2
    assert report["images"]["mean_psnr_db"] >= THRESHOLDS["fp8"]["image_psnr_db"]
    sensitivity = report["sensitivity"]
    assert len(sensitivity) == 28 and sensitivity[0]["excluded"]  # every DiT linear, the worst one is kept
    top = sensitivity[: len([r for r in sensitivity if r["excluded"]])]
    assert sum(r["excluded"] for r in top) >= len(top) // 2
    for name in ("quality.json", "quality.md", "quality.png"):
        assert (tiny_fp8_build / "report" / name).stat().st_size > 100



def test_a_changed_layer_plan_invalidates_the_calibration(tiny_pipe, tiny_folder, tmp_path, monkeypatch):
    from lidit_export.quant import recipes

    settings = CalibrationSettings(load_prompts(split="calibration")[:2], **SETTINGS)
    first = calibrate(tiny_pipe, tiny_folder, QuantRecipe("int8"), settings, tmp_path, progress=lambda *_: None)
    monkeypatch.setitem(recipes.SENSITIVE, "dit", recipes.SENSITIVE["dit"] + [("*mlp.fc2", "test rule")])
    second = calibrate(tiny_pipe, tiny_folder, QuantRecipe("int8"), settings, tmp_path, progress=lambda *_: None)
    assert not second["dit"].from_cache and second["dit"].key != first["dit"].key
    assert "blocks.0.mlp.fc2" in second["dit"].plan.excluded


@pytest.mark.parametrize("fixture", ["tiny_fp8_build", "tiny_int8_build", "tiny_int8_integer_build"])
def test_tensorrt_for_rtx_parses_the_qdq_graphs(request, fixture):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed: pip install tensorrt-rtx")
    build = request.getfixturevalue(fixture)
    logger = trt.Logger(trt.Logger.ERROR)
    for name in ("refiner", "dit"):
        path = graph_file(build, name)
        network = trt.Builder(logger).create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
        kinds = [network.get_layer(i).type for i in range(network.num_layers)]
        onnx_q = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
        assert sum(k == trt.LayerType.QUANTIZE for k in kinds) == onnx_q > 0


def test_int8_kernels_and_calibration_cache_misuse_is_refused_in_one_line(tiny_folder, tmp_path):
    import subprocess
    import sys

    (tmp_path / "file").write_text("x")
    for args, expected in [(["--precision", "fp8", "--int8-kernels", "integer"], "applies to --precision int8 only"),
                           (["--precision", "int8", "--calibration-cache", str(tmp_path / "file")], "not a folder")]:
        run = subprocess.run([sys.executable, "-m", "lidit_export.cli", "build", "--model", tiny_folder, "--out",
                              tmp_path / "b", *args], capture_output=True, text=True)
        message = run.stderr.strip()
        assert run.returncode == 2 and "\n" not in message and "Traceback" not in message, message
        assert expected in message and ("--int8-kernels" in message or "--calibration-cache" in message)
        assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="applies to --precision int8 only"):
        BuildOptions(precision="fp8", int8_kernels="integer").validate()
    with pytest.raises(ConfigError, match="int8_kernels='vnni' is unknown"):
        BuildOptions(precision="int8", int8_kernels="vnni").validate()

