"""Training throughput and peak memory per optimizer step (issue: finetuning).

Each configuration runs in its own child process (so peak memory is its own):
model + LoRA/full + the objective + AdamW, batches of the toy dataset's real
frames (two cameras, 224x224 after preprocessing), `--steps` timed steps after
`--warmup` untimed ones. Printed per configuration: step time, samples/s, peak
memory (CPU: the process's max RSS above the interpreter with torch loaded; GPU:
torch.cuda.max_memory_allocated), and in the same run the ratios of LoRA against
full finetuning and of gradient checkpointing against none.

    python bench/train_step.py                               # tiny + mid on CPU
    python bench/train_step.py --presets dream-vla-7b --device cuda --dtype bf16 \\
        --batch 8 --configs lora-gc                          # the 7B LoRA step on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {  # name -> (lora, gradient checkpointing)
    "full": (False, False),
    "lora": (True, False),
    "lora-gc": (True, True),
}


def child(args: argparse.Namespace) -> None:
    import torch

    from dream_vla_ros.finetune.adapters import apply_lora, set_full_finetuning
    from dream_vla_ros.finetune.data import DemoData
    from dream_vla_ros.finetune.objectives import BatchEncoder, TrainingObjective, draw_noise
    from dream_vla_ros.finetune.optim import freeze_to
    from dream_vla_ros.finetune.recipe import DataConfig, LoraSettings
    from dream_vla_ros.model import DreamVLA, preset
    from dream_vla_ros.policy.prompt import PromptBuilder, byte_tokenizer

    torch.set_num_threads(args.threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    device = torch.device(args.device)
    lora, gc = CONFIGS[args.config]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    data = DemoData(DataConfig(dataset=args.dataset, chunk=8)) if args.dataset else None
    with torch.device(device):
        model = DreamVLA(preset(args.preset, head=args.head, proprio_dim=7))
    if lora:
        apply_lora(model, LoraSettings(r=32, alpha=16), freeze_vision=False)
    else:
        set_full_finetuning(model, freeze_vision=False)
    model.set_gradient_checkpointing(gc)
    if lora and dtype != torch.float32:
        freeze_to(model, dtype)  # as the trainer does: frozen base in half precision
    model.train()
    cfg = model.cfg
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    encoder = BatchEncoder(model, PromptBuilder(byte_tokenizer(cfg.newline_token_id + 1), cfg))
    objective = TrainingObjective(model)
    g = torch.Generator().manual_seed(0)
    n = len(data.windows["train"]) if data is not None else 0

    def synthetic(k: int) -> dict:
        """A sample of random frames and actions (no dataset: no video decoder needed)."""
        r = torch.Generator().manual_seed(k)
        return {
            "images": torch.randint(0, 256, (2, 3, 224, 224), generator=r, dtype=torch.uint8),
            "actions": torch.rand(8, 7, generator=r) * 2 - 1,
            "pad": torch.ones(8, dtype=torch.bool),
            "task": "pick up the red cube",
            "state": torch.rand(7, generator=r) * 2 - 1,
        }

    def step(k: int) -> float:
        if data is None:
            samples = [synthetic(k * args.batch + i) for i in range(args.batch)]
        else:
            samples = [data.sample("train", (k * args.batch + i) % n) for i in range(args.batch)]
        inputs = encoder(torch.utils.data.default_collate(samples), device)
        noise = draw_noise(args.head, args.batch, cfg.action.chunk, cfg.action.action_dim, g)
        inputs.update({k: v.to(device) for k, v in noise.items()})
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = objective(**inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    for k in range(args.warmup):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(args.steps):
        start = time.perf_counter()
        step(args.warmup + k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    times.sort()
    median = times[len(times) // 2]
    print(
        json.dumps(
            {
                "step_s": median,
                "samples_per_s": args.batch / median,
                "peak_mb": peak_mb,
                "trainable": sum(p.numel() for p in params),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--head", default="flow", choices=["flow", "discrete", "l1"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="random frames instead of the toy dataset (needs no video decoder)",
    )
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset: Path | str = ""
        if not args.synthetic:
            from dream_vla_ros.finetune.toy import write_toy_dataset

            dataset = write_toy_dataset(Path(tmp) / "toy", episodes=3, length=20)
        print(
            f"train step, head {args.head}, batch {args.batch} x 2 images, {args.device} "
            f"{args.dtype}, median of {args.steps} steps"
        )
        print(
            f"{'preset':<14}{'config':<10}{'step':>10}{'samples/s':>11}{'peak':>11}{'trainable':>13}"
        )
        for name in args.presets:
            results = {}
            for config in args.configs:
                cmd = [sys.executable, __file__, "--child", "1", "--preset", name]
                cmd += ["--config", config, "--dataset", str(dataset), "--head", args.head]
                cmd += ["--device", args.device, "--dtype", args.dtype]
                cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
                cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"{name:<14}{config:<10} failed: {out.stderr.strip()[-400:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[config] = r
                figures[f"{name} {config}"] = r
                print(
                    f"{name:<14}{config:<10}{r['step_s'] * 1e3:>8.0f}ms{r['samples_per_s']:>11.1f}"
                    f"{r['peak_mb']:>9.0f}MB{r['trainable']:>13,}"
                )
            if "full" in results and "lora" in results:
                f, lo = results["full"], results["lora"]
                print(
                    f"{name:<14}LoRA vs full: step x{lo['step_s'] / f['step_s']:.2f}, "
                    f"memory x{lo['peak_mb'] / max(f['peak_mb'], 1e-9):.2f}"
                )
            if "lora" in results and "lora-gc" in results:
                lo, gc = results["lora"], results["lora-gc"]
                print(
                    f"{name:<14}checkpointing vs none: step x{gc['step_s'] / lo['step_s']:.2f}, "
                    f"memory x{gc['peak_mb'] / max(lo['peak_mb'], 1e-9):.2f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
