"""Prompt tokenization shared by the reference and every runtime backend (HF `tokenizers` only).

The text fed to each LLM is `prefix + caption + suffix`, where prefix holds the system prompt and the
paper's instruction (wrapped in the LLM's chat template when it has one) and suffix closes the template.
The three pieces are tokenized separately and joined, so the prefix tokens are the same for every
caption: their count is fixed per LLM, which makes truncating them a static slice and lets the
hidden states of the prefix be computed once (the LLM is causal).

`whole_text` instead tokenizes the joined text in one go with the tokenizer's own special tokens and
truncation at max_length, exactly as a diffusers pipeline calls its HF tokenizer; a negative prompt may
have its own prefix (Lumina-2 gives the system prompt to the positive prompt only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .errors import ArtifactError, ConfigError, ShapeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedPrompts:
    input_ids: np.ndarray  # (B, L) int64, right padded
    attention_mask: np.ndarray  # (B, L) int64, 1 = real token
    prefix_length: int  # tokens of system prompt + instruction, the same for every row


class PromptTokenizer:
    def __init__(self, tokenizer_file: str, prefix_text: str, suffix_text: str, max_length: int,
                 pad_token_id: int, caption_separator: str = " ", prefix_length: int | None = None,
                 whole_text: bool = False, negative_prefix_text: str | None = None):
        """prefix_length: the prefix token count the encoder graph was exported with (checked, when given)."""
        from tokenizers import Tokenizer  # lazy: keeps `import lidit_runtime` light

        self.whole_text = whole_text
        self.texts = (prefix_text, suffix_text)
        self.negative_texts = (prefix_text if negative_prefix_text is None else negative_prefix_text, suffix_text)

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises a plain Exception for any unreadable file
            raise ArtifactError(f"tokenizer {tokenizer_file} cannot be read ({str(e).splitlines()[0][:120]}); "
                                "restore the file or rebuild") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        if whole_text:
            self.truncating = Tokenizer.from_str(self.tokenizer.to_str())
            self.truncating.enable_truncation(max_length)
            prefix_text = suffix_text = ""  # no pieces: the whole text is one sequence
        self.prefix_ids = self._encode(prefix_text)
        if prefix_length is not None and len(self.prefix_ids) != prefix_length:
            raise ArtifactError(f"tokenizer {tokenizer_file} gives {len(self.prefix_ids)} prefix tokens, the encoder graph "
                                f"was exported for {prefix_length}: it is not the tokenizer of this build; rebuild")
        self.suffix_ids = self._encode(suffix_text)
        self.caption_separator = caption_separator
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        room = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if room < 1:
            raise ConfigError(
                f"max_length={max_length} leaves no room for a caption after the {len(self.prefix_ids)} prefix and "
                f"{len(self.suffix_ids)} suffix tokens; raise the encoder's max_length")
        self.caption_room = room

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def caption_ids(self, caption: str) -> list[int]:
        return self._encode(self.caption_separator + caption) if caption else []

    def _whole(self, caption: str, negative: bool) -> list[int]:
        prefix, suffix = self.negative_texts if negative else self.texts
        text = prefix + caption + suffix
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.max_length:
            log.warning("prompt truncated from %d to %d tokens (max_length): %.60r...", len(ids), self.max_length, caption)
            ids = self.truncating.encode(text).ids
        return ids

    def rows(self, captions: list[str], negative: bool = False) -> list[list[int]]:
        """Token ids of each prompt (negative: through the negative prompt's template), unpadded."""
        if self.whole_text:
            return [self._whole(c, negative) for c in captions]
        rows = []
        for caption in captions:
            ids = self.caption_ids(caption)
            if len(ids) > self.caption_room:
                log.warning("caption truncated from %d to %d tokens (max_length=%d): %.60r...",
                            len(ids), self.caption_room, self.max_length, caption)
                ids = ids[: self.caption_room]
            rows.append(self.prefix_ids + ids + self.suffix_ids)
        return rows

    def __call__(self, captions: list[str], pad_to: int | None = None, negative: bool = False) -> TokenizedPrompts:
        """Tokenize a batch; pad_to fixes the padded length (for static engine shapes)."""
        return self.pack(self.rows(captions, negative), pad_to)

    def pack(self, rows: list[list[int]], pad_to: int | None = None) -> TokenizedPrompts:
        """Rows of ids right padded into one batch (right padding pinned: the graphs read valid tokens first)."""
        # At least one position after the prefix (masked when the caption and suffix are empty): graphs
        # with the prefix baked in then never see a zero-length input.
        length = max(max(len(r) for r in rows), len(self.prefix_ids) + 1)
        if pad_to is not None:
            if pad_to < length or pad_to > self.max_length:
                raise ShapeError(f"pad_to={pad_to} must lie between the longest prompt ({length}) and max_length "
                                 f"({self.max_length})")
            length = pad_to
        ids = np.full((len(rows), length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return TokenizedPrompts(ids, mask, len(self.prefix_ids))
