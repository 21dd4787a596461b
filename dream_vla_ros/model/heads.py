"""Action heads and small projectors of Dream-VLA (module names follow the official
checkpoints, so their state-dict keys load unchanged once converted to safetensors).

Flow-matching convention (ours, stated once): x_t = (1 - t) * noise + t * action,
the head predicts v = action - noise, and sampling integrates dx/dt = v from
t = 0 (noise) to t = 1 with N Euler steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): sin half then cos half."""
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1))
    )
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(
            MLPResNetBlock(hidden_dim) for _ in range(num_blocks)
        )
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class _TwoLayerProjector(nn.Module):
    """Linear-GELU-Linear into the backbone width (keys fc1.*, fc2.*)."""

    def __init__(self, in_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, llm_dim, bias=True)
        self.fc2 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act_fn1 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(x)))


class ProprioProjector(_TwoLayerProjector):
    """Normalised robot state (B, proprio_dim) -> one token (B, D)."""


class NoisyActionProjector(_TwoLayerProjector):
    """Each scalar of a noisy action chunk (B, A, 1) -> one token (B, A, D)."""

    def __init__(self, llm_dim: int) -> None:
        super().__init__(1, llm_dim)


def _per_step(hidden: torch.Tensor, action_dim: int) -> torch.Tensor:
    """(B, chunk * action_dim, D) -> (B, chunk, action_dim * D): one row per action."""
    b, n, d = hidden.shape
    return hidden.reshape(b, n // action_dim, action_dim * d)


class L1RegressionActionHead(nn.Module):
    def __init__(self, llm_dim: int, hidden_dim: int, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.model = MLPResNet(2, llm_dim * action_dim, hidden_dim, action_dim)

    def predict_action(self, action_hidden: torch.Tensor) -> torch.Tensor:
        """(B, chunk * action_dim, D) -> normalised actions (B, chunk, action_dim)."""
        return self.model(_per_step(action_hidden, self.action_dim))


class NoisePredictionModel(nn.Module):
    def __init__(self, transformer_hidden_dim: int, hidden_dim: int, action_dim: int) -> None:
        super().__init__()
        self.mlp_resnet = MLPResNet(2, transformer_hidden_dim, hidden_dim, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp_resnet(obs)


class FlowMatchingActionHead(nn.Module):
    def __init__(self, llm_dim: int, hidden_dim: int, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.llm_dim = llm_dim
        self.flow_predictor = NoisePredictionModel(llm_dim * action_dim, hidden_dim, action_dim)

    def time_token(self, t: torch.Tensor) -> torch.Tensor:
        """Flow time (B,) in [0, 1] -> the time token (B, 1, D)."""
        return timestep_embedding(t, self.llm_dim).unsqueeze(1)

    def predict_velocity(self, action_hidden: torch.Tensor) -> torch.Tensor:
        """(B, chunk * action_dim, D) -> velocity (B, chunk, action_dim)."""
        return self.flow_predictor(_per_step(action_hidden, self.action_dim))


def euler_integrate(
    velocity,
    x0: torch.Tensor,
    steps: int,
    prefix: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 to 1 with `steps` Euler steps.

    `prefix` (B, m, D) with `weights` (m,) in [0, 1] inpaints the first m rows of the
    sample: before every step, row k is pulled by weight w_k onto the point of the
    straight path from its own start noise to prefix[k] at the current t, and the
    result ends at w_k * prefix[k] + (1 - w_k) * x[k]. The free rows follow the
    velocity field given those rows (a guided sample, not retrained)."""
    if steps < 1:
        raise ValueError(f"flow matching needs >= 1 step, got {steps}")
    x = x0
    dt = 1.0 / steps
    m = 0 if prefix is None else prefix.shape[1]
    if m:
        if weights is None or weights.shape != (m,):
            raise ValueError(f"prefix of {m} rows needs {m} weights")
        if m > x0.shape[1] or prefix.shape[0] != x0.shape[0] or prefix.shape[2] != x0.shape[2]:
            raise ValueError(f"prefix {tuple(prefix.shape)} does not fit x {tuple(x0.shape)}")
        w = weights.to(x0)[None, :, None]
        prefix = prefix.to(x0)

    def anchor(x: torch.Tensor, t: float) -> torch.Tensor:
        if not m:
            return x
        x = x.clone()
        target = (1.0 - t) * x0[:, :m] + t * prefix
        x[:, :m] = w * target + (1.0 - w) * x[:, :m]
        return x

    for k in range(steps):
        x = anchor(x, k * dt)
        t = torch.full((x.shape[0],), k * dt, device=x.device, dtype=torch.float32)
        x = x + dt * velocity(x, t).to(x.dtype)
    return anchor(x, 1.0)
