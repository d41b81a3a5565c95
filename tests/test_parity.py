"""The parity ladder passes on faithful graphs (tiny and smol, FP32) and fails loudly on a wrong one."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from lidit_export.check.parity import THRESHOLDS, run_parity
from lidit_export.cli import main
from lidit_runtime.manifest import file_sha256, load_manifest
from helpers import graph_file


def _assert_fp32_ladder(report, build):
    limits = THRESHOLDS["fp32"]
    assert report.passed, report.failures
    names = {r["component"] for r in report.components}
    assert names == {"encoder_0", "encoder_1", "refiner", "dit", "vae_decoder"}
    for name in names:
        rows = [r for r in report.components if r["component"] == name]
        shapes = {json.dumps(r["inputs"], sort_keys=True) for r in rows}
        assert len(shapes) >= 3, name  # batch, text length and latent size varied
        assert max(r["rel_l2"] for r in rows) <= limits["component_rel_l2"]
    assert report.trajectory["min_cosine"] >= 0.9999
    assert report.image["psnr_db"] >= 40.0 and report.image["ssim"] >= 0.99
    assert report.image["pixel_std"] > 2.0
    data = json.loads((build / "parity" / "parity.json").read_text())
    assert data["passed"] and data["thresholds"] == limits
    h, w = report.image["resolution"]
    assert np.asarray(Image.open(build / "parity" / "parity.png")).shape == (h, 3 * w, 3)


def test_tiny_fp32_parity_ladder_passes_and_records_validated_shapes(tiny_folder, tiny_build):
    report = run_parity(tiny_folder, tiny_build, steps=6)
    _assert_fp32_ladder(report, tiny_build)
    manifest = load_manifest(tiny_build)
    validated = json.loads((tiny_build / "parity" / "parity.json").read_text())["validated_shapes"]
    dit = manifest.components["dit"]
    lat_min, _, lat_max = dit.dims["latent_height"]
    heights = {s["latents"][2] for s in validated["dit"]}
    assert any(lat_min < h < lat_max for h in heights)  # a size strictly between min and max
    text = {s["hidden_0"][1] for s in validated["refiner"]}
    lo, _, hi = manifest.components["refiner"].dims["text_len_0"]
    assert len(text) >= 3 and any(lo < t < hi for t in text)


def test_a_wrong_graph_fails_parity_with_a_non_zero_exit(tiny_folder, tiny_build, tmp_path, capsys):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    dit = graph_file(build, "dit")
    model = onnx.load(str(dit))
    for init in model.graph.initializer:  # scale one weight matrix of the DiT by 1.5
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and w.size > 1000:
            init.CopyFrom(numpy_helper.from_array(w * 1.5, init.name))
            break
    onnx.save(model, str(dit))
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["components"]["dit"]["sha256"] = file_sha256(dit)
    (build / "manifest.json").write_text(json.dumps(manifest))
    code = main(["parity", "--model", str(tiny_folder), "--build", str(build), "--steps", "3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "parity failed" in err and "dit.model_out" in err
    assert not json.loads((build / "parity" / "parity.json").read_text())["passed"]


def test_smol_fp32_parity_ladder_passes(smol_folder, tmp_path_factory):
    from lidit_export.export.export_build import export_model

    build = tmp_path_factory.mktemp("builds") / "smol"
    export_model(smol_folder, build, progress=lambda *_: None)
    report = run_parity(smol_folder, build, steps=8)
    _assert_fp32_ladder(report, build)


def test_polygraphy_compares_every_graph_against_the_reference(tiny_folder, tiny_build, tmp_path):
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("polygraphy")
    from lidit_export.check.parity import dump_polygraphy

    commands = dump_polygraphy(tiny_folder, tiny_build, tmp_path / "poly")
    assert len(commands) == 5
    polygraphy = str(Path(sys.executable).with_name("polygraphy"))
    for command in commands:
        args = shlex.split(command)
        out = subprocess.run([polygraphy, *args[1:]], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert "PASSED | Runtime" in out.stdout + out.stderr


# Measured on tiny (random weights): fp16 4.3e-4 / 64.5 dB, bf16 6.8e-3 / 54.3 dB (PyTorch's own BF16 refiner
# is 6.9e-3 from FP32 on the same inputs). Before the timestep stopped being rounded to half on its way into
# the FP32 sinusoid, fp16 was 1.4e-2 and bf16 1.9e-1.
@pytest.mark.parametrize("precision,worst", [("fp16", 2e-3), ("bf16", 2e-2)])
def test_half_graphs_pass_parity_and_keep_the_timestep_in_fp32(tiny_folder, tmp_path, precision, worst):
    from lidit_export.stages import BuildOptions, build_pipeline

    build = tmp_path / precision
    manifest = build_pipeline(tiny_folder, build, BuildOptions(precision=precision, engines=None),
                              progress=lambda *_: None)
    assert {n: r.precision for n, r in manifest.components.items()} == {
        "encoder_0": "fp32", "encoder_1": "fp32", "refiner": precision, "dit": precision, "vae_decoder": "fp32"}
    from lidit_runtime.pipeline import Pipeline

    emulated = Pipeline.load(build).backend.emulated_bf16  # ONNX Runtime's CPU provider lacks BF16 kernels
    assert emulated == (["refiner", "dit"] if precision == "bf16" else [])
    report = run_parity(tiny_folder, build, steps=8)
    assert report.passed, report.failures
    assert max(r["rel_l2"] for r in report.components if r["component"] in ("refiner", "dit")) <= worst
    half = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16
    for name in ("refiner", "dit"):
        graph = onnx.load(str(graph_file(build, name))).graph
        assert sum(t.data_type == half for t in graph.initializer) >= 10
        producers = {o: n for n in graph.node for o in n.output}
        sinusoid = [n for n in graph.node if n.op_type in ("Sin", "Cos")]
        assert sinusoid
        for node in sinusoid:  # t * freqs reaches sin/cos through FP32 ops only: no Cast to half on the way
            todo, seen = [node.input[0]], set()
            while todo:
                src = producers.get(todo.pop())
                if src is None or id(src) in seen:
                    continue
                seen.add(id(src))
                assert not any(a.name == "to" and a.i == half for a in src.attribute), (name, src.name)
                todo.extend(src.input)


def test_bf16_emulation_rounds_every_op_output_to_bf16():
    """ONNX Runtime's CPU provider has no BF16 MatMul: the backend emulates it. The emulated graph must give
    exactly FP32 compute on BF16 inputs, rounded to BF16."""
    import ml_dtypes
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from lidit_runtime.backends.bf16_emulation import emulate_bf16, has_bf16

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["xb", "w"], ["yb"]),
             helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)]
    w_bf16 = helper.make_tensor("w", TensorProto.BFLOAT16, w.shape,
                                w.astype(ml_dtypes.bfloat16).view(np.uint16).tobytes(), raw=True)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [w_bf16])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    assert has_bf16(model)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(emulate_bf16(model).SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((4, 16)).astype(np.float32)
    bf = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
    expected = bf(bf(x).astype(np.float64) @ bf(w).astype(np.float64))
    got = session.run(None, {"x": x})[0]
    assert np.array_equal(got, expected.astype(np.float32)) or np.abs(got - expected).max() <= np.abs(expected).max() / 128
    assert not np.allclose(got, x @ w, rtol=1e-5, atol=0)  # it really is rounded
    assert np.array_equal(got, bf(got))  # every output value is a BF16 value
