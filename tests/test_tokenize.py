"""Prompt tokenization: constant prefix, right padding, truncation with a warning."""
import logging

import numpy as np
import pytest

from lidit_runtime.errors import ShapeError


def test_prefix_tokens_are_identical_for_every_caption(tiny_pipe):
    for tok, enc in zip(tiny_pipe.tokenizers, tiny_pipe.config.encoders):
        t = tok(["a red cat", "two blue squares under a large tree", ""])
        p = t.prefix_length
        assert p == len(tok.prefix_ids) > 10  # system prompt + the paper's instruction
        assert (t.input_ids[:, :p] == t.input_ids[0, :p]).all()


def test_rows_are_right_padded_with_the_pad_id(tiny_pipe):
    tok = tiny_pipe.tokenizers[0]
    t = tok(["a red cat", "two blue squares under a large tree"])
    lengths = t.attention_mask.sum(1)
    assert lengths[0] < lengths[1] == t.input_ids.shape[1]
    assert (t.attention_mask[0, : lengths[0]] == 1).all() and (t.attention_mask[0, lengths[0]:] == 0).all()
    assert (t.input_ids[0, lengths[0]:] == tok.pad_token_id).all()


def test_long_captions_are_truncated_to_max_length_with_a_warning(tiny_pipe, caplog):
    tok = tiny_pipe.tokenizers[1]
    caption = " ".join(["red circle"] * 400)
    with caplog.at_level(logging.WARNING):
        t = tok([caption])
    assert t.input_ids.shape[1] == tok.max_length == 256
    assert "truncated" in caplog.text
    np.testing.assert_array_equal(t.input_ids[0, -len(tok.suffix_ids) or None:][: len(tok.suffix_ids)], tok.suffix_ids)


def test_pad_to_fixes_the_length_and_refuses_too_short(tiny_pipe):
    tok = tiny_pipe.tokenizers[0]
    assert tok(["a cat"], pad_to=100).input_ids.shape == (1, 100)
    with pytest.raises(ShapeError, match="pad_to=3"):
        tok(["a cat"], pad_to=3)


def test_an_empty_caption_still_leaves_one_masked_position_after_the_prefix(tiny_pipe):
    tok = tiny_pipe.tokenizers[1]  # no chat template, so no suffix tokens
    assert tok.suffix_ids == []
    t = tok([""])
    assert t.input_ids.shape[1] == t.prefix_length + 1
    assert t.attention_mask[0, -1] == 0
