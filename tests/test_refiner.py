"""Token refiner + collaborative refiner: bidirectional, zero-init identity, instruction tokens dropped."""
import copy

import pytest
import torch

from lidit_export.model.layers import randomize_zero_parameters_
from lidit_export.model.refiner import PromptRefiner


def _inputs(pipe, captions=("a red circle to the left of a blue square", "one cat")):
    hidden, masks, pooled = [], [], []
    with torch.no_grad():
        for encoder, tok in zip(pipe.encoders, pipe.tokenizers):
            t = tok(list(captions))
            ids, mask = torch.from_numpy(t.input_ids), torch.from_numpy(t.attention_mask)
            h, p = encoder(ids, mask)
            hidden.append(h)
            masks.append(mask)
            pooled.append(p)
    return hidden, masks, pooled, torch.tensor([500.0] * len(captions))


def _refiner(pipe, causal):
    config = copy.deepcopy(pipe.config.refiner)
    config.causal = causal
    torch.manual_seed(0)
    refiner = PromptRefiner(config).eval()
    randomize_zero_parameters_(refiner, torch.Generator().manual_seed(0))
    return refiner


@pytest.mark.parametrize("causal", [False, True])
def test_last_caption_token_reaches_the_first_only_without_causal_mask(tiny_pipe, causal):
    hidden, masks, pooled, t = _inputs(tiny_pipe)
    refiner = _refiner(tiny_pipe, causal)
    refiner.collab = None  # look at the token refiner alone (the collaborative stage mixes branches)
    P = tiny_pipe.config.refiner.prefix_lengths[0]
    last = int(masks[0][0].sum()) - 1
    changed = [h.clone() for h in hidden]
    changed[0][0, last] += 1.0  # pooled inputs stay as they were: only attention can carry the change
    with torch.no_grad():
        a, _ = refiner(hidden, masks, pooled, t)
        b, _ = refiner(changed, masks, pooled, t)
    delta_first = (a[0, 0] - b[0, 0]).abs().max().item()  # context position 0 = first caption token
    assert P < last
    if causal:
        assert delta_first == 0.0
    else:
        assert delta_first > 1e-4


def test_fresh_refiner_is_the_identity_after_its_input_projection(tiny_pipe):
    hidden, masks, pooled, t = _inputs(tiny_pipe)
    torch.manual_seed(0)
    refiner = PromptRefiner(tiny_pipe.config.refiner).eval()  # zero-init gates and modulation
    with torch.no_grad():
        context, mask = refiner(hidden, masks, pooled, t)
        expected = torch.cat([b.in_proj(h)[:, p:] for b, h, p in
                              zip(refiner.branches, hidden, tiny_pipe.config.refiner.prefix_lengths)], dim=1)
    torch.testing.assert_close(context, expected, rtol=0, atol=1e-6)


def test_context_holds_only_caption_tokens_of_every_llm(tiny_pipe):
    hidden, masks, pooled, t = _inputs(tiny_pipe)
    with torch.no_grad():
        context, mask = tiny_pipe.refiner(hidden, masks, pooled, t)
    prefixes = tiny_pipe.config.refiner.prefix_lengths
    caption_tokens = [int(m[0].sum()) - p for m, p in zip(masks, prefixes)]
    padded = [m.shape[1] - p for m, p in zip(masks, prefixes)]
    assert context.shape == (2, sum(padded), tiny_pipe.config.refiner.width)
    assert int(mask[0].sum()) == sum(caption_tokens)
    # The mask is each branch's caption mask, concatenated along the sequence.
    assert torch.equal(mask, torch.cat([m[:, p:] for m, p in zip(masks, prefixes)], dim=1))


def test_random_preset_refiner_is_not_an_identity(tiny_pipe):
    hidden, masks, pooled, t = _inputs(tiny_pipe)
    refiner = tiny_pipe.refiner
    with torch.no_grad():
        context, _ = refiner(hidden, masks, pooled, t)
        projected = torch.cat([b.in_proj(h)[:, p:] for b, h, p in
                               zip(refiner.branches, hidden, tiny_pipe.config.refiner.prefix_lengths)], dim=1)
    assert (context - projected).abs().mean() > 0.1 * projected.abs().mean()


def _sliced_after_full(refiner, hidden, masks, pooled, t):
    """The refiner computed at every position and sliced afterwards (what the trimmed last stage must equal)."""
    t_emb = refiner.t_embedder(t)
    tokens, conds = [], []
    for branch, h, m, p in zip(refiner.branches, hidden, masks, pooled):
        x, c = branch(h, m, p, t_emb)
        tokens.append(x)
        conds.append(c)
    if refiner.collab is not None:
        tokens = refiner.collab(tokens, list(masks), conds)
    return torch.cat([x[:, p:] for x, p in zip(tokens, refiner.config.prefix_lengths)], dim=1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("collab", [True, False])
def test_last_stage_computes_caption_positions_only_and_equals_the_full_refiner(tiny_pipe, causal, collab):
    hidden, masks, pooled, t = _inputs(tiny_pipe)
    refiner = _refiner(tiny_pipe, causal)
    if not collab:
        refiner.collab = None  # the token refiners' last block is then the one trimmed
    with torch.no_grad():
        context, _ = refiner(hidden, masks, pooled, t)
        expected = _sliced_after_full(refiner, hidden, masks, pooled, t)
    assert context.shape == expected.shape
    assert (context - expected).abs().max().item() <= 1e-5
    assert expected.abs().max().item() > 0.1  # the comparison is not between zeros
