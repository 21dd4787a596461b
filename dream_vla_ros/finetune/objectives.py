"""Training objectives of the three action heads, as one nn.Module whose forward
returns the loss (so DDP/FSDP wrap it like any model and see every parameter use).

- flow (default): t ~ U(0, 1), x_t = (1 - t) noise + t action, the head predicts
  v = action - noise (heads.py convention); loss = MSE over real action rows.
- discrete: masked diffusion over the action tokens only. Per sample a noise
  level t ~ U(eps, 1); each action token is replaced by [MASK] with probability
  t (at least one per sample). Cross-entropy over the full vocabulary on the
  masked, real (not padded) tokens, read with the one-position logit shift, and
  weighted by 1/t (the masked-diffusion bound Dream trains with).
- l1: the L1 head on the action positions (zero embeddings), L1 loss.

The random draws (t, noise, mask) are made by the trainer from a generator
seeded per step and passed in as tensors: a resumed run draws the same ones.
Prompts of different lengths are padded on the left, so every action position
sits right after its prompt and positions (the mask's cumulative sum) equal
those of an unpadded inference prompt.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dream_vla_ros.model.actions import ActionDecoder, ActionTokenizer
from dream_vla_ros.model.modeling import DreamVLA
from dream_vla_ros.policy.preprocess import ImagePreprocessor
from dream_vla_ros.policy.prompt import PromptBuilder

DISCRETE_EPS = 1e-3


class BatchEncoder:
    """Collated samples -> model inputs: left-padded prompt ids, mask, patches."""

    def __init__(self, model: DreamVLA, prompts: PromptBuilder) -> None:
        cfg = model.cfg
        self.cfg = cfg
        self.prompts = prompts
        self.images = ImagePreprocessor(
            size=cfg.image_size,
            patch_size=cfg.vision.patch_size,
            merge_size=cfg.vision.spatial_merge_size,
            temporal_patch_size=cfg.vision.temporal_patch_size,
            resize=cfg.image_resize,
        )

    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        # (B, cameras, 3, S, S) uint8; patchified on the training device (accelerate's
        # data loader may already have put the batch there)
        images = batch["images"].to(device)
        b, n_cams = images.shape[:2]
        drops = batch.get("drop_instruction")
        ids = [
            self.prompts.ids(
                task,
                n_cams,
                self.images.tokens_per_image,
                drop_instruction=drops is not None and bool(drops[row]),
            )
            for row, task in enumerate(batch["task"])
        ]
        length = max(len(x) for x in ids)
        input_ids = torch.full((b, length), self.cfg.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, length - len(x) :] = torch.tensor(x)
            mask[row, length - len(x) :] = 1
        pixel_values, grid = self.images.patchify(images.reshape(b * n_cams, *images.shape[2:]))
        out = {
            "input_ids": input_ids.to(device),
            "attention_mask": mask.to(device),
            "pixel_values": pixel_values.to(device),
            "grid_thw": grid.to(device),
            "actions": batch["actions"].to(device),
            "pad": batch["pad"].to(device),
        }
        if "state" in batch:
            out["proprio"] = batch["state"].to(device)
        return out


def draw_noise(
    head: str, batch: int, chunk: int, action_dim: int, g: torch.Generator
) -> dict[str, torch.Tensor]:
    """The objective's random draws for one micro-batch (CPU tensors)."""
    if head == "flow":
        return {
            "t": torch.rand(batch, generator=g),
            "noise": torch.randn(batch, chunk, action_dim, generator=g),
        }
    if head == "discrete":
        n = chunk * action_dim
        t = DISCRETE_EPS + (1 - DISCRETE_EPS) * torch.rand(batch, generator=g)
        u = torch.rand(batch, n, generator=g)
        forced = torch.randint(0, n, (batch,), generator=g)
        masked = u < t[:, None]
        masked[torch.arange(batch), forced] = True
        return {"t": t, "masked": masked}
    return {}


class TrainingObjective(nn.Module):
    def __init__(self, model: DreamVLA) -> None:
        super().__init__()
        self.model = model
        self.head = model.cfg.action.head
        self.decoder = ActionDecoder(model)
        self.tokens = ActionTokenizer(model.cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor,
        actions: torch.Tensor,
        pad: torch.Tensor,
        proprio: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.model
        prompt = model.embed_prompt(input_ids, pixel_values, grid_thw)
        b, chunk, dim = actions.shape
        real = pad.to(prompt.dtype)  # (B, H) 1 = a real action row
        if self.head == "flow":
            assert t is not None and noise is not None
            t_ = t.to(actions.dtype)[:, None, None]
            x_t = (1 - t_) * noise + t_ * actions
            target = actions - noise
            tokens = model.noisy_action_projector(x_t.reshape(b, -1, 1).to(prompt.dtype))
            hidden = self.decoder.action_hidden(
                prompt, attention_mask, tokens, proprio, model.action_head.time_token(t)
            )
            pred = model.action_head.predict_velocity(hidden).float()
            per_row = ((pred - target.float()) ** 2).mean(-1)
            return (per_row * real).sum() / real.sum().clamp(min=1)
        if self.head == "l1":
            zeros = prompt.new_zeros(b, chunk * dim, prompt.shape[-1])
            hidden = self.decoder.action_hidden(prompt, attention_mask, zeros, proprio)
            pred = model.action_head.predict_action(hidden).float()
            per_row = (pred - actions.float()).abs().mean(-1)
            return (per_row * real).sum() / real.sum().clamp(min=1)
        assert t is not None and masked is not None
        target = torch.as_tensor(
            self.tokens.encode(actions.detach().cpu().numpy()), device=input_ids.device
        ).reshape(b, -1)
        x = torch.where(masked, torch.full_like(target, model.cfg.mask_token_id), target)
        hidden = self.decoder.action_hidden(
            prompt, attention_mask, model.model.embed_tokens(x), proprio
        )
        logits = model.lm_head(hidden).float()
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
        )
        ce = ce.reshape(b, -1)
        real_tokens = pad[:, :, None].expand(b, chunk, dim).reshape(b, -1).to(ce.dtype)
        weight = masked.to(ce.dtype) * real_tokens / t.to(ce.dtype)[:, None]
        per_sample = (ce * weight).sum(-1) / real_tokens.sum(-1).clamp(min=1)
        return per_sample.mean()
