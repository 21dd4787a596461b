"""How far from the cube a place policy would close the fingers, queried open loop on
the expert's own states (no ROS imports).

The place expert runs a layout in the physics (evaluation/physics.py) with both
cameras rendered every 0.1 s. At a few lead times before the expert's grasp (the
start of its "close" segment) the policy sees that frame, the measured joints and the
episode clock, and its chunk's action for the instant `GRASP_INTO_S` into the close
(where the expert holds its grasp pose) is turned into a fingertip position by
forward kinematics. The error is that point's horizontal offset from the expert's
own grasp point, split along the line from the arm's base (radial) and across it
(tangential).

A closed-loop rollout mixes this error with what the policy's own motion adds; this
one is the policy's map from what it sees to where it grasps, on states every
demonstration visits. `bench/place_tolerance.py` measures how large an error the
expert's grasp itself survives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.evaluation.physics import rollout
from dream_vla_ros.sim.place import PlaceExpert, PlaceLayout, sample_place_layout
from dream_vla_ros.sim.task import HOME, fingertip

LEADS_S = (1.5, 1.0, 0.5)  # query this long before the expert starts to close
GRASP_INTO_S = 0.3  # the grasp pose: this far into the close (close + hold: 0.9 s)
FRAME_PERIOD_S = 0.1  # the datasets' frame grid
WITHIN_M = 0.02  # the share of errors below this is reported (bench/place_tolerance.py)


@dataclass(frozen=True)
class GraspQuery:
    layout: PlaceLayout
    images: list[np.ndarray]  # front, wrist
    joints: np.ndarray  # (7,) measured
    stamp_s: float  # the episode clock (0 at the first observation)
    draw: int  # which of the draws for this query (a sampling seed)


def base_axes(cube_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors on the table at a cube: along the line from the arm's base (radial:
    across the fingers' opening, the cubes facing the base) and across it (tangential)."""
    radial = np.asarray(cube_xy, dtype=np.float64) / np.linalg.norm(cube_xy)
    return radial, np.array([-radial[1], radial[0]])


# a query -> (times [s] on the episode clock (K,), joint targets (K, 7))
Predict = Callable[[GraspQuery], tuple[np.ndarray, np.ndarray]]


def policy_predict(policy) -> Predict:
    """The policy as a predictor: a fresh episode per query, its clock reading the
    query's stamp, the draw as the sampling seed."""
    from dream_vla_ros.policy import Observation

    def predict(q: GraspQuery) -> tuple[np.ndarray, np.ndarray]:
        policy.reset()
        policy.clock(0.0)  # the episode started at 0: the query reads its own stamp
        policy.generator.manual_seed(q.draw)
        obs = Observation(q.images, q.layout.instruction, q.joints, q.stamp_s)
        c = policy.infer(obs)
        times = q.stamp_s + c.period_s * np.arange(1, len(c.actions) + 1)
        return times, np.asarray(c.actions, dtype=np.float64)

    return predict


def grasp_errors(
    predict: Predict,
    seeds: list[int],
    world,
    leads_s: tuple[float, ...] = LEADS_S,
    draws: int = 4,
    cube: str = "",
    bowl: str = "",
) -> dict:
    """The errors (see the module docstring) on layouts `seeds` (each layout's own cube
    and bowl, unless `cube` or `bowl` names one for every layout); each query's error
    is the mean over `draws` predictions."""
    cfg = load_safety_config()
    lower, upper = np.array(cfg.position_lower), np.array(cfg.position_upper)
    chain = DHChain.load()
    rows = []
    for seed in seeds:
        layout = sample_place_layout(seed, cube, bowl)
        expert = PlaceExpert(layout, lower, upper)
        expert.start(0.0, HOME)  # as the rollout starts it: from HOME at 0 s
        close_s = expert.segment_start("close")
        grasp = {name: pose for name, pose, _ in expert.poses}["close"]
        target = fingertip(chain, grasp[:6])[0][:2]
        run = rollout(
            world,
            layout,
            expert,
            close_s,
            frame_every_s=FRAME_PERIOD_S,
            cameras=("front", "wrist"),
        )
        times = np.asarray(run.times)
        radial, tangential = base_axes(layout.cubes[layout.cube][:2])
        for lead in leads_s:
            i = max(1, int(round((close_s - lead) / FRAME_PERIOD_S)))  # frame i at 0.1 i s
            stamp = i * FRAME_PERIOD_S
            joints = run.joints[int(np.argmin(np.abs(times - stamp)))]
            offsets = []
            for draw in range(draws):
                query = GraspQuery(layout, list(run.frames[i].values()), joints, stamp, draw)
                t, actions = predict(query)
                k = int(np.argmin(np.abs(t - (close_s + GRASP_INTO_S))))
                offsets.append(fingertip(chain, actions[k, :6])[0][:2] - target)
            e = np.mean(offsets, axis=0)
            rows.append(
                {
                    "seed": seed,
                    "lead_s": lead,
                    "error_xy_m": [round(float(v), 4) for v in e],
                    "radial_m": round(float(e @ radial), 4),
                    "tangential_m": round(float(e @ tangential), 4),
                }
            )
    return {"rows": rows, "by_lead": summarise(rows, leads_s)}


def summarise(rows: list[dict], leads_s: tuple[float, ...]) -> dict[str, dict]:
    out = {}
    for lead in leads_s:
        sel = [r for r in rows if r["lead_s"] == lead]
        norm = np.array([np.hypot(*r["error_xy_m"]) for r in sel])
        radial = np.array([r["radial_m"] for r in sel])
        tangential = np.array([r["tangential_m"] for r in sel])
        out[f"{lead:g}"] = {
            "median_m": round(float(np.median(norm)), 4),
            "within_2cm": round(float(np.mean(norm < WITHIN_M)), 3),
            "radial_mean_m": round(float(radial.mean()), 4),
            "radial_rms_m": round(float(np.sqrt((radial**2).mean())), 4),
            "tangential_mean_m": round(float(tangential.mean()), 4),
            "tangential_rms_m": round(float(np.sqrt((tangential**2).mean())), 4),
        }
    return out
