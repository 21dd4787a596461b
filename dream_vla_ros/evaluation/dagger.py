"""Labels on the policy's own states (DAgger) for the place task, without ROS
(`dream-vla sim collect OUT --task place --dagger CHECKPOINT`; no ROS imports).

Expert demonstrations all start at home and go straight to the cube, so a policy a
few centimetres off is in states no demonstration visited. Here the policy drives
each layout in the place proxy's loop (evaluation/place_proxy.py: the controller on
a virtual clock, the firmware simulator's gripper, the physics), and at a handover
time drawn per episode the place expert takes over: planned afresh from the world
as it is then (the arm where the policy left it, the named cube where the policy
left it, turned as it rests), streamed as the teleop node streams it. The episode
written is the expert's continuation from the handover on, sampled as the offline
collector samples a demonstration (evaluation/offline_collect.py): measured joints,
the expert's target, both cameras, on the dataset's grid. Only continuations that
place the cube without a controller fault are written.

The episode clock: the continuation's first frame carries the time since the
policy's first observation (`clock_start_s` in the dataset, data/lerobot.py), the
clock the policy reads when it is in that state, so a clock checkpoint learns what
to do there at that time; stages come later than in a demonstration from home.

The expert cannot take over (the episode is reported and not written) when the named
cube does not rest on the table upright (in the fingers, lifted, tipped), already
lies in a bowl, or the named bowl holds another cube; its plan from there may fail
too (it may knock the cube on its way), and only placed ones are written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.evaluation.kinematic import ProxySettings, expert_planner, policy_planner
from dream_vla_ros.evaluation.offline_collect import (
    AFTER_PLAN_S,
    CAMERAS,
    SETTLE_WAIT_S,
    TELEOP_TIMING,
    EpisodeRun,
    Recorder,
    collect_episodes,
)
from dream_vla_ros.evaluation.place_proxy import Handover, place_servo_rollout
from dream_vla_ros.sim.place import (
    SETTLE_S,
    STAGES,
    PlaceExpert,
    PlaceLayout,
    PlaceMonitor,
    in_bowl,
    placed_for,
    sample_place_layout,
)
from dream_vla_ros.sim.task import CUBE_SIZE

HANDOVER_S = (0.5, 5.0)  # the handover time is drawn uniformly from here, 0.1 s steps
RESTING_M = 0.005  # a cube's centre this close to half its size above the table rests on it
POLICY_TIMING = {"replan_s": 0.1, "latency_s": 0.06}  # the policy node's (the proxy's)
# the place task's sim policy node's settings (config/policy_sim.yaml and the place
# task's views, evaluation/closed_loop.py TASK_VIEWS; a test keeps them equal)
SIM_POLICY = {"noise_scale": 0.5, "smooth_degree": 4, "ensemble_chunks": 16, "views": 5}


def check_handover(span: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in span)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo <= hi <= 20.0):
        raise ValueError(f"handover times must satisfy 0 <= first <= last <= 20 s, got {lo}, {hi}")
    return lo, hi


def draw_handover(seed: int, span: tuple[float, float]) -> float:
    """Episode `seed`'s handover time [s], on the 0.1 s grid of the dataset's frames."""
    lo, hi = span
    value = np.random.default_rng((seed, 0xDA)).uniform(lo, hi)
    return float(np.clip(round(value, 1), round(lo, 1), round(hi, 1)))


def layout_now(world, layout: PlaceLayout) -> tuple[PlaceLayout | None, str]:
    """The layout as the world has it now (cubes where they are, turned as they rest),
    or None and the reason the expert cannot take over from here."""
    cube = layout.cube
    centre = world.cube(cube)
    yaw = world.cube_yaw(cube)
    if abs(centre[2] - CUBE_SIZE / 2) > RESTING_M or yaw is None:
        return None, f"the {cube} cube does not rest upright on the table"
    if any(in_bowl(centre, b) for b in layout.bowls.values()):
        return None, f"the {cube} cube is in a bowl already"
    others = [
        c for c in world.colours if c != cube and in_bowl(world.cube(c), layout.bowls[layout.bowl])
    ]
    if others:
        return None, f"the {others[0]} cube is in the {layout.bowl} bowl"
    yaws = {c: world.cube_yaw(c) or 0.0 for c in world.colours}
    cubes = {c: world.cube(c) for c in world.colours}
    return PlaceLayout(layout.seed, cubes, dict(layout.bowls), cube, layout.bowl, yaws), ""


def dagger_episode(world, layout: PlaceLayout, policy, handover_s: float, fps: int) -> EpisodeRun:
    """The policy on `layout` until `handover_s`, then the expert (module docstring)."""
    cfg = load_safety_config()
    took: dict[str, Any] = {}

    def take(now: float, q: np.ndarray, monitor: PlaceMonitor):
        took["policy_stage"] = max(monitor.stages, key=STAGES.index, default="")
        closest = monitor.closest_m  # inf before the first physics tick
        took["policy_closest_m"] = round(closest, 4) if np.isfinite(closest) else None
        current, reason = layout_now(world, layout)
        if current is None:
            took["refused"] = reason
            return None
        try:
            expert = PlaceExpert(current, cfg.soft_lower, cfg.soft_upper)
        except RuntimeError as exc:  # no inverse kinematics from here
            took["refused"] = f"the expert cannot plan from here ({exc})"
            return None
        expert.start(now, q)
        took["plan_s"] = expert.duration_s
        took["recorder"] = Recorder(lambda _q: [world.render(c) for c in CAMERAS], expert, fps, now)
        return expert_planner(expert)

    def observe(now: float, q: np.ndarray) -> None:
        if "recorder" in took:
            took["recorder"](now, q)

    def done(now: float, monitor: PlaceMonitor) -> bool:
        if handover.taken_s is None:
            return False
        waited = now - handover.taken_s - took["plan_s"] - AFTER_PLAN_S
        return waited >= 0 and (placed_for(monitor, SETTLE_S) or waited >= SETTLE_WAIT_S)

    handover = Handover(handover_s, take, ProxySettings(servo=True, **TELEOP_TIMING))
    timing = ProxySettings(
        timeout_s=handover_s + 20.0, servo=True, lag_s=TELEOP_TIMING["lag_s"], **POLICY_TIMING
    )
    limits: dict[str, Any] = {}
    monitor, fault = place_servo_rollout(
        policy_planner(policy, layout.instruction),
        world,
        layout,
        timing,
        limits=limits,
        observe=observe,
        done=done,
        handover=handover,
    )
    outcome = monitor.outcome
    recorder = took.get("recorder")
    refused = took.get("refused", "")
    fields = {
        "handover_s": handover_s,
        "policy_stage": took.get("policy_stage", ""),
        "policy_closest_m": took.get("policy_closest_m"),
        "stage": outcome.stage,
        "detail": refused or outcome.detail,
    }
    success = recorder is not None and outcome.success and not fault
    return EpisodeRun(layout.instruction, recorder, success, fields, fault, limits, handover_s)


def collect_dagger(
    out_dir: str | Path,
    checkpoint: str | Path,
    episodes: int,
    seed0: int = 3000,
    camera: tuple[int, int] = (320, 240),
    handover: tuple[float, float] = HANDOVER_S,
    camera_offset: str = "",
    camera_randomise: bool = False,
    policy_settings=None,
    fps: int = 10,
    codec: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Episode i: layout seed0 + i (its own cube and bowl), the policy of `checkpoint`
    until a handover time drawn from `handover`, then the expert (module docstring).
    The placed continuations are written as a LeRobot dataset in `out_dir`; returns
    the summary kept in `meta/collect.json`. `policy_settings`: default the sim
    policy node's (`SIM_POLICY`)."""
    from dream_vla_ros.policy import Policy, PolicySettings

    span = check_handover(handover)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    settings = policy_settings or PolicySettings(**SIM_POLICY)
    policy = Policy.from_checkpoint(checkpoint, settings=settings)

    def run(world, seed: int, _j: int) -> EpisodeRun:
        layout = sample_place_layout(seed)
        return dagger_episode(world, layout, policy, draw_handover(seed, span), fps)

    meta = {"mode": "dagger", "checkpoint": str(checkpoint), "handover_s": list(span)}
    return collect_episodes(
        out_dir,
        run,
        episodes,
        seed0,
        camera,
        1,
        camera_offset,
        camera_randomise,
        fps,
        codec,
        log,
        "place",
        meta,
    )
