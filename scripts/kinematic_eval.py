"""Kinematic closed-loop proxy for the touch-the-cube task (docs/sim.md).

Runs a checkpoint on layout seeds without ROS: render the front and wrist
cameras at the current joints, infer a chunk, apply its first `--execute`
actions exactly (the arm is where the policy says), repeat until a cube is
touched or `--timeout` seconds of actions have passed. No controller, no
latency, no servo lag: it measures what the model decides, in about 0.2 s per
layout, so 60 layouts take seconds instead of the ROS evaluation's minutes.
It is a proxy: the figure that counts is `dream-vla sim evaluate` through the
real graph (on the shipped checkpoint the two agreed within 3 of 60 layouts).

`--servo` runs the graph's timing instead: the project's chunk controller (its
splicing and the limits of config/piper.yaml) at 200 Hz on a virtual clock, a
chunk every `--replan-s` that arrives `--latency-s` after its observation, the
arm `--lag-s` behind its command (docs/sim.md, "Session 17").

    .venv/bin/python scripts/kinematic_eval.py models/touch_tiny --seeds 60
    .venv/bin/python scripts/kinematic_eval.py runs/x/final --flow-steps 8 --execute 2
    .venv/bin/python scripts/kinematic_eval.py models/touch_tiny --servo --replan-s 0.2
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from dream_vla_ros.model.actions import ALGORITHMS, DecodeSettings
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
        stamp = done * policy.cfg.action.action_period_s  # q is the pose at that instant
        chunk = policy.infer(Observation(images, layout.instruction, q.copy(), stamp))
        for action in chunk.actions[:execute]:
            q = np.asarray(action, dtype=np.float64).copy()
            monitor.update(q)
            done += 1
            if monitor.touched or done >= steps:
                break
    return layout, monitor.outcome


def servo_rollout(
    policy: Policy,
    world: PiperWorld,
    seed: int,
    replan_s: float,
    latency_s: float,
    timeout_s: float,
    lag_s: float = 0.0,
    control_hz: float = 200.0,
):
    """The graph's timing without ROS: the project's chunk controller (splicing, the
    limits of config/piper.yaml) at `control_hz` on a virtual clock, an arm that is
    where it is commanded, an observation every `replan_s` whose chunk reaches the
    controller `latency_s` later (the graph: 0.2 s at 5 Hz, ~0.06 s stamp to chunk);
    `lag_s`: the arm (what the cameras show, what touches) is the command that long ago."""
    from dream_vla_ros.control import JOINT_NAMES
    from dream_vla_ros.control.config import load_safety_config
    from dream_vla_ros.control.controller import ChunkController
    from dream_vla_ros.control.validation import ChunkRejected

    layout = sample_layout(seed)
    world.set_cubes(layout.cubes)
    monitor = SuccessMonitor(layout)
    period = 1.0 / control_hz
    controller = ChunkController(load_safety_config(), period)
    q = HOME.copy()
    t0 = 1.0  # the virtual clock starts here: the controller refuses a chunk stamped 0
    controller.activate(q, t0)
    policy.reset()
    ticks = round(timeout_s * control_hz)
    replan, delay = round(replan_s * control_hz), round(latency_s * control_hz)
    sent = [q.copy()] * (round(lag_s * control_hz) + 1)  # commands, oldest first
    pending: list[tuple[int, object]] = []  # (tick it arrives at, chunk)
    for k in range(ticks):
        now = t0 + k * period
        if k % replan == 0:
            images = [world.render_front(q), world.render_wrist(q)]
            chunk = policy.infer(Observation(images, layout.instruction, q.copy(), now))
            pending.append((k + delay, chunk))
        while pending and pending[0][0] <= k:
            _, c = pending.pop(0)
            times = c.period_s * np.arange(1, len(c.actions) + 1)
            with contextlib.suppress(ChunkRejected):  # counted by the controller
                controller.submit(JOINT_NAMES, c.stamp_s, times.tolist(), c.actions.tolist(), now)
        command = controller.tick(now, q)
        if command is None:
            break  # a tracking fault: the arm stops
        sent = sent[1:] + [command.position.copy()]
        q = sent[0]
        monitor.update(q)
        if monitor.touched:
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
    parser.add_argument(
        "--prefix-actions", type=int, default=0, help="inpaint this many actions (policy)"
    )
    parser.add_argument("--prefix-min-weight", type=float, default=1.0)
    parser.add_argument(
        "--noise-correlation", type=float, default=0.0, help="start noise shared by a chunk"
    )
    parser.add_argument(
        "--noise-scale", type=float, default=1.0, help="flow start noise scale (1: as trained)"
    )
    parser.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance weight (1: off)"
    )
    parser.add_argument(
        "--guidance-until", type=float, default=1.0, help="guide the flow steps before this t"
    )
    parser.add_argument(
        "--decode-steps", type=int, default=1, help="discrete head: unmasking steps"
    )
    parser.add_argument(
        "--decode-algorithm",
        default="maskgit_plus",
        choices=ALGORITHMS,
        help="discrete head: unmasking order",
    )
    parser.add_argument(
        "--decode-temperature", type=float, default=0.0, help="discrete head: 0 = argmax"
    )
    parser.add_argument(
        "--servo",
        action="store_true",
        help="through the chunk controller on a virtual clock (re-plan, latency below)",
    )
    parser.add_argument("--replan-s", type=float, default=0.2, help="--servo: re-plan period")
    parser.add_argument("--latency-s", type=float, default=0.06, help="--servo: stamp to chunk")
    parser.add_argument("--lag-s", type=float, default=0.0, help="--servo: arm behind command")
    args = parser.parse_args()
    if args.execute < 1 or args.seeds < 1:
        parser.error("--execute and --seeds must be >= 1")
    if args.replan_s < 0.005 or args.latency_s < 0 or args.lag_s < 0:
        parser.error("--replan-s must be >= 0.005 s (one control tick), --latency-s, --lag-s >= 0")
    torch.set_num_threads(args.threads)
    try:
        decode = DecodeSettings(
            steps=args.decode_steps,
            algorithm=args.decode_algorithm,
            temperature=args.decode_temperature,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        settings = PolicySettings(
            decode=decode,
            flow_steps=args.flow_steps or None,
            seed=args.noise_seed,
            prefix_actions=args.prefix_actions,
            prefix_min_weight=args.prefix_min_weight,
            noise_correlation=args.noise_correlation,
            noise_scale=args.noise_scale,
            guidance_scale=args.guidance,
            guidance_until=args.guidance_until,
        )
    except ValueError as exc:
        parser.error(str(exc))
    policy = Policy.from_checkpoint(args.checkpoint, settings=settings)
    world = PiperWorld(width=320, height=240)
    start = time.monotonic()
    wins = 0
    try:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            if args.servo:
                layout, o = servo_rollout(
                    policy, world, seed, args.replan_s, args.latency_s, args.timeout, args.lag_s
                )
            else:
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
        f"{args.seed0 + args.seeds - 1}, "
        + (
            f"servo: re-plan {args.replan_s} s, latency {args.latency_s} s, lag {args.lag_s} s, "
            if args.servo
            else f"{args.execute} actions per chunk, "
        )
        + f"noise seed {args.noise_seed} (correlation {args.noise_correlation}, "
        f"scale {args.noise_scale}), "
        f"guidance {args.guidance} (until t {args.guidance_until}), "
        f"decode {args.decode_steps} steps {args.decode_algorithm} "
        f"(temperature {args.decode_temperature}), "
        f"prefix {args.prefix_actions} actions "
        f"(weights 1 -> {args.prefix_min_weight}), {time.monotonic() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
