"""Exponential moving average of the trainable weights (`train.ema_decay`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """Exponential moving average of the trainable weights (`train.ema_decay`).

    After optimizer step n (1-based) every average moves towards its weight by
    1 - min(decay, (1 + n) / (10 + n)): early weights fade fast, the last
    ~1 / (1 - decay) steps dominate at the end."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in params.items()}

    def factor(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        weight = 1.0 - self.factor(step)
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model inside the block, the trained ones after."""
        with torch.no_grad():
            trained = {n: p.detach().clone() for n, p in self.params.items()}
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(trained[name])

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.params.items()}
