"""Prompt sets for calibration and evaluation: the model folder's own prompts.jsonl when it has one (a model
trained on a narrow domain, like the miniature, is calibrated on its own kind of captions), else
calibration/prompts.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError, ConfigError

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "calibration" / "prompts.jsonl"
MODEL_PROMPTS = "prompts.jsonl"  # optional, in a model folder
SPLITS = ("calibration", "evaluation")


def default_prompts(model_dir: str | Path | None = None) -> Path:
    own = Path(model_dir) / MODEL_PROMPTS if model_dir else None
    return own if own is not None and own.exists() else DEFAULT_PROMPTS


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
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    rows = [json.loads(line) for line in lines]
    texts = [r["text"] for r in rows if split is None or r.get("split") == split]
    if not texts:
        raise ConfigError(f"{path} has no prompts in split {split!r}")
    return texts
