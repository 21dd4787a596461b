"""Training checkpoints: what a checkpoint folder holds, writing one atomically (with
the weight average applied when there is one), restoring a run from one, and keeping
the newest few.

A training checkpoint is a model checkpoint that loads in the policy node as it is
(model/checkpoint.py), plus `recipe.yaml`, `training.json` (step, git revision,
data) and the optimizer state (`trainer_state.safetensors` + `.json`); with
`train.ema_decay` the saved weights are the average and the trained ones are in
`trainer_weights.safetensors`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dream_vla_ros.finetune.adapters import head_modules
from dream_vla_ros.finetune.averaging import WeightAverage
from dream_vla_ros.finetune.errors import TrainingError
from dream_vla_ros.finetune.optim import load_optimizer_state, save_optimizer_state
from dream_vla_ros.finetune.recipe import Recipe, dump_recipe
from dream_vla_ros.model.checkpoint import PART_FILES, load_base_weights, save_checkpoint
from dream_vla_ros.model.modeling import DreamVLA

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
RAW_WEIGHTS = "trainer_weights.safetensors"  # the trained weights when the saved ones are EMA


def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        rev = out.stdout.strip()
        if rev:
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


@dataclass
class TrainingState:
    """What a checkpoint saves and a resume restores."""

    recipe: Recipe
    model: DreamVLA
    peft_model: Any  # peft's wrapper when LoRA is on, else None
    base_dir: Path | None  # the adapters' base (LoRA)
    data: Any  # finetune.data.DemoData: statistics and the episode split
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    param_names: list[str]
    average: WeightAverage | None = None


def save_training_checkpoint(
    state: TrainingState, out: Path, name: str, step: int, extra: dict[str, Any]
) -> Path:
    """OUT/NAME (replaced atomically); with a weight average, the averaged weights
    are the checkpoint's and the trained ones go to RAW_WEIGHTS."""
    if state.average is None:
        return _write(state, out, name, step, extra)
    raw = state.average.trained_tensors()
    with state.average.applied():
        path = _write(state, out, name, step, {**extra, "ema_decay": state.average.decay})
    save_file(raw, str(path / RAW_WEIGHTS))
    return path


def _write(state: TrainingState, out: Path, name: str, step: int, extra: dict[str, Any]) -> Path:
    r = state.recipe
    final = out / name
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model, data = state.model, state.data
    if state.peft_model is not None:
        assert state.base_dir is not None
        state.peft_model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)
        adapter_cfg = json.loads((tmp / "adapter_config.json").read_text())
        adapter_cfg["base_model_name_or_path"] = os.path.relpath(
            state.base_dir.resolve(), final.resolve()
        )
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2))
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_json_dict(), indent=2))
        for part, module in head_modules(model).items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(tensors, str(tmp / PART_FILES[part]), metadata={"format": "pt"})
        stats: dict[str, Any] = {"action": data.action_stats.to_json()}
        if data.proprio_stats is not None:
            stats["proprio"] = data.proprio_stats.to_json()
        (tmp / "norm_stats.json").write_text(json.dumps(stats, indent=2))
    else:
        save_checkpoint(model, tmp, data.action_stats, data.proprio_stats)
    state.tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "recipe.yaml").write_text(dump_recipe(r))
    info = {
        "step": step,
        "git_revision": git_revision(),
        "base": r.model.base,
        "adapter": "lora" if state.peft_model is not None else "full",
        "dataset": str(Path(r.data.dataset).resolve()),
        "cameras": list(r.data.cameras),
        "center_crop": r.data.center_crop,
        "train_episodes": data.train_episodes,
        "val_episodes": data.val_episodes,
        "fps": data.fps,
        **extra,
    }
    (tmp / "training.json").write_text(json.dumps(info, indent=2))
    tensors, meta = save_optimizer_state(state.optimizer, state.param_names)
    save_file(tensors, str(tmp / STATE_TENSORS))
    meta.update({"step": step, "recipe": r.to_dict()})
    (tmp / STATE_JSON).write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def prune_checkpoints(out: Path, keep: int) -> None:
    """Keep the newest `keep` periodic checkpoints (`final` is never pruned)."""
    for old in sorted(out.glob("checkpoint-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def restore_training_checkpoint(state: TrainingState, src: Path) -> int:
    """Trainable weights, weight average and optimizer state from `src`; returns its step."""
    model = state.model
    if state.peft_model is not None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(
            state.peft_model, load_file(str(src / "adapter_model.safetensors"))
        )
        if getattr(result, "unexpected_keys", None):
            raise TrainingError(f"{src}: adapter keys do not fit this model")
        for part, module in head_modules(model).items():
            module.load_state_dict(load_file(str(src / PART_FILES[part])))
    else:
        load_base_weights(model, src)
    raw_file = src / RAW_WEIGHTS
    average = state.average
    if (average is not None) != raw_file.exists():
        raise TrainingError(
            f"{src} was saved {'with' if raw_file.exists() else 'without'} a weight "
            f"average; this run's train.ema_decay is {state.recipe.train.ema_decay}"
        )
    if average is not None:
        # the checkpoint's weights are the average; the trained ones go on training
        average.shadow = {n: p.detach().clone() for n, p in average.params.items()}
        raw = load_file(str(raw_file))
        if set(raw) != set(average.params):
            raise TrainingError(f"{raw_file} does not hold this run's trainable weights")
        with torch.no_grad():
            for name, p in average.params.items():
                p.copy_(raw[name])
    meta = json.loads((src / STATE_JSON).read_text())
    load_optimizer_state(
        state.optimizer, load_file(str(src / STATE_TENSORS)), meta, state.param_names
    )
    return int(meta["step"])
