"""How precisely must a policy know where the cube is? (prints figures)

The place expert plans its whole task for a cube moved `error` away from where the
cube really is, in the physics without ROS (evaluation/physics.py), and the rollout
runs on the real layout: the fraction placed as the error grows is the precision
the place task asks of whatever locates the cube. Three directions of the error:
along the line from the arm's base to the cube (radial: the cubes face the base, so
this is across the fingers' opening), across it (tangential: along the fingers'
opening), and a direction drawn per layout. The error 0 is the baseline, measured in
the same run. A layout whose believed cube is out of the arm's reach is left out
of that row.

    python bench/place_tolerance.py [--layouts 30] [--errors-cm 0,1.5,2,2.5,3] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.evaluation.grasp_error import base_axes
from dream_vla_ros.evaluation.physics import rollout
from dream_vla_ros.sim.place import BOWL_COLOURS, STAGES, PlaceExpert, sample_place_layout
from dream_vla_ros.sim.world import PiperWorld

DIRECTIONS = ("radial", "tangential", "random")


def shifted(layout, offset_xy: np.ndarray):
    """The layout with its named cube moved by `offset_xy` (what the expert believes)."""
    cubes = dict(layout.cubes)
    cubes[layout.cube] = layout.cubes[layout.cube] + np.r_[offset_xy, 0.0]
    return dataclasses.replace(layout, cubes=cubes)


def offset(layout, direction: str, error_m: float) -> np.ndarray:
    radial, tangential = base_axes(layout.cubes[layout.cube][:2])
    if direction == "radial":
        u = radial
    elif direction == "tangential":
        u = tangential
    else:
        a = np.random.default_rng(layout.seed).uniform(0.0, 2.0 * np.pi)
        u = np.array([np.cos(a), np.sin(a)])
    return error_m * u


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layouts", type=int, default=30)
    ap.add_argument("--seed0", type=int, default=5000)
    ap.add_argument("--errors-cm", default="0,1.5,2,2.5,3")
    ap.add_argument("--directions", default=",".join(DIRECTIONS), help="of the error")
    ap.add_argument("--duration", type=float, default=12.0, help="simulated seconds a rollout")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    errors = [float(e) / 100.0 for e in args.errors_cm.split(",")]
    cfg = load_safety_config()
    lower, upper = np.array(cfg.position_lower), np.array(cfg.position_upper)
    world = PiperWorld(bowls=BOWL_COLOURS)
    layouts = [sample_place_layout(s) for s in range(args.seed0, args.seed0 + args.layouts)]
    rows = []
    directions = [d for d in args.directions.split(",") if d]
    if not directions or set(directions) - set(DIRECTIONS):
        ap.error(f"--directions: a comma-separated subset of {','.join(DIRECTIONS)}")
    for direction in directions:
        for error in errors:
            if error == 0.0 and direction != directions[0]:
                continue  # one baseline
            stages = dict.fromkeys(("none", *STAGES), 0)
            placed = unreachable = 0
            for lay in layouts:
                believed = shifted(lay, offset(lay, direction, error))
                try:
                    expert = PlaceExpert(believed, lower, upper)
                except RuntimeError:  # the believed cube is out of the arm's reach
                    unreachable += 1
                    continue
                run = rollout(world, lay, expert, args.duration)
                outcome = run.monitor.outcome
                stages[outcome.stage or "none"] += 1
                placed += outcome.success
            rows.append(
                {
                    "direction": "none" if error == 0.0 else direction,
                    "error_cm": round(error * 100, 2),
                    "placed": placed,
                    "layouts": len(layouts) - unreachable,
                    "furthest_stage": stages,
                }
            )
            if not args.json:
                r = rows[-1]
                print(
                    f"{r['direction']:>10} {r['error_cm']:4.1f} cm: placed {r['placed']:3d} / "
                    f"{r['layouts']}  furthest stage {stages}",
                    flush=True,
                )
    world.close()
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
