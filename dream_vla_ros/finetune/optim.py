"""The optimizer's side of training: parameter groups, the learning-rate schedule,
AdamW state as safetensors + JSON (no pickle), and the checks that every trainable
parameter is optimised and receives a gradient."""

from __future__ import annotations

import math
from typing import Any

import torch

from dream_vla_ros.finetune.adapters import HEAD_MODULES, head_modules
from dream_vla_ros.finetune.errors import TrainingError
from dream_vla_ros.finetune.recipe import Recipe, TrainConfig
from dream_vla_ros.model.modeling import DreamVLA


def lr_factor(step: int, recipe: Recipe) -> float:
    """Learning-rate multiplier for the optimizer step `step` (0-based)."""
    t = recipe.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    shape = 1.0 - progress if t.schedule == "linear" else cosine
    return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * shape


def save_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict, dict]:
    """AdamW state -> (tensors, json) without pickle."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, slots in sd["state"].items():
        for key, value in slots.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"param_groups": sd["param_groups"], "param_names": names}
    return tensors, meta


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, names: list[str]
) -> None:
    if meta["param_names"] != names:
        raise TrainingError(
            "the checkpoint's trainable parameters differ from this run's (was the recipe's "
            "lora, head or freeze_vision changed?)"
        )
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = [dict(g, betas=tuple(g["betas"])) for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def freeze_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters that do not train to `dtype` (in place)."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)


def param_groups(params: dict[str, torch.nn.Parameter], t: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; the pretrained VLM's weights (by
    name, LoRA adapters included) at `lr * backbone_lr_scale`, the heads at `lr`."""
    groups: list[dict[str, Any]] = []
    # one rate for all (the default) keeps the two groups older checkpoints resume into
    split = t.backbone_lr_scale != 1.0
    for backbone in (True, False) if split else (False,):
        scale = t.backbone_lr_scale if backbone else 1.0
        chosen = [p for n, p in params.items() if not split or _in_backbone(n) == backbone]
        for decay in (True, False):
            ps = [p for p in chosen if (p.ndim >= 2) == decay]
            if ps:
                groups.append(
                    {
                        "params": ps,
                        "weight_decay": t.weight_decay if decay else 0.0,
                        "lr": t.lr * scale,
                    }
                )
    return groups


def _in_backbone(name: str) -> bool:
    """Not one of the action heads (a peft wrapper prefixes names with base_model.model.)."""
    return name.removeprefix("base_model.model.").split(".")[0] not in HEAD_MODULES


def check_optimizer_covers(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every parameter that requires a gradient is in the optimizer, and every head
    module trains (the bug class where a head is built but never optimised)."""
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_optimizer
    ]
    if missing:
        raise TrainingError(f"trainable parameters missing from the optimizer: {missing[:5]}")
    base = model
    while not isinstance(base, DreamVLA) and hasattr(base, "model"):
        base = base.model
    if isinstance(base, DreamVLA):
        for name, module in head_modules(base).items():
            params = list(module.parameters())
            if not any(id(p) in in_optimizer for p in params):
                raise TrainingError(f"the {name} is not in the optimizer: it would never train")


def check_gradients(model: torch.nn.Module) -> None:
    """After the first backward: every trainable parameter received a gradient."""
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if without:
        raise TrainingError(
            f"{len(without)} trainable parameters got no gradient, e.g. {without[:5]}"
        )
