"""FP8 attention: quantizers on the inputs of both attention matmuls (Q, K, V and the softmax
probabilities), for ModelOpt to calibrate and for the exported graph to carry as Q/DQ.

Applied only where head_dim % 16 == 0 [toolchain practice 4: TensorRT's FP8 fused attention needs it;
LI-DiT-1B's 72 fails, 10B's 64 passes]. Attention is written out (matmul -> softmax -> matmul) in the
quantized copy so that the probabilities can be quantized; the FP32 reference keeps SDPA.
"""
from __future__ import annotations

import torch

from ..model.layers import Attention
from .recipes import modelopt

BMM_QUANTIZERS = ("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer", "softmax_quantizer")
_REGISTERED = False


def eligible(head_dim: int) -> bool:
    return head_dim % 16 == 0


def register_quant_attention() -> None:
    """Teach ModelOpt to convert our Attention into one with BMM quantizers (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    modelopt()
    from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
    from modelopt.torch.quantization.nn.modules.quant_module import QuantInputBase, QuantModule

    class QuantAttention(QuantModule):
        def _setup(self):
            for name in BMM_QUANTIZERS:
                setattr(self, name, TensorQuantizer(QuantInputBase.default_quant_desc_input))

        def forward(self, x, context=None, allowed=None):
            context = x if context is None else context
            B, L, _ = x.shape
            q = self.to_q(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
            k = self.to_k(context).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
            v = self.to_v(context).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
            q = self.q_bmm_quantizer(self.norm_q(q))
            k = self.k_bmm_quantizer(self.norm_k(k))
            scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim ** -0.5)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            probs = self.softmax_quantizer(torch.softmax(scores, dim=-1))
            out = torch.matmul(probs, self.v_bmm_quantizer(v))
            return self.to_out(out.transpose(1, 2).reshape(B, L, -1))

    QuantModuleRegistry.register({Attention: "lidit.Attention"})(QuantAttention)
    _REGISTERED = True
