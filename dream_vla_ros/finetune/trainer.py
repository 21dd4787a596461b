"""The finetuning loop: recipe -> data -> model (+ LoRA) -> AdamW -> checkpoints.

The loop is here; checkpoints (writing, restoring, pruning) are in checkpoints.py,
the optimizer's pieces in optim.py, the weight average in averaging.py, metrics and
curves in metrics.py. It is longer than most modules because `Trainer.run` is one
piece: set-up, resume, the accumulation loop and saving share the accelerator's
state, and splitting them would pass a dozen values between functions.

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

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dream_vla_ros.finetune.adapters import (
    apply_lora,
    head_modules,
    set_full_finetuning,
    trainable_parameters,
)
from dream_vla_ros.finetune.averaging import WeightAverage
from dream_vla_ros.finetune.checkpoints import (
    STATE_JSON,
    TrainingState,
    prune_checkpoints,
    restore_training_checkpoint,
    save_training_checkpoint,
)
from dream_vla_ros.finetune.data import DemoData, StepBatchSampler, WindowDataset
from dream_vla_ros.finetune.errors import TrainingError
from dream_vla_ros.finetune.metrics import (
    append_metrics,
    plot_curves,
    summary_line,
    truncate_metrics,
)
from dream_vla_ros.finetune.objectives import BatchEncoder, TrainingObjective, draw_noise
from dream_vla_ros.finetune.optim import (
    check_gradients,
    check_optimizer_covers,
    freeze_to,
    lr_factor,
    param_groups,
)
from dream_vla_ros.finetune.recipe import Recipe
from dream_vla_ros.model.actions import ActionDecoder, DecodeSettings
from dream_vla_ros.model.checkpoint import (
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

__all__ = ["TrainResult", "Trainer", "TrainingError"]


@dataclass
class TrainResult:
    output: Path
    final: Path
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    samples_per_s: float = 0.0
    summary: str = ""


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

    def _image_size(self) -> int:
        """The base's input size (its config.json; a preset's default)."""
        base = self.recipe.model.base
        if base in PRESETS:
            return preset(base).image_size
        return load_config(Path(base), self.recipe.model.unnorm_key).image_size

    def _build_model(self, data: DemoData) -> tuple[DreamVLA, Path | None, Any]:
        """Model with the recipe's head; returns (model, base dir or None, tokenizer)."""
        r = self.recipe
        action = {
            "head": r.model.head,
            "action_dim": data.action_dim,
            "chunk": r.data.chunk,
            "proprio_dim": data.proprio_dim,
            "clock_input": r.data.clock,
            "relative_dims": r.data.relative_dims,
            "flow_steps": r.model.flow_steps,
            "flow_attention": r.model.flow_attention,
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
            base_cfg = load_config(base_dir, r.model.unnorm_key)
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
    def _state(self) -> TrainingState:
        return TrainingState(
            recipe=self.recipe,
            model=self.model,
            peft_model=self.peft_model,
            base_dir=self.base_dir,
            data=self.data,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            param_names=self.param_names,
            average=self.ema,
        )

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
        self.data = data = DemoData(r.data, image_size=self._image_size(), stats=self._stats())
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
        start_step = (
            restore_training_checkpoint(self._state(), self.resume)
            if self.resume is not None
            else 0
        )
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
            truncate_metrics(self.out, start_step)
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
                append_metrics(self.out, v)
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
                    append_metrics(
                        self.out,
                        {"step": step, "loss": mean_loss, "lr": lr, "samples_per_s": samples_per_s},
                    )
                window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
            bar.update(1)
            last = step == t.steps
            if main and ((t.val_every and step % t.val_every == 0) or last):
                v = self.validate(step)
                if v is not None:
                    self.validations.append(v)
                    append_metrics(self.out, v)
                plot_curves(self.losses, self.validations, r.model.head, self.out / "curves.png")
            if (t.save_every and step % t.save_every == 0 and not last) or last:
                accelerator.wait_for_everyone()
                if main:
                    name = "final" if last else f"checkpoint-{step:06d}"
                    loss = self.losses[-1][1] if self.losses else None
                    save_training_checkpoint(self._state(), self.out, name, step, {"loss": loss})
                    prune_checkpoints(self.out, t.keep_last)
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
        result.summary = summary_line(
            r.name,
            result.steps,
            time.perf_counter() - started,
            overall_sps,
            self.losses,
            self.validations,
            result.final,
        )
        if main:
            self.log(result.summary)
        return result
