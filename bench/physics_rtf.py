"""Real-time factor of the MuJoCo physics world (prints figures).

The place expert's rollouts (evaluation/physics.py: the arm, the firmware's gripper
model, the physics in 2 ms steps, the success check every 10 ms tick), three ways
on the same layouts:

- physics alone;
- physics with both cameras (front + wrist) rendered at the sim_world node's rate
  and size (10 Hz, 320x240);
- the baseline: the touch task's kinematic world rendering both cameras at the same
  rate along the same joint path (what the touch task's sim_world does).

Real-time factor = simulated seconds / wall seconds (> 1: faster than real time).
Medians over the layouts.

    python bench/physics_rtf.py [--layouts 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.evaluation.physics import rollout
from dream_vla_ros.sim.place import BOWL_COLOURS, PlaceExpert, sample_place_layout
from dream_vla_ros.sim.world import PHYSICS_STEP_S, PiperWorld


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layouts", type=int, default=5)
    ap.add_argument("--seed0", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=12.0, help="simulated seconds a layout")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--camera-hz", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = load_safety_config()
    lower, upper = np.array(cfg.position_lower), np.array(cfg.position_upper)
    place = PiperWorld(width=args.width, height=args.height, bowls=BOWL_COLOURS)
    touch = PiperWorld(width=args.width, height=args.height)
    rtf: dict[str, list[float]] = {"physics": [], "physics_cameras": [], "kinematic_cameras": []}
    success = 0
    for seed in range(args.seed0, args.seed0 + args.layouts):
        layout = sample_place_layout(seed)
        t = time.perf_counter()
        run = rollout(place, layout, PlaceExpert(layout, lower, upper), args.duration)
        rtf["physics"].append(args.duration / (time.perf_counter() - t))
        success += run.monitor.outcome.success
        t = time.perf_counter()
        rollout(
            place,
            layout,
            PlaceExpert(layout, lower, upper),
            args.duration,
            frame_every_s=1.0 / args.camera_hz,
            cameras=("front", "wrist"),
        )
        rtf["physics_cameras"].append(args.duration / (time.perf_counter() - t))
        # the baseline: the same joint path, kinematic, both cameras at the same rate
        path = run.joints[:: max(1, round(1.0 / args.camera_hz / 0.01))]
        t = time.perf_counter()
        for q in path:
            touch.render_front(q)
            touch.render_wrist(q)
        rtf["kinematic_cameras"].append(args.duration / (time.perf_counter() - t))
    place.close()
    touch.close()
    result = {
        "layouts": args.layouts,
        "expert_success": success,
        "physics_step_s": PHYSICS_STEP_S,
        "camera": f"{args.width}x{args.height} at {args.camera_hz:g} Hz, front + wrist",
        **{f"rtf_{k}": round(float(np.median(v)), 2) for k, v in rtf.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.layouts} layouts of the place expert ({success} placed), physics step "
        f"{PHYSICS_STEP_S * 1000:.0f} ms, cameras {result['camera']}"
    )
    print(f"  physics alone            real-time factor {result['rtf_physics']:7.2f}")
    print(f"  physics + both cameras   real-time factor {result['rtf_physics_cameras']:7.2f}")
    print(f"  baseline: kinematic world, both cameras   {result['rtf_kinematic_cameras']:7.2f}")


if __name__ == "__main__":
    main()
