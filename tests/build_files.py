"""Where a build keeps its artifacts: the manifest names them (files carry their key in the name)."""
from pathlib import Path

from lidit_runtime.manifest import load_manifest


def graph_file(build: Path, name: str) -> Path:
    return Path(build) / load_manifest(build).components[name].file
