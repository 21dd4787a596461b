"""8-bit weights for the backbone's linear layers: a speed setting (docs/model.md).

At batch 1 a 7B backbone pass reads every weight once, so its time is bound by
memory bandwidth: 8-bit weights halve what is read. Two kinds, each replacing the
seven linear layers of every decoder layer (q, k, v, o, gate, up, down); the vision
tower, the projector, the lm_head and the action heads keep their dtype:

- `int8`: weight-only int8 with one scale per output row (max |w| / 127); the layer
  de-quantises its weight to the activations' dtype on every call. It halves the
  weights' memory but costs time: PyTorch's own fused kernel
  (`torch._weight_int8pack_mm`) measured 5x slower than bf16 (40x than fp32) on this
  project's 2-core CPU, and core PyTorch has none for CUDA. Use it to fit a GPU, not
  to speed one up.
- `fp8`: e4m3 weights with one scale per output row, activations quantised to e4m3
  per token at run time, `torch._scaled_mm` (GPUs of compute capability 8.9 and
  above: Ada, Hopper). It needs a CUDA device.

The accuracy of each, against the plain model on the same inputs, is measured by
bench/speed_settings.py and tested in test_model.py (int8) and test_gpu.py (fp8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = ("plain", "int8", "fp8")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FP8_MAX = 448.0  # largest finite float8_e4m3fn


class Int8Linear(nn.Module):
    """y = x (q s)^T + b with int8 q and a scale s per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.float().abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(w.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.qweight.to(x.dtype) * self.scale.to(x.dtype)[:, None]
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)


class FP8Linear(nn.Module):
    """e4m3 weights (a scale per output row), e4m3 activations (a scale per token),
    one torch._scaled_mm; the output in the activations' dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        if not w.is_cuda:
            raise ValueError("fp8 weights need a CUDA device (torch._scaled_mm)")
        scale = w.float().abs().amax(dim=1).clamp(min=1e-12) / _FP8_MAX
        q = (w.float() / scale[:, None]).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
        # _scaled_mm wants the second operand column-major: keep w^T as a view of w
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale[None, :].contiguous())  # (1, N) float32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        x_scale = x2.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _FP8_MAX
        xq = (x2.float() / x_scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(
            xq,
            self.qweight.t(),
            scale_a=x_scale,
            scale_b=self.scale,
            out_dtype=x.dtype if x.dtype != torch.float32 else torch.bfloat16,
        ).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


def quantize_backbone(model: nn.Module, weights: str) -> int:
    """Replace the backbone's linear layers of a loaded model in place; the number
    replaced. `plain` leaves the model as it is."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got '{weights}'")
    if weights == "plain":
        return 0
    kind = Int8Linear if weights == "int8" else FP8Linear
    n = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LINEARS:
                linear = getattr(parent, name, None)
                if isinstance(linear, nn.Linear):
                    setattr(parent, name, kind(linear))
                    n += 1
    return n
