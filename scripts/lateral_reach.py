"""How far sideways the first plan reaches, against the expert (docs/sim.md, sessions 19-20).

For each layout the policy sees the home observation (both cameras rendered, no
ROS) and plans `--draws` chunks; the fingertip of each chunk's last action (1.6 s
ahead) is compared with the expert's fingertip at the same instant (6 cm above the
named cube). Over a set of layouts it prints the slope of the plan's lateral (y)
end point against the expert's (1 = reaches as wide as the expert; below 1 = the
plan shrinks towards the centre line, where the wrong cubes of sessions 17-19 lie)
and the median end-point error in the table plane, and the share of draws whose end
point lies nearest the named cube (the first decision; chance is a third). A screen,
not a success figure: session 20 widened the slope from 0.64 to 0.76 and session 21
raised the named-cube share from 75 to 89 % (guidance), neither with more successes.

    python scripts/lateral_reach.py CHECKPOINT [CHECKPOINT ...] [--guidance W]

Sets: the pipeline's training layouts (`--train-seed0`, `--train-layouts`, every
cube named) and unseen ones (`--unseen-seed0`, `--unseen-layouts`, each seed's
own cube). About a minute per checkpoint on the 2-core VM.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")


def main() -> None:
    from dream_vla_ros.control import load_safety_config
    from dream_vla_ros.control.kinematics import DHChain
    from dream_vla_ros.policy import Observation, Policy, PolicySettings
    from dream_vla_ros.sim.task import COLOURS, HOME, TouchExpert, fingertip, sample_layout
    from dream_vla_ros.sim.world import PiperWorld

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--train-seed0", type=int, default=1000)
    ap.add_argument("--train-layouts", type=int, default=20)
    ap.add_argument("--unseen-seed0", type=int, default=5000)
    ap.add_argument("--unseen-layouts", type=int, default=60)
    ap.add_argument("--draws", type=int, default=4, help="chunks per layout (median end)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=1.0, help="PolicySettings.guidance_scale")
    ap.add_argument("--guidance-until", type=float, default=1.0)
    ap.add_argument("--noise-scale", type=float, default=1.0, help="PolicySettings.noise_scale")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    limits = load_safety_config()
    lower, upper = np.asarray(limits.soft_lower), np.asarray(limits.soft_upper)
    chain = DHChain.load()
    train = [
        sample_layout(s, c)
        for s in range(args.train_seed0, args.train_seed0 + args.train_layouts)
        for c in COLOURS
    ]
    unseen = [
        sample_layout(s) for s in range(args.unseen_seed0, args.unseen_seed0 + args.unseen_layouts)
    ]
    world = PiperWorld(width=320, height=240)
    try:
        for ckpt in args.checkpoints:
            settings = PolicySettings(
                seed=0,
                guidance_scale=args.guidance,
                guidance_until=args.guidance_until,
                noise_scale=args.noise_scale,
            )
            policy = Policy.from_checkpoint(ckpt, settings=settings)
            for name, layouts in (("training layouts", train), ("unseen layouts", unseen)):
                expert_xy, plan_xy = [], []
                named = 0
                for layout in layouts:
                    world.set_cubes(layout.cubes)
                    images = [world.render_front(HOME), world.render_wrist(HOME)]
                    policy.reset()
                    ends = []
                    for _ in range(args.draws):
                        # every draw at the same instant: a clock checkpoint reads 0 s
                        obs = Observation(images, layout.instruction, HOME.copy(), 1.0)
                        chunk = policy.infer(obs)
                        end = fingertip(chain, np.asarray(chunk.actions[-1]))[0][:2]
                        ends.append(end)
                        gaps = {c: np.linalg.norm(p[:2] - end) for c, p in layout.cubes.items()}
                        named += min(gaps, key=gaps.__getitem__) == layout.target
                    plan_xy.append(np.median(ends, axis=0))
                    # the expert at the chunk's horizon (1.6 s = APPROACH_S with chunk 16)
                    expert = TouchExpert(layout, lower, upper, chain=chain)
                    expert.start(0.0, HOME)
                    q = expert.command(chunk.period_s * len(chunk.actions))
                    assert q is not None
                    expert_xy.append(fingertip(chain, q)[0][:2])
                e, p = np.array(expert_xy), np.array(plan_xy)
                slope = np.polyfit(e[:, 1], p[:, 1], 1)[0]
                error = np.median(np.linalg.norm(e - p, axis=1))
                print(
                    f"{ckpt}: {name} ({len(layouts)}): lateral slope {slope:.2f}, "
                    f"median end error {error * 100:.1f} cm, "
                    f"ending nearest the named cube {named / (len(layouts) * args.draws):.0%}",
                    flush=True,
                )
    finally:
        world.close()


if __name__ == "__main__":
    main()
