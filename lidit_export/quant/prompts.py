"""Prompt sets for calibration and evaluation: the model folder's own prompts.jsonl when it has one (a model
trained on a narrow domain, like the miniature, is calibrated on its own kind of captions), else the set the
package ships (lidit_export/data/prompts.jsonl, made by calibration/make_prompts.py), found through
importlib.resources so that an installed wheel has it too."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from lidit_runtime.manifest import build_file

from ..errors import ArtifactError, ConfigError

DEFAULT_PROMPTS = Path(str(resources.files("lidit_export").joinpath("data", "prompts.jsonl")))
MODEL_PROMPTS = "prompts.jsonl"  # optional, in a model folder
SPLITS = ("calibration", "evaluation")
MAX_PROMPT_FILE = 64 << 20


def default_prompts(model_dir: str | Path | None = None) -> Path:
    own = Path(model_dir) / MODEL_PROMPTS if model_dir else None
    if own is None or not (own.exists() or own.is_symlink()):
        return DEFAULT_PROMPTS
    build_file(model_dir, MODEL_PROMPTS, "prompt file", "the model folder", "restore it or pass --prompts FILE")
    return own  # a regular file inside the model folder


def load_prompts(path: str | Path | None = None, split: str | None = None,
                 model_dir: str | Path | None = None) -> list[str]:
    """Captions from a .jsonl file (fields text, category, split) or a plain file with one per line.
    `split` keeps one split of a .jsonl file; plain files have no splits and are used whole. Without a
    path: the prompts of `model_dir` (see default_prompts)."""
    path = Path(path) if path else default_prompts(model_dir)
    if split is not None and split not in SPLITS:
        raise ConfigError(f"prompt split {split!r} is unknown; use one of {SPLITS}")
    if not path.exists():
        raise ArtifactError(f"prompt file {path} not found; pass --prompts FILE (one caption per line, or .jsonl)")
    if not path.is_file() or path.stat().st_size > MAX_PROMPT_FILE:  # never read a FIFO, device or folder
        raise ArtifactError(f"prompt file {path} is not a regular file of at most {MAX_PROMPT_FILE >> 20} MB; pass "
                            "--prompts FILE (one caption per line, or .jsonl)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"prompt file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if path.suffix != ".jsonl":
        texts = [line for _, line in lines]
    else:
        texts = []
        for n, line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ArtifactError(f"{path}:{n} is not valid JSON ({e.msg}); each line must be an object with a "
                                    "\"text\" field") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ArtifactError(f"{path}:{n} must be a JSON object with a string \"text\" field")
            if split is None or row.get("split") == split:
                texts.append(row["text"])
    if not texts:
        where = f" in split {split!r}" if split is not None and path.suffix == ".jsonl" else ""
        raise ConfigError(f"{path} has no prompts{where}; pass --prompts FILE with at least one caption")
    return texts
