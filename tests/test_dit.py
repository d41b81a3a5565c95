"""LI-DiT: adaLN-Zero, masked cross-attention, any multiple-of-patch size."""
import pytest
import torch

from lidit_export.errors import ShapeError
from lidit_export.model.dit import LiDiT
from lidit_runtime.pipeline import GenerateRequest


def _args(config, batch=2, h=8, w=8, tokens=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, config.in_channels, h, w, generator=g)
    context = torch.randn(batch, tokens, config.context_dim, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.int64)
    mask[0, 7:] = 0
    pooled = torch.randn(batch, config.pooled_dim, generator=g)
    return latents, torch.tensor([999.0, 10.0][:batch]), context, mask, pooled


def test_fresh_dit_returns_zeros(tiny_pipe):
    dit = LiDiT(tiny_pipe.config.transformer).eval()
    with torch.no_grad():
        out = dit(*_args(tiny_pipe.config.transformer))
    assert out.shape == (2, 16, 8, 8)
    assert out.abs().max().item() == 0.0


def test_random_preset_dit_output_is_healthy(tiny_pipe):
    with torch.no_grad():
        out = tiny_pipe.transformer(*_args(tiny_pipe.config.transformer))
    assert torch.isfinite(out).all()
    assert 0.3 < out.std().item() < 3.0


def test_padded_context_tokens_have_no_effect(tiny_pipe):
    latents, t, context, mask, pooled = _args(tiny_pipe.config.transformer)
    garbage = torch.randn(2, 5, context.shape[-1]) * 100
    more_context = torch.cat([context, garbage], dim=1)
    more_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.int64)], dim=1)
    changed_pads = context.clone()
    changed_pads[0, 7:] = 42.0  # row 0's padded positions
    with torch.no_grad():
        a = tiny_pipe.transformer(latents, t, context, mask, pooled)
        b = tiny_pipe.transformer(latents, t, more_context, more_mask, pooled)
        c = tiny_pipe.transformer(latents, t, changed_pads, mask, pooled)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h, w", [(2, 2), (8, 8), (6, 10), (4, 14)])
def test_any_multiple_of_patch_latent_size_runs(tiny_pipe, h, w):
    with torch.no_grad():
        out = tiny_pipe.transformer(*_args(tiny_pipe.config.transformer, h=h, w=w))
    assert out.shape == (2, 16, h, w)
    assert torch.isfinite(out).all()


def test_latent_not_multiple_of_patch_is_refused(tiny_pipe):
    with pytest.raises(ShapeError, match="multiple of the patch size 2"):
        tiny_pipe.transformer(*_args(tiny_pipe.config.transformer, h=7, w=8))


@pytest.mark.parametrize("h, w", [(48, 80), (32, 32)])
def test_pipeline_generates_at_multiple_of_16_resolutions(tiny_pipe, h, w):
    result = tiny_pipe.generate(GenerateRequest(["a cat"], steps=2, height=h, width=w))
    assert result.images.shape == (1, h, w, 3)


@pytest.mark.parametrize("h, w", [(60, 64), (64, 8), (0, 64)])
def test_pipeline_refuses_other_resolutions_with_the_fix(tiny_pipe, h, w):
    with pytest.raises(ShapeError, match="multiples of 16"):
        tiny_pipe.generate(GenerateRequest(["a cat"], steps=2, height=h, width=w))


@pytest.mark.parametrize("preset, low, high", [("li-dit-1b", 0.9e9, 1.05e9), ("li-dit-10b", 9.3e9, 10.2e9)])
def test_paper_sizes_come_out_at_1b_and_10b(preset, low, high):
    from lidit_export.config import DiTConfig
    from lidit_export.presets import PRESETS

    p = PRESETS[preset]
    with torch.device("meta"):  # Table 7 shapes, nothing allocated
        dit = LiDiT(DiTConfig(in_channels=16, context_dim=p.refiner_width, pooled_dim=8192, **p.dit))
    assert low < sum(x.numel() for x in dit.parameters()) < high


def test_positional_embedding_depth_reaches_the_grid_centre(tiny_pipe):
    """Zero padding is the ResBlock PE's only source of absolute position: one ResBlock leaves the centre of an
    8 x 8 patch grid blind (identical outputs on a constant input), three reach it. Added ResBlocks start as
    the identity, so a trained model grows them without changing its output."""
    import dataclasses

    from lidit_export.model.dit import ResBlockPositionalEmbedding

    torch.manual_seed(0)
    flat = torch.ones(1, 32, 8, 8)
    for depth, blind in ((1, True), (3, False)):
        pe = ResBlockPositionalEmbedding(32, 8, depth=depth)
        for block in pe.more:
            torch.nn.init.normal_(block.conv2.weight, std=0.05)
        with torch.no_grad():
            out = pe(flat)[0]
        spread = (out[:, 2:6, 2:6] - out[:, 3:4, 3:4]).abs().max().item()
        assert (spread == 0.0) == blind, (depth, spread)

    config = tiny_pipe.config.transformer
    grown = LiDiT(dataclasses.replace(config, pe_depth=3)).eval()
    missing, unexpected = grown.load_state_dict(tiny_pipe.transformer.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("pos_embed.more.") for k in missing)
    with torch.no_grad():
        assert torch.equal(grown(*_args(config)), tiny_pipe.transformer(*_args(config)))
