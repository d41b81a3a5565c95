"""FP8 attention: quantizers on the inputs of both attention matmuls (Q, K, V and the softmax
probabilities), for ModelOpt to calibrate and for the exported graph to carry as Q/DQ.

Applied only where head_dim % 16 == 0: TensorRT's FP8 fused attention needs it (LI-DiT-1B's head_dim of 72
fails, 10B's 64 passes). The quantized copy overrides only the attention core (`Attention._attend`), written
out as matmul -> softmax -> matmul so that the probabilities can be quantized; the FP32 reference keeps SDPA.
"""
from __future__ import annotations

import torch

from lidit_runtime.dependencies import require

from ..model.layers import Attention

BMM_QUANTIZERS = ("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer", "softmax_quantizer")
_REGISTERED = False


def eligible(head_dim: int) -> bool:
    """Whether attention with heads this wide gets FP8 Q/K/V and softmax quantizers."""
    return head_dim % 16 == 0


def register_quant_attention() -> None:
    """Teach ModelOpt to convert our Attention into one with BMM quantizers (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    require("modelopt.torch.quantization", "FP8 attention")
    from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
    from modelopt.torch.quantization.nn.modules.quant_module import QuantInputBase, QuantModule

    class QuantAttention(QuantModule):
        def _setup(self):
            for name in BMM_QUANTIZERS:
                setattr(self, name, TensorQuantizer(QuantInputBase.default_quant_desc_input))

        def _attend(self, q, k, v, allowed):
            q, k = self.q_bmm_quantizer(q), self.k_bmm_quantizer(k)
            scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim ** -0.5)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            probs = self.softmax_quantizer(torch.softmax(scores, dim=-1))
            return torch.matmul(probs, self.v_bmm_quantizer(v))

    QuantModuleRegistry.register({Attention: "lidit.Attention"})(QuantAttention)
    _REGISTERED = True
