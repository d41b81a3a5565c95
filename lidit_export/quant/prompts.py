"""Prompt sets for calibration and evaluation (calibration/prompts.jsonl by default)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError, ConfigError

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "calibration" / "prompts.jsonl"
SPLITS = ("calibration", "evaluation")


def load_prompts(path: str | Path | None = None, split: str | None = None) -> list[str]:
    """Captions from a .jsonl file (fields text, category, split) or a plain file with one per line.
    `split` keeps one split of a .jsonl file; plain files have no splits and are used whole."""
    path = Path(path) if path else DEFAULT_PROMPTS
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
