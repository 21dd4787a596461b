"""Kinematic closed-loop proxy for the touch-the-cube task (docs/sim.md).

Runs a checkpoint on layout seeds without ROS: render the front and wrist
cameras at the current joints, infer a chunk, apply its first `--execute`
actions exactly (the arm is where the policy says), repeat until a cube is
touched or `--timeout` seconds of actions have passed. No controller, no
latency, no servo lag: it measures what the model decides, in about 0.2 s per
layout, so 60 layouts take seconds instead of the ROS evaluation's minutes.
It is a proxy: the figure that counts is `dream-vla sim evaluate` through the
real graph (on the shipped checkpoint the two agreed within 3 of 60 layouts).

    .venv/bin/python scripts/kinematic_eval.py models/touch_tiny --seeds 60
    .venv/bin/python scripts/kinematic_eval.py runs/x/final --flow-steps 8 --execute 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dream_vla_ros.policy import Observation, Policy, PolicySettings
from dream_vla_ros.sim.task import HOME, SuccessMonitor, sample_layout
from dream_vla_ros.sim.world import PiperWorld


def rollout(policy: Policy, world: PiperWorld, seed: int, execute: int, timeout_s: float):
    layout = sample_layout(seed)
    world.set_cubes(layout.cubes)
    monitor = SuccessMonitor(layout)
    q = HOME.copy()
    policy.reset()
    steps = round(timeout_s / policy.cfg.action.action_period_s)
    done = 0
    while done < steps and not monitor.touched:
        images = [world.render_front(q), world.render_wrist(q)]
        chunk = policy.infer(Observation(images, layout.instruction, q.copy()))
        for action in chunk.actions[:execute]:
            q = np.asarray(action, dtype=np.float64).copy()
            monitor.update(q)
            done += 1
            if monitor.touched or done >= steps:
                break
    return layout, monitor.outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seeds", type=int, default=60, help="layouts to try")
    parser.add_argument("--seed0", type=int, default=5000, help="first layout seed")
    parser.add_argument("--execute", type=int, default=5, help="actions applied per chunk")
    parser.add_argument("--timeout", type=float, default=8.0, help="[s] of actions per layout")
    parser.add_argument("--flow-steps", type=int, default=0, help="0: the checkpoint's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--noise-seed", type=int, default=0, help="seed of the flow noise (reset per layout)"
    )
    args = parser.parse_args()
    if args.execute < 1 or args.seeds < 1:
        parser.error("--execute and --seeds must be >= 1")
    torch.set_num_threads(args.threads)
    settings = PolicySettings(flow_steps=args.flow_steps or None, seed=args.noise_seed)
    policy = Policy.from_checkpoint(args.checkpoint, settings=settings)
    world = PiperWorld(width=320, height=240)
    start = time.monotonic()
    wins = 0
    try:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            layout, o = rollout(policy, world, seed, args.execute, args.timeout)
            wins += o.success
            if not o.success:
                print(
                    f"seed {seed}: {layout.instruction}: touched {o.touched or 'nothing'}, "
                    f"closest {o.distance_m * 100:.1f} cm"
                )
    finally:
        world.close()
    print(
        f"kinematic: {wins}/{args.seeds} ({wins / args.seeds:.0%}) on seeds {args.seed0}-"
        f"{args.seed0 + args.seeds - 1}, {args.execute} actions per chunk, "
        f"noise seed {args.noise_seed}, {time.monotonic() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
