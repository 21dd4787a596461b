"""Decision probe for the touch-the-cube task (docs/sim.md, "Why the policy fails").

Trains a preset from scratch on the task's first decision only: the front and
wrist images at the home pose, the instruction, and the expert's first chunk
(home -> above the named cube). Then, for held-out layouts (seeds 5000+) and the
first training layouts, it infers one chunk at home and checks which cube the
chunk's last pose is nearest to. A policy that cannot get this right cannot
solve the task; chance is 1/3. Rendering is direct (no ROS), the model, the
objective, the prompt and the policy are the project's own code.

    .venv/bin/python scripts/decision_probe.py --steps 400 --layouts 100
    .venv/bin/python scripts/decision_probe.py --colour red --head l1   # no language needed
    .venv/bin/python scripts/decision_probe.py --base models/tiny_grounded --steps 600
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.finetune.data import quantile_stats
from dream_vla_ros.finetune.objectives import BatchEncoder, TrainingObjective, draw_noise
from dream_vla_ros.model.checkpoint import load_base_weights, load_config, save_checkpoint
from dream_vla_ros.model.config import PRESETS, preset
from dream_vla_ros.model.modeling import DreamVLA
from dream_vla_ros.policy import Observation, Policy
from dream_vla_ros.policy.preprocess import ImagePreprocessor
from dream_vla_ros.policy.prompt import PromptBuilder, byte_tokenizer, instruction_words
from dream_vla_ros.sim.task import COLOURS, HOME, TouchExpert, fingertip, sample_layout
from dream_vla_ros.sim.world import PiperWorld

CHUNK = 16  # 1.6 s at 10 Hz: the chunk at home ends above the named cube
PERIOD_S = 0.1


def home_samples(world, pre, seeds, colours, lower, upper):
    """Per (layout, colour): the two home images (224x224), the expert's chunk."""
    images, chunks, layouts = [], [], []
    for seed in seeds:
        layout = sample_layout(seed)
        world.set_cubes(layout.cubes)
        frames = pre.resized([world.render_front(HOME), world.render_wrist(HOME)])
        for colour in colours:
            named = dataclasses.replace(layout, target=colour)
            expert = TouchExpert(named, lower, upper)
            expert.start(0.0, HOME)
            chunks.append(np.stack([expert.command(PERIOD_S * (k + 1)) for k in range(CHUNK)]))
            images.append(frames)
            layouts.append(named)
    return torch.stack(images), np.stack(chunks), layouts


def score(policy, world, chain, layouts, chunks) -> tuple[int, float]:
    """Nearest cube to the inferred chunk's end == the named one; mean distance [m]
    between the inferred and the expert's end points."""
    right, dist = 0, []
    for layout, expert in zip(layouts, chunks, strict=True):
        world.set_cubes(layout.cubes)
        obs = Observation(
            [world.render_front(HOME), world.render_wrist(HOME)], layout.instruction, HOME
        )
        tip, _ = fingertip(chain, policy.infer(obs).actions[-1])
        nearest = min(COLOURS, key=lambda c: np.linalg.norm(tip[:2] - layout.cubes[c][:2]))
        right += nearest == layout.target
        dist.append(np.linalg.norm(tip - fingertip(chain, expert[-1])[0]))
    return right, float(np.mean(dist))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument(
        "--base",
        default="",
        help="start from this base checkpoint (e.g. models/tiny_grounded), vision tower frozen",
    )
    ap.add_argument("--head", default="flow", choices=["flow", "l1"])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layouts", type=int, default=100, help="training layouts (seeds 1000+)")
    ap.add_argument("--colour", default="", help="always name this cube (no language needed)")
    ap.add_argument("--test-layouts", type=int, default=20, help="held-out layouts (seeds 5000+)")
    args = ap.parse_args()
    torch.manual_seed(0)
    limits = load_safety_config()
    lower, upper = np.asarray(limits.soft_lower), np.asarray(limits.soft_upper)
    world, pre, chain = PiperWorld(width=320, height=240), ImagePreprocessor(), DHChain.load()
    colours = [args.colour] if args.colour else list(COLOURS)
    images, chunks, layouts = home_samples(
        world, pre, range(1000, 1000 + args.layouts), colours, lower, upper
    )
    stats = quantile_stats(chunks.reshape(-1, chunks.shape[-1]))
    targets = torch.from_numpy(stats.normalise(chunks)).float()
    action = {
        "head": args.head,
        "action_dim": chunks.shape[-1],
        "chunk": CHUNK,
        "proprio_dim": 0,
        "action_period_s": PERIOD_S,
    }
    if args.base:
        base = load_config(Path(args.base))
        cfg = dataclasses.replace(base, action=dataclasses.replace(base.action, **action))
        model = DreamVLA(cfg)
        load_base_weights(model, args.base)
        model.visual.requires_grad_(False)
        tokenizer = Tokenizer.from_file(f"{args.base}/tokenizer.json")
    else:
        cfg = preset(args.preset, **action)
        model = DreamVLA(cfg)
        tokenizer = byte_tokenizer(
            cfg.newline_token_id + 1,
            instruction_words([layout.instruction for layout in layouts]),
            cfg.base_vocab_size,
        )
    tasks = [layout.instruction for layout in layouts]
    encoder, objective = (
        BatchEncoder(model, PromptBuilder(tokenizer, cfg)),
        TrainingObjective(model),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    started, recent = time.perf_counter(), []
    for step in range(args.steps):
        for group in optimizer.param_groups:  # 50 warm-up steps, then cosine to 5 %
            cosine = 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / args.steps))
            group["lr"] = args.lr * min(1.0, (step + 1) / 50) * cosine
        idx = torch.randint(0, len(targets), (args.batch,), generator=g)
        batch = {
            "images": images[idx],
            "task": [tasks[i] for i in idx],
            "actions": targets[idx],
            "pad": torch.ones(args.batch, CHUNK, dtype=torch.bool),
        }
        inputs = encoder(batch, torch.device("cpu"))
        inputs.update(draw_noise(args.head, args.batch, CHUNK, chunks.shape[-1], g))
        loss = objective(**inputs)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        recent = [*recent[-99:], loss.item()]
        if (step + 1) % 100 == 0:
            took = time.perf_counter() - started
            print(f"step {step + 1}: loss {np.mean(recent):.4f}, {took:.0f} s")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, tmp, stats, None)
        tokenizer.save(f"{tmp}/tokenizer.json")
        policy = Policy.from_checkpoint(tmp)
        report(policy, world, pre, chain, args, colours, lower, upper)
    print(
        f"{args.base or args.preset}, head {args.head}, {args.steps} steps, lr {args.lr}, "
        f"{args.layouts} layouts x {len(colours)} colour(s), final loss {np.mean(recent):.4f}"
    )


def report(policy, world, pre, chain, args, colours, lower, upper) -> None:
    n_seen = min(args.layouts, 20)
    seen = home_samples(world, pre, range(1000, 1000 + n_seen), colours, lower, upper)
    held = home_samples(world, pre, range(5000, 5000 + args.test_layouts), colours, lower, upper)
    for name, (_, expert_chunks, probe_layouts) in (("training", seen), ("held-out", held)):
        right, dist = score(policy, world, chain, probe_layouts, expert_chunks)
        print(
            f"{name} layouts: right cube {right}/{len(probe_layouts)} (chance 1/3), "
            f"mean distance to the expert's end point {dist:.3f} m"
        )


if __name__ == "__main__":
    main()
