"""The finetuning loop: recipe -> data -> model (+ LoRA) -> AdamW -> checkpoints.

Runs through `accelerate`, so the same code trains on a CPU, one GPU, or many
GPUs and nodes (`accelerate launch -m dream_vla_ros.finetune RECIPE ...`, DDP;
FSDP for full finetuning through an accelerate config file). Everything random
is a function of (seed, step): the batch order and augmentation
(`StepBatchSampler`), the objective's draws (a generator per micro-step), and
the learning rate (a function of the step), so resuming from a checkpoint
continues bit-exactly on CPU.

Output folder (`recipe.output_dir`):

    base/                    the initial weights when the base is a preset and LoRA
                             is on (the adapters' base_model_name_or_path)
    checkpoint-000500/       periodic checkpoints (the newest `keep_last` kept)
    final/                   the last step; loads in the policy node as it is
                             (with train.ema_decay: the averaged weights; the
                             trained ones are in its trainer_weights.safetensors)
    metrics.jsonl            one line per log / validation
    curves.png               loss and validation curves
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dream_vla_ros.finetune.adapters import (
    HEAD_MODULES,
    apply_lora,
    head_modules,
    set_full_finetuning,
    trainable_parameters,
)
from dream_vla_ros.finetune.data import DemoData, StepBatchSampler, WindowDataset
from dream_vla_ros.finetune.objectives import BatchEncoder, TrainingObjective, draw_noise
from dream_vla_ros.finetune.recipe import Recipe, TrainConfig, dump_recipe
from dream_vla_ros.model.actions import ActionDecoder, DecodeSettings
from dream_vla_ros.model.checkpoint import (
    PART_FILES,
    NormStats,
    adapter_base,
    load_base_weights,
    load_config,
    load_norm_stats,
    reset_non_persistent_buffers,
    save_checkpoint,
)
from dream_vla_ros.model.config import PRESETS, preset
from dream_vla_ros.model.modeling import DreamVLA
from dream_vla_ros.policy.prompt import PromptBuilder, byte_tokenizer, instruction_words

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
RAW_WEIGHTS = "trainer_weights.safetensors"  # the trained weights when the saved ones are EMA


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why."""


@dataclass
class TrainResult:
    output: Path
    final: Path
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    samples_per_s: float = 0.0
    summary: str = ""


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


# ---------------------------------------------------------------------------- optimizer state


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


# ---------------------------------------------------------------------------- weight average


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


# ---------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        resume: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.recipe = recipe
        self.resume = Path(resume) if resume else None
        self.progress = progress
        self.log = log
        self.out = recipe.output

    # -- set-up ---------------------------------------------------------------
    def _device(self) -> str:
        wanted = self.recipe.train.device
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda" and not torch.cuda.is_available():
            raise TrainingError("train.device is cuda but no CUDA device is available")
        return wanted

    def _check_output(self) -> None:
        existing = sorted(self.out.glob("checkpoint-*")) + sorted(self.out.glob("final"))
        if existing and self.resume is None:
            raise TrainingError(
                f"{self.out} already holds checkpoints ({existing[-1].name}); resume with "
                f"--resume {existing[-1]} or choose another name/output_dir"
            )
        if self.resume is not None and not (self.resume / STATE_JSON).exists():
            raise TrainingError(f"{self.resume} is not a training checkpoint (no {STATE_JSON})")

    def _stats(self) -> tuple[NormStats, NormStats | None] | None:
        if self.resume is None:
            return None
        return load_norm_stats(self.resume, load_config(self.resume))

    def _build_model(self, data: DemoData) -> tuple[DreamVLA, Path | None, Any]:
        """Model with the recipe's head; returns (model, base dir or None, tokenizer)."""
        r = self.recipe
        action = {
            "head": r.model.head,
            "action_dim": data.action_dim,
            "chunk": r.data.chunk,
            "proprio_dim": data.proprio_dim,
            "clock_input": r.data.clock,
            "flow_steps": r.model.flow_steps,
            "action_period_s": 1.0 / data.fps,
        }
        torch.manual_seed(r.model.init_seed)
        if r.model.base in PRESETS:
            cfg = preset(r.model.base, **action)
            model = DreamVLA(cfg)
            # the dataset's instruction words get their own ids (see byte_tokenizer)
            # (and the colour-swap augmentation's words, which it writes into them)
            tasks = [e.task for e in data.episodes.values()]
            words = instruction_words([*tasks, " ".join(r.data.augment.colour_words)])
            tokenizer = byte_tokenizer(cfg.newline_token_id + 1, words, cfg.base_vocab_size)
            base_dir = None
            if self.resume is not None and r.lora.enabled:
                # the random initial weights the adapters were trained on
                base_dir = adapter_base(self.resume)
                if base_dir is None:
                    raise TrainingError(
                        f"cannot resume LoRA training: {self.resume} has no adapter"
                    )
                load_base_weights(model, base_dir)
        else:
            base_dir = Path(r.model.base)
            base_cfg = load_config(base_dir)
            cfg = replace(base_cfg, action=replace(base_cfg.action, **action))
            # built on the meta device and filled from the checkpoint: a 7B base is
            # never randomly initialised first; parts the checkpoint does not have
            # (a new head) get their default initialisation, seeded by init_seed
            with torch.device("meta"):
                model = DreamVLA(cfg)
            model = model.to_empty(device="cpu")
            copied = load_base_weights(model, base_dir)
            for name, module in head_modules(model).items():
                if name not in copied:
                    for sub in module.modules():
                        if hasattr(sub, "reset_parameters"):
                            sub.reset_parameters()
            reset_non_persistent_buffers(model)
            self.log(f"train: weights from {base_dir}: {', '.join(copied)}")
            from tokenizers import Tokenizer

            tok_file = base_dir / "tokenizer.json"
            if not tok_file.exists():
                raise TrainingError(f"{base_dir} has no tokenizer.json")
            tokenizer = Tokenizer.from_file(str(tok_file))
        return model, base_dir, tokenizer

    # -- checkpoints ----------------------------------------------------------
    def _save(self, name: str, step: int, extra: dict[str, Any]) -> Path:
        if self.ema is None:
            return self._write(name, step, extra)
        raw = self.ema.trained_tensors()
        with self.ema.applied():
            path = self._write(name, step, {**extra, "ema_decay": self.ema.decay})
        save_file(raw, str(path / RAW_WEIGHTS))
        return path

    def _write(self, name: str, step: int, extra: dict[str, Any]) -> Path:
        r = self.recipe
        final = self.out / name
        tmp = self.out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model = self.model
        if self.peft_model is not None:
            self.peft_model.save_pretrained(str(tmp))
            (tmp / "README.md").unlink(missing_ok=True)
            adapter_cfg = json.loads((tmp / "adapter_config.json").read_text())
            adapter_cfg["base_model_name_or_path"] = os.path.relpath(
                self.base_dir.resolve(), final.resolve()
            )
            (tmp / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2))
            (tmp / "config.json").write_text(json.dumps(model.cfg.to_json_dict(), indent=2))
            for part, module in head_modules(model).items():
                tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                save_file(tensors, str(tmp / PART_FILES[part]), metadata={"format": "pt"})
            stats: dict[str, Any] = {"action": self.data.action_stats.to_json()}
            if self.data.proprio_stats is not None:
                stats["proprio"] = self.data.proprio_stats.to_json()
            (tmp / "norm_stats.json").write_text(json.dumps(stats, indent=2))
        else:
            save_checkpoint(model, tmp, self.data.action_stats, self.data.proprio_stats)
        self.tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "recipe.yaml").write_text(dump_recipe(r))
        info = {
            "step": step,
            "git_revision": git_revision(),
            "base": r.model.base,
            "adapter": "lora" if self.peft_model is not None else "full",
            "dataset": str(Path(r.data.dataset).resolve()),
            "cameras": list(r.data.cameras),
            "center_crop": r.data.center_crop,
            "train_episodes": self.data.train_episodes,
            "val_episodes": self.data.val_episodes,
            "fps": self.data.fps,
            **extra,
        }
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
        tensors, meta = save_optimizer_state(self.optimizer, self.param_names)
        save_file(tensors, str(tmp / STATE_TENSORS))
        meta.update({"step": step, "recipe": r.to_dict()})
        (tmp / STATE_JSON).write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def _prune(self) -> None:
        keep = self.recipe.train.keep_last
        for old in sorted(self.out.glob("checkpoint-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _restore(self, model: DreamVLA) -> int:
        """Trainable weights and optimizer state from self.resume; returns its step."""
        src = self.resume
        assert src is not None
        if self.peft_model is not None:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(
                self.peft_model, load_file(str(src / "adapter_model.safetensors"))
            )
            if getattr(result, "unexpected_keys", None):
                raise TrainingError(f"{src}: adapter keys do not fit this model")
            for part, module in head_modules(model).items():
                module.load_state_dict(load_file(str(src / PART_FILES[part])))
        else:
            load_base_weights(model, src)
        raw_file = src / RAW_WEIGHTS
        if (self.ema is not None) != raw_file.exists():
            raise TrainingError(
                f"{src} was saved {'with' if raw_file.exists() else 'without'} a weight "
                f"average; this run's train.ema_decay is {self.recipe.train.ema_decay}"
            )
        if self.ema is not None:
            # the checkpoint's weights are the average; the trained ones go on training
            self.ema.shadow = {n: p.detach().clone() for n, p in self.ema.params.items()}
            raw = load_file(str(raw_file))
            if set(raw) != set(self.ema.params):
                raise TrainingError(f"{raw_file} does not hold this run's trainable weights")
            with torch.no_grad():
                for name, p in self.ema.params.items():
                    p.copy_(raw[name])
        meta = json.loads((src / STATE_JSON).read_text())
        load_optimizer_state(
            self.optimizer, load_file(str(src / STATE_TENSORS)), meta, self.param_names
        )
        return int(meta["step"])

    # -- validation -----------------------------------------------------------
    def validate(self, step: int, split: str = "val") -> dict[str, Any] | None:
        """Open-loop action error on `split` (the training episodes when no episode
        is held out), by horizon step, in SI units; of the averaged weights when
        train.ema_decay is set (the ones that are saved)."""
        if self.ema is None:
            return self._validate(step, split)
        with self.ema.applied():
            return self._validate(step, split)

    @torch.no_grad()
    def _validate(self, step: int, split: str) -> dict[str, Any] | None:
        data, r = self.data, self.recipe
        if not data.windows[split]:
            split = "train"
        n = len(data.windows[split])
        if n == 0:
            return None
        model = self.model
        was_training = model.training
        model.eval()
        picks = np.unique(np.linspace(0, n - 1, min(r.train.val_samples, n)).round().astype(int))
        decoder = ActionDecoder(model)
        g = torch.Generator(device=model.device).manual_seed(r.train.seed)
        errors, masks = [], []
        bs = r.train.batch_size
        for start in range(0, len(picks), bs):
            samples = [data.sample(split, int(i)) for i in picks[start : start + bs]]
            batch = torch.utils.data.default_collate(samples)
            inputs = self.encoder(batch, model.device)
            with self.accelerator.autocast():
                prompt = model.embed_prompt(
                    inputs["input_ids"], inputs["pixel_values"], inputs["grid_thw"]
                )
                mask, proprio = inputs["attention_mask"], inputs.get("proprio")
                head = model.cfg.action.head
                if head == "flow":
                    pred = decoder.flow(prompt, mask, proprio, model.cfg.action.flow_steps, g)
                elif head == "discrete":
                    pred = decoder.discrete(prompt, mask, proprio, DecodeSettings(), g)
                else:
                    pred = decoder.regression(prompt, mask, proprio)
            normed = np.clip(pred.float().cpu().numpy().astype(np.float64), -1.0, 1.0)
            actions = data.action_stats.unnormalise(normed)
            errors.append(np.abs(actions - batch["raw_actions"].numpy()))
            masks.append(batch["pad"].numpy())
        model.train(was_training)
        err = np.concatenate(errors)  # (N, H, D)
        real = np.concatenate(masks)[:, :, None]  # (N, H, 1)
        per_step_dim = (err * real).sum(0) / np.maximum(real.sum(0), 1)  # (H, D)
        joints = slice(0, 6) if err.shape[2] >= 7 else slice(0, err.shape[2])
        out: dict[str, Any] = {
            "step": step,
            "split": split,
            "samples": int(len(picks)),
            "joint_mae_by_step": per_step_dim[:, joints].mean(1).tolist(),
            "joint_mae": float(per_step_dim[:, joints].mean()),
        }
        if err.shape[2] >= 7:
            out["gripper_mae"] = float(per_step_dim[:, 6].mean())
        return out

    # -- feedback -------------------------------------------------------------
    def _write_metrics(self, record: dict[str, Any]) -> None:
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        if self.losses:
            steps, losses = zip(*self.losses)
            axes[0].plot(steps, losses, lw=0.8, label="loss")
            axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].set_title(f"training loss ({self.recipe.model.head})")
        vals = [v for v in self.validations if v]
        if vals:
            axes[1].plot([v["step"] for v in vals], [v["joint_mae"] for v in vals], "o-")
            axes[2].plot(
                np.arange(1, len(vals[-1]["joint_mae_by_step"]) + 1),
                vals[-1]["joint_mae_by_step"],
                "o-",
                label=f"step {vals[-1]['step']}",
            )
            if len(vals) > 1:
                axes[2].plot(
                    np.arange(1, len(vals[0]["joint_mae_by_step"]) + 1),
                    vals[0]["joint_mae_by_step"],
                    "o--",
                    label=f"step {vals[0]['step']}",
                )
            axes[2].legend()
        axes[1].set_xlabel("step")
        axes[1].set_title(f"{vals[-1]['split'] if vals else 'val'} joint MAE (rad)")
        axes[2].set_xlabel("horizon step")
        axes[2].set_title("joint MAE by horizon step (rad)")
        fig.tight_layout()
        path = self.out / "curves.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path

    # -- the loop ---------------------------------------------------------------
    def run(self) -> TrainResult:
        from accelerate import Accelerator

        r, t = self.recipe, self.recipe.train
        self._check_output()
        device = self._device()
        mixed = r.model.mixed_precision
        if mixed == "auto":
            mixed = "bf16" if device == "cuda" else "no"
        # accelerate keeps its settings in a process-wide singleton: a second run in
        # the same process (tests, notebooks) with other settings must start afresh;
        # the process group (PartialState) is kept
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        accelerator = Accelerator(
            cpu=device == "cpu",
            mixed_precision=mixed,
            gradient_accumulation_steps=t.grad_accum,
        )
        self.accelerator = accelerator
        main = accelerator.is_main_process
        started = time.perf_counter()
        self.data = data = DemoData(r.data, stats=self._stats())
        if not data.windows["train"]:
            raise TrainingError("the training split has no windows (episodes too short?)")
        self.out.mkdir(parents=True, exist_ok=True)
        model, base_dir, self.tokenizer = self._build_model(data)
        self.peft_model = None
        if r.lora.enabled:
            if base_dir is None:
                # a preset's random initial weights: saved once as the adapters' base
                base_dir = self.out / "base"
                if main and self.resume is None:
                    shutil.rmtree(base_dir, ignore_errors=True)
                    save_checkpoint(model, base_dir, data.action_stats, data.proprio_stats)
                    self.tokenizer.save(str(base_dir / "tokenizer.json"))
                accelerator.wait_for_everyone()
            self.peft_model = apply_lora(model, r.lora, r.model.freeze_vision)
        else:
            set_full_finetuning(model, r.model.freeze_vision)
        self.base_dir = base_dir
        if mixed in ("bf16", "fp16") and self.peft_model is not None:
            # frozen base weights in half precision (a 7B base: 16 GB instead of 33);
            # adapters and heads stay fp32 for the optimizer, autocast does the rest
            half = torch.bfloat16 if mixed == "bf16" else torch.float16
            freeze_to(model, half)
        checkpointing = r.model.gradient_checkpointing == "on" or (
            r.model.gradient_checkpointing == "auto" and device == "cuda"
        )
        model.set_gradient_checkpointing(checkpointing)
        model.to(accelerator.device)
        model.train()
        self.model = model
        params = trainable_parameters(model)
        self.param_names = list(params)
        optimizer = torch.optim.AdamW(param_groups(params, t), lr=t.lr, betas=t.betas)
        self.optimizer = optimizer
        check_optimizer_covers(model, optimizer)
        self.ema = WeightAverage(params, t.ema_decay) if t.ema_decay > 0 else None
        start_step = self._restore(model) if self.resume is not None else 0
        if start_step >= t.steps:
            raise TrainingError(f"{self.resume} is at step {start_step}; train.steps is {t.steps}")
        # the learning rate is a function of the step; a resumed optimizer carries
        # each group's initial_lr, which LambdaLR needs to start at start_step
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, r), last_epoch=start_step - 1
        )
        prompts = PromptBuilder(self.tokenizer, model.cfg)
        self.encoder = BatchEncoder(model, prompts)
        per_step = t.grad_accum * accelerator.num_processes
        sampler = StepBatchSampler(
            len(data.windows["train"]),
            t.batch_size,
            t.seed,
            start_step * per_step,
            (t.steps - start_step) * per_step,
        )
        loader = torch.utils.data.DataLoader(
            WindowDataset(data, "train", r.data.augment),
            batch_sampler=sampler,
            num_workers=t.num_workers,
        )
        objective = TrainingObjective(model)
        objective, optimizer_p, loader = accelerator.prepare(objective, optimizer, loader)
        self.losses: list[tuple[int, float]] = []
        self.validations: list[dict[str, Any]] = []
        if main:
            self._truncate_metrics(start_step)
            self.log(
                f"train: {r.name}: {len(data.train_episodes)} train / {len(data.val_episodes)} "
                f"val episodes, {len(data.windows['train'])} windows"
                + (
                    f" ({len(data.oversampled)} episodes x {r.data.oversample_repeat})"
                    if data.oversampled
                    else ""
                )
                + f", head {r.model.head}, "
                f"{f'LoRA r={r.lora.r}' if r.lora.enabled else 'full finetuning'}, "
                f"{sum(p.numel() for p in params.values()):,} trainable parameters, "
                f"device {accelerator.device}, from step {start_step}"
            )
        if main and start_step == 0 and t.val_every:
            v = self.validate(0)  # the starting point of the validation curve
            if v is not None:
                self.validations.append(v)
                self._write_metrics(v)
        from tqdm import tqdm

        bar = tqdm(
            total=t.steps,
            initial=start_step,
            disable=not (self.progress and main),
            desc="train",
            dynamic_ncols=True,
        )
        step = start_step
        micro = start_step * t.grad_accum
        window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
        samples_per_s = 0.0
        first_checked = False
        train_started = time.perf_counter()
        for batch in loader:
            g = torch.Generator().manual_seed(
                (t.seed * 1_000_003 + micro) * 64 + accelerator.process_index
            )
            with accelerator.accumulate(objective):
                inputs = self.encoder(batch, accelerator.device)
                b = inputs["actions"].shape[0]
                noise = draw_noise(
                    r.model.head, b, model.cfg.action.chunk, model.cfg.action.action_dim, g
                )
                inputs.update({k: v.to(accelerator.device) for k, v in noise.items()})
                loss = objective(**inputs)
                if not torch.isfinite(loss):
                    raise TrainingError(f"the loss is {loss.item()} at step {step}")
                accelerator.backward(loss)
                micro += 1
                window_loss += float(loss.detach())
                window_count += 1
                if accelerator.sync_gradients:
                    if not first_checked:
                        check_gradients(model)
                        first_checked = True
                    if t.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(list(params.values()), t.max_grad_norm)
                    optimizer_p.step()
                    scheduler.step()
                    optimizer_p.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            if self.ema is not None:
                self.ema.update(step)
            if step % t.log_every == 0 or step == t.steps:
                elapsed = time.perf_counter() - window_start
                samples_per_s = window_count * t.batch_size * accelerator.num_processes / elapsed
                mean_loss = window_loss / window_count
                lr = scheduler.get_last_lr()[-1]  # the heads' rate (train.lr x schedule)
                self.losses.append((step, mean_loss))
                if main:
                    bar.set_postfix(
                        loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{samples_per_s:.1f}"
                    )
                    self._write_metrics(
                        {"step": step, "loss": mean_loss, "lr": lr, "samples_per_s": samples_per_s}
                    )
                window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
            bar.update(1)
            last = step == t.steps
            if main and ((t.val_every and step % t.val_every == 0) or last):
                v = self.validate(step)
                if v is not None:
                    self.validations.append(v)
                    self._write_metrics(v)
                self._plot()
            if (t.save_every and step % t.save_every == 0 and not last) or last:
                accelerator.wait_for_everyone()
                if main:
                    name = "final" if last else f"checkpoint-{step:06d}"
                    self._save(name, step, {"loss": self.losses[-1][1] if self.losses else None})
                    self._prune()
            if last:
                break
        bar.close()
        accelerator.wait_for_everyone()
        total = time.perf_counter() - train_started
        done = step - start_step
        overall_sps = done * per_step * t.batch_size / max(total, 1e-9)
        result = TrainResult(
            output=self.out,
            final=self.out / "final",
            steps=step,
            losses=self.losses,
            validations=self.validations,
            samples_per_s=overall_sps,
        )
        result.summary = self._summary(result, time.perf_counter() - started)
        if main:
            self.log(result.summary)
        return result

    def _truncate_metrics(self, start_step: int) -> None:
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= start_step
        ]
        path.write_text("".join(line + "\n" for line in keep))

    def _summary(self, result: TrainResult, seconds: float) -> str:
        parts = [f"train: {self.recipe.name}: {result.steps} steps in {seconds:.0f} s"]
        parts.append(f"{result.samples_per_s:.1f} samples/s")
        if result.losses:
            parts.append(f"loss {result.losses[0][1]:.4g} -> {result.losses[-1][1]:.4g}")
        if result.validations:
            v = result.validations[-1]
            by_step = v["joint_mae_by_step"]
            parts.append(
                f"{v['split']} joint MAE {v['joint_mae']:.4f} rad "
                f"(step 1 {by_step[0]:.4f}, step {len(by_step)} {by_step[-1]:.4f})"
            )
        parts.append(f"checkpoint {result.final}")
        return ", ".join(parts)


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


def main(argv: list[str] | None = None) -> int:
    """`python -m dream_vla_ros.finetune RECIPE [key=value ...] [--resume DIR]` (what
    `dream-vla train` runs; use it under `accelerate launch -m`)."""
    from dream_vla_ros.cli import main as cli_main

    cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
    return 0
