"""Exportable restatements of the diffusers DiTs of the LLM-encoder families, with the models' own weights.

The diffusers forwards do not export as written: rotary embeddings are complex tensors (`torch.polar`,
`view_as_complex`: ONNX has no complex type), and per-sample Python packing (list inputs, `.tolist()`, loops,
Z-Image's padding of each caption to a multiple of 32 with learned pad tokens) bakes the export shape into the
graph. Here the same blocks run unchanged; only their attention processors are swapped for one that rotates
with real cos / sin gathered from the model's own tables, and the packing is restated with tensors and masks:

* Z-Image: a caption of n tokens is padded to n' = ceil(n / 32) * 32 with `cap_pad_token` (attended, not
  masked); image patches likewise to a multiple of 32 with `x_pad_token`; the caption sits at rope positions
  (1 + j, 0, 0), the image at (n' + 1, row, col), pad patches at (0, 0, 0). The unified sequence is [image;
  caption] with the caption's batch padding masked.
* Lumina-2: caption tokens at (j, 0, 0), the image at (n, row, col); the joint sequence is [caption; image].

Attention is permutation-equivariant given each token's rope position, so a masked gap inside a row (instead
of the per-sample packing at the end) gives the same numbers; tests check both against diffusers.

Both families' text refiners (`context_refiner`) do not depend on the timestep: they are their own graph,
which the runtime runs once per request.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

SEQ_MULTIPLE = 32  # Z-Image pads captions and image patches to multiples of this


def rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, Dh) with (even, odd) pairs adjacent, rope (B, L, Dh/2, 2) holding cos, sin: the real form
    of `view_as_complex(x) * freqs_cis`."""
    pairs = x.float().reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = rope[:, :, None, :, 0], rope[:, :, None, :, 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.reshape(x.shape).type_as(x)


class RealRopeAttention:
    """An attention processor for diffusers' `Attention` in Z-Image and Lumina-2 blocks: q/k/v projections,
    RMS QK-norm, real rotary embedding, grouped KV heads, a boolean key mask (B, L) or none."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None,
                 image_rotary_emb=None, base_sequence_length=None):
        rope = freqs_cis if freqs_cis is not None else image_rotary_emb
        x = hidden_states
        B, L = x.shape[0], x.shape[1]
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = attn.to_q.out_features // attn.heads
        kv_heads = attn.to_k.out_features // head_dim
        q = q.reshape(B, L, attn.heads, head_dim)
        k = k.reshape(B, L, kv_heads, head_dim)
        v = v.reshape(B, L, kv_heads, head_dim)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_heads != attn.heads:  # head j of q reads kv head j // n_rep, as Lumina-2's repeat + flatten does
            k = k.repeat_interleave(attn.heads // kv_heads, dim=1)
            v = v.repeat_interleave(attn.heads // kv_heads, dim=1)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        # the default scale 1 / sqrt(head_dim) is both families' (attn.scale); passing it would break ModelOpt's
        # export of the attention it wraps in quantized builds
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(B, L, attn.heads * head_dim)
        return attn.to_out[0](out)


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with the original: a restatement
    costs no weight memory (a real checkpoint's DiT is tens of GB in float32)."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def with_real_rope(transformer: nn.Module) -> nn.Module:
    """A weight-sharing copy of the DiT whose attention processors rotate with real numbers (the loaded
    pipeline keeps its own, so diffusers still runs as written)."""
    model = shared_copy(transformer).eval()
    for module in model.modules():
        if hasattr(module, "set_processor") and hasattr(module, "to_q"):
            if abs(module.scale - (module.to_q.out_features // module.heads) ** -0.5) > 1e-12:
                raise ValueError("attention with a non-default softmax scale is not supported")
            module.set_processor(RealRopeAttention())
    return model


def _tables(complex_tables) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [t.real.float().contiguous() for t in complex_tables], [t.imag.float().contiguous() for t in complex_tables]


class _Rope(nn.Module):
    """cos / sin tables per rope axis (buffers), gathered per token from integer positions."""

    def __init__(self, complex_tables):
        super().__init__()
        cos, sin = _tables(complex_tables)
        self.axes = len(cos)
        for i, (c, s) in enumerate(zip(cos, sin)):
            self.register_buffer(f"cos_{i}", c, persistent=False)
            self.register_buffer(f"sin_{i}", s, persistent=False)

    def forward(self, *positions: torch.Tensor) -> torch.Tensor:
        """One integer tensor per axis, all broadcast to (B, L) -> (B, L, Dh/2, 2)."""
        cos = torch.cat([getattr(self, f"cos_{i}")[p] for i, p in enumerate(positions)], dim=-1)
        sin = torch.cat([getattr(self, f"sin_{i}")[p] for i, p in enumerate(positions)], dim=-1)
        return torch.stack([cos, sin], dim=-1)


def _patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C), features ordered (ph, pw, c) as both families order them."""
    B, C, H, W = latents.shape
    x = latents.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def _unpatchify(tokens: torch.Tensor, like: torch.Tensor, p: int) -> torch.Tensor:
    B, C, H, W = like.shape
    x = tokens.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)


def _grid(like: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every patch, row-major: two (N,) int64 tensors."""
    h, w = like.shape[2] // p, like.shape[3] // p
    rows = torch.arange(h, device=like.device)[:, None].expand(h, w).reshape(-1)
    cols = torch.arange(w, device=like.device)[None, :].expand(h, w).reshape(-1)
    return rows, cols


def _ceil_multiple(n: torch.Tensor) -> torch.Tensor:
    return torch.div(n + SEQ_MULTIPLE - 1, SEQ_MULTIPLE, rounding_mode="floor") * SEQ_MULTIPLE


def _pad_rows(x: torch.Tensor, token: torch.Tensor, length) -> torch.Tensor:
    """x (B, L, D) extended with `token` rows to `length` (>= L, < L + SEQ_MULTIPLE): no zero-sized tensors."""
    fill = token.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], SEQ_MULTIPLE, x.shape[2])
    return torch.cat([x, fill], dim=1)[:, :length]


# --- Z-Image ---------------------------------------------------------------------------------------------

class ZImageRefiner(nn.Module):
    """LLM states (B, L, H) and their mask -> refined caption (B, L', D), L' = ceil32(L), and the mask of the
    attended tokens (each caption's own ceil32 length, its pad tokens included)."""

    def __init__(self, transformer):
        super().__init__()
        from diffusers.models.transformers.transformer_z_image import RopeEmbedder

        model = transformer
        self.cap_embedder, self.blocks, self.pad_token = model.cap_embedder, model.context_refiner, model.cap_pad_token
        self.rope = _Rope(RopeEmbedder.precompute_freqs_cis(model.axes_dims, model.axes_lens, model.rope_theta))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        B, L = hidden.shape[0], hidden.shape[1]
        n = attention_mask.sum(dim=1)
        length = _ceil_multiple(torch.tensor(L, device=hidden.device))
        x = _pad_rows(self.cap_embedder(hidden.float()), self.pad_token, length)
        pos = torch.arange(x.shape[1], device=x.device)[None, :]
        real = pos < n[:, None]
        attended = pos < _ceil_multiple(n)[:, None]
        x = torch.where(real[..., None], x, self.pad_token.to(x.dtype))
        zero = torch.zeros_like(pos)
        rope = self.rope(1 + pos, zero, zero).expand(B, -1, -1, -1)
        for block in self.blocks:
            x = block(x, attended, rope)
        return x, attended.to(torch.int64)


class ZImageDiT(nn.Module):
    """One denoising call: latents (B, C, H, W), timestep (B,) as the pipeline feeds it ((1000 - t) / 1000),
    refined caption and mask -> the model output (B, C, H, W), before the pipeline's negation."""

    def __init__(self, transformer):
        super().__init__()
        from diffusers.models.transformers.transformer_z_image import RopeEmbedder

        model = transformer
        self.patch = model.all_patch_size[0]
        key = f"{self.patch}-{model.all_f_patch_size[0]}"
        self.x_embedder, self.final = model.all_x_embedder[key], model.all_final_layer[key]
        self.t_embedder, self.t_scale = model.t_embedder, float(model.t_scale)
        self.noise_refiner, self.layers, self.pad_token = model.noise_refiner, model.layers, model.x_pad_token
        self.rope = _Rope(RopeEmbedder.precompute_freqs_cis(model.axes_dims, model.axes_lens, model.rope_theta))

    def forward(self, latents, timestep, context, context_mask):
        B = latents.shape[0]
        adaln = self.t_embedder(timestep * self.t_scale)
        tokens = self.x_embedder(_patchify(latents, self.patch))
        count = tokens.shape[1]
        x = _pad_rows(tokens, self.pad_token, _ceil_multiple(torch.tensor(count, device=latents.device)))
        padded = x.shape[1]
        rows, cols = _grid(latents, self.patch)
        is_patch = torch.arange(padded, device=x.device) < count
        cap_len = context_mask.sum(dim=1)
        zeros = torch.zeros(SEQ_MULTIPLE, dtype=rows.dtype, device=rows.device)
        rows, cols = torch.cat([rows, zeros])[:padded], torch.cat([cols, zeros])[:padded]
        frame = torch.where(is_patch[None, :], (cap_len + 1)[:, None], 0)
        x_rope = self.rope(frame, rows[None, :].expand(B, -1), cols[None, :].expand(B, -1))
        for block in self.noise_refiner:
            x = block(x, None, x_rope, adaln)
        cap_pos = torch.arange(context.shape[1], device=x.device)[None, :].expand(B, -1)
        cap_rope = self.rope(1 + cap_pos, torch.zeros_like(cap_pos), torch.zeros_like(cap_pos))
        unified = torch.cat([x, context.float()], dim=1)
        rope = torch.cat([x_rope, cap_rope], dim=1)
        mask = torch.cat([torch.ones_like(x[..., 0], dtype=torch.bool), context_mask.bool()], dim=1)
        for block in self.layers:
            unified = block(unified, mask, rope, adaln)
        out = self.final(unified, c=adaln)[:, :count]
        return _unpatchify(out, latents, self.patch)


# --- Lumina-Image-2.0 ----------------------------------------------------------------------------------

def _lumina_rope(model) -> _Rope:
    return _Rope(model.rope_embedder.freqs_cis)


class Lumina2Refiner(nn.Module):
    """LLM states (B, L, H) and mask -> refined caption (B, L, D) and the same mask."""

    def __init__(self, transformer):
        super().__init__()
        model = transformer
        self.caption_embedder, self.blocks = model.time_caption_embed.caption_embedder, model.context_refiner
        self.rope = _lumina_rope(model)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        x = self.caption_embedder(hidden.float())
        pos = torch.arange(x.shape[1], device=x.device)[None, :].expand(x.shape[0], -1)
        zero = torch.zeros_like(pos)
        valid = (pos < attention_mask.sum(dim=1)[:, None])[..., None, None]
        rope = torch.where(valid, self.rope(pos, zero, zero), 0.0)  # diffusers zeroes the padding's rotation
        for block in self.blocks:
            x = block(x, attention_mask, rope)
        return x, attention_mask


class Lumina2DiT(nn.Module):
    """One denoising call: latents, timestep as the pipeline feeds it (1 - t / 1000), refined caption and
    mask -> the model output, before the pipeline's negation."""

    def __init__(self, transformer):
        super().__init__()
        model = transformer
        self.patch = model.config.patch_size
        self.time_proj, self.timestep_embedder = model.time_caption_embed.time_proj, model.time_caption_embed.timestep_embedder
        self.x_embedder, self.noise_refiner, self.layers, self.norm_out = (
            model.x_embedder, model.noise_refiner, model.layers, model.norm_out)
        self.rope = _lumina_rope(model)

    def forward(self, latents, timestep, context, context_mask):
        B = latents.shape[0]
        temb = self.timestep_embedder(self.time_proj(timestep).type_as(latents))
        x = self.x_embedder(_patchify(latents, self.patch))
        rows, cols = _grid(latents, self.patch)
        cap_len = context_mask.sum(dim=1)
        x_rope = self.rope(cap_len[:, None].expand(B, rows.shape[0]), rows[None, :].expand(B, -1),
                           cols[None, :].expand(B, -1))
        for block in self.noise_refiner:
            x = block(x, None, x_rope, temb)
        pos = torch.arange(context.shape[1], device=x.device)[None, :].expand(B, -1)
        zero = torch.zeros_like(pos)
        cap_rope = torch.where((pos < cap_len[:, None])[..., None, None], self.rope(pos, zero, zero), 0.0)
        joint = torch.cat([context.float(), x], dim=1)
        rope = torch.cat([cap_rope, x_rope], dim=1)
        mask = torch.cat([context_mask.bool(), torch.ones_like(x[..., 0], dtype=torch.bool)], dim=1)
        for block in self.layers:
            joint = block(joint, mask, rope, temb)
        out = self.norm_out(joint, temb)[:, context.shape[1]:]
        return _unpatchify(out, latents, self.patch)


class VAEImage(nn.Module):
    """Latents already unscaled by the host (z = x / scaling_factor + shift_factor, the manifest's chain) ->
    image (B, 3, H, W) in [0, 1], as the pipelines' image processor denormalises it."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        image = self.vae.decode(latents).sample
        return (image.float() * 0.5 + 0.5).clamp(0.0, 1.0)


class TappedLLM(nn.Module):
    """The LLM cut at the hidden state the pipeline taps: hidden_states[-k] is the output of block N + 1 - k
    before the final norm (k >= 2), so later blocks are dropped; k = 1 keeps every block and the norm."""

    def __init__(self, model: nn.Module, tap: int):
        super().__init__()
        base = shared_copy(getattr(model, "model", model)).eval()
        total = len(base.layers)
        if tap < 1 or tap > total:
            raise ValueError(f"tap {tap} outside 1..{total}")
        if tap > 1:
            base.config = copy.deepcopy(base.config)
            base.layers = base.layers[: total + 1 - tap]
            base.config.num_hidden_layers = total + 1 - tap
            for name in ("layer_types",):
                value = getattr(base.config, name, None)
                if isinstance(value, list) and len(value) == total:
                    setattr(base.config, name, value[: total + 1 - tap])
            base.norm = nn.Identity()
        self.model = base

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
