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
    dit = manifest.components["dit"]
    lat_min, _, lat_max = dit.dims["latent_height"]
    heights = {s["latents"][2] for s in dit.validated_shapes}
    assert any(lat_min < h < lat_max for h in heights)  # a size strictly between min and max
    text = {s["hidden_0"][1] for s in manifest.components["refiner"].validated_shapes}
    lo, _, hi = manifest.components["refiner"].dims["text_len_0"]
    assert len(text) >= 3 and any(lo < t < hi for t in text)


def test_a_wrong_graph_fails_parity_with_a_non_zero_exit(tiny_folder, tiny_build, tmp_path, capsys):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    dit = build / "onnx" / "dit.onnx"
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
