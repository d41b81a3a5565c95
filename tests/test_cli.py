"""The command line: init + generate on `tiny` writes a PNG; bad input exits 2 with one line."""
import json

import numpy as np
import pytest
from PIL import Image

from lidit_export.cli import main


def test_init_then_generate_writes_a_png(tmp_path, capsys):
    folder = tmp_path / "tiny"
    assert main(["init", "--preset", "tiny", "--out", str(folder)]) == 0
    png = tmp_path / "out" / "cat.png"
    assert main(["generate", "--model", str(folder), "--prompt", "a red cat", "--out", str(png),
                 "--steps", "3", "--cfg", "4", "--seed", "1", "--height", "48", "--width", "80", "--quiet"]) == 0
    image = np.asarray(Image.open(png))
    assert image.shape == (48, 80, 3)
    assert image.std() > 5.0
    assert "wrote" in capsys.readouterr().out


def test_info_reports_parameters_and_flops(tiny_folder, capsys):
    assert main(["info", str(tiny_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["latent"] == [16, 8, 8] and info["image_tokens"] == 16
    assert [llm["blocks_run"] for llm in info["llms"]] == [2, 1]
    assert info["transformer"]["params"] > 0 and info["gflops_per_step"]["transformer"] > 0


def test_bad_resolution_exits_2_with_a_one_line_error(tiny_folder, tmp_path, capsys):
    code = main(["generate", "--model", str(tiny_folder), "--prompt", "x", "--out", str(tmp_path / "x.png"),
                 "--height", "50", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "multiples of 16" in err


def test_unknown_preset_exits_2(tmp_path, capsys):
    assert main(["init", "--preset", "huge", "--out", str(tmp_path / "m")]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_export_then_generate_with_onnxruntime_and_check_parity(tiny_folder, tmp_path, capsys):
    build = tmp_path / "build"
    assert main(["export", "--model", str(tiny_folder), "--out", str(build)]) == 0
    png = tmp_path / "ort.png"
    assert main(["generate", "--backend", "onnxruntime", "--build", str(build), "--prompt", "a red cat",
                 "--out", str(png), "--steps", "3", "--quiet"]) == 0
    assert np.asarray(Image.open(png)).shape == (64, 64, 3)
    assert main(["parity", "--model", str(tiny_folder), "--build", str(build), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "parity passed" in out and "onnxruntime" in out


def test_onnxruntime_backend_without_a_build_says_what_to_pass(capsys):
    assert main(["generate", "--backend", "onnxruntime", "--prompt", "x", "--quiet"]) == 2
    assert "--build DIR" in capsys.readouterr().err


def test_build_int8_runs_calibration_then_export_and_reuses_both(tiny_folder, tmp_path, capsys):
    build = tmp_path / "int8"
    args = ["build", "--model", str(tiny_folder), "--out", str(build), "--precision", "int8", "--num", "2",
            "--steps", "2"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "calibrated on 2/2 prompts" in first and "refiner (int8): exporting" in first
    assert "kept (final layer): final_layer.linear" in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "reused from cache" in second and "exporting" not in second
    report = json.loads((build / "build_report.json").read_text())
    assert report["components"]["dit"]["precision"] == "int8" and report["components"]["dit"]["bytes"] > 0
    assert report["stages"]["calibrate"]["reused"] is True


def test_build_refuses_bf16_engines_for_a_pre_ampere_gpu_with_a_one_line_error(tiny_folder, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed: pip install tensorrt-rtx")
    assert main(["build", "--model", str(tiny_folder), "--out", str(tmp_path / "b"), "--precision", "bf16",
                 "--target", "trt-rtx", "--compute-capability", "7.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "compute capability 8.0 or newer" in err and "use --precision fp16" in err
