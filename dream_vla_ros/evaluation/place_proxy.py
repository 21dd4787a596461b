"""The place task's closed-loop proxy: the graph's timing and physics without ROS
(`dream-vla sim proxy --task place`).

A planner (the policy on rendered images, or the place expert streaming its plan as
the teleop node does) sends chunks to the project's `ChunkController` (splicing, the
limits of config/piper.yaml) running at 200 Hz on a virtual clock. The arm follows
the command `lag_s` behind; the gripper is the firmware simulator's `SimGripper`,
stalled by the object the world reports between the fingers; the physics steps every
10 ms as the `sim_world` node's does; `PlaceMonitor` judges the stages and success.
A rollout ends when the cube has rested in the bowl for `SETTLE_S` or at the timeout.

It screens checkpoints and controller changes in seconds a layout; the figure that
counts is `dream-vla sim evaluate --task place` through the real graph.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.control.controller import ChunkController
from dream_vla_ros.evaluation.kinematic import (
    ChunksInFlight,
    Planner,
    ProxySettings,
    add_controller_stats,
    policy_planner,
)
from dream_vla_ros.evaluation.physics import GRIPPER_EFFORT_NM, GRIPPER_SPEED_M_S, reset
from dream_vla_ros.policy import PolicySettings
from dream_vla_ros.robot.piper_sim import SimGripper
from dream_vla_ros.sim.place import (
    SETTLE_S,
    STAGES,
    PlaceLayout,
    PlaceMonitor,
    Snapshot,
    placed_for,
)
from dream_vla_ros.sim.world import CameraOffset


@dataclass
class Handover:
    """Another planner takes over a rollout `at_s` after its start: `take(now,
    measured joints, monitor)` returns it, planned from the world as it is then, or
    None when it cannot take over (the rollout then ends); its chunks reach the
    controller with `timing`'s period and latency. `taken_s` is set to the moment it
    took over."""

    at_s: float
    take: Callable[[float, np.ndarray, PlaceMonitor], Planner | None]
    timing: ProxySettings
    taken_s: float | None = None


PHYSICS_EVERY_TICKS = 2  # 10 ms physics ticks at 200 Hz control (the node's 100 Hz)
START_S = 1.0  # a rollout's first tick (the controller refuses a chunk stamped 0)


def place_servo_rollout(
    planner: Planner,
    world,
    layout: PlaceLayout,
    timing: ProxySettings,
    control_hz: float = 200.0,
    limits: dict[str, Any] | None = None,
    observe: Callable[[float, np.ndarray], None] | None = None,
    done: Callable[[float, PlaceMonitor], bool] | None = None,
    handover: Handover | None = None,
) -> tuple[PlaceMonitor, str]:
    """One layout (see the module docstring) with the re-plan period, latency, arm lag
    and timeout of `timing`. After every physics tick `observe(now, measured joints)`
    runs (the world is then current), and the rollout ends when `done(now, monitor)`
    (default: the cube has rested in the bowl for `SETTLE_S`). With a `handover` its
    planner drives from `handover.at_s` on. Returns the monitor and the controller's
    fault reason ('' when it ran to the end)."""
    cfg = load_safety_config()
    period = 1.0 / control_hz
    controller = ChunkController(cfg, period)
    q = reset(world, layout)
    grip = SimGripper(
        float(cfg.position_upper[6]), GRIPPER_SPEED_M_S, q[6], q[6], GRIPPER_EFFORT_NM, enabled=True
    )
    monitor = PlaceMonitor(layout)
    t0 = START_S
    controller.activate(q, t0)
    chunks = ChunksInFlight(planner, controller, timing, control_hz)
    sent = [q.copy()] * (round(timing.lag_s * control_hz) + 1)  # commands, oldest first
    physics_dt = PHYSICS_EVERY_TICKS * period

    def render() -> list[np.ndarray]:
        return [world.render("front"), world.render("wrist")]

    fault = ""
    for k in range(round(timing.timeout_s * control_hz)):
        now = t0 + k * period
        if (
            handover is not None
            and handover.taken_s is None
            and k >= handover.at_s * control_hz - 1e-6
        ):
            successor = handover.take(now, q.copy(), monitor)
            if successor is None:
                break
            chunks.hand_over(successor, handover.timing, k)
            handover.taken_s = now
        chunks.tick(k, now, q, render)
        command = controller.tick(now, q)
        if command is None:
            fault = controller.reason
            break
        sent = sent[1:] + [command.position.copy()]
        q[:6] = sent[0][:6]
        grip.target = float(sent[0][6])
        if k % PHYSICS_EVERY_TICKS == 0:
            grip.obstacle_m = world.gripper_obstacle()
            grip.step(physics_dt)
            q[6] = grip.position
            world.step(q, grip.effort_nm, physics_dt)
            monitor.update(Snapshot.of(world))
            if observe is not None:
                observe(now, q.copy())
            if done(now, monitor) if done is not None else placed_for(monitor, SETTLE_S):
                break
    if limits is not None:
        add_controller_stats(limits, controller)
    return monitor, fault


def _rounded(v: np.ndarray | None) -> list[float] | None:
    return None if v is None else [round(float(x), 4) for x in v]


def run_place_proxy(
    checkpoint: str | Path,
    seeds: list[int],
    settings: ProxySettings,
    policy_settings: PolicySettings | None = None,
    out: str | Path | None = None,
    camera_offsets: list[CameraOffset] | None = None,
    log=print,
    cube: str = "",
    bowl: str = "",
) -> dict[str, Any]:
    """The policy on the place task over `seeds` (each layout's own cube and bowl,
    unless `cube` or `bowl` names one for every layout); rollout k sees the front
    camera at `camera_offsets[k % len]` (default nominal). Returns (and with `out`,
    writes results.json) the successes, the furthest stages and the controller's
    limited ticks."""
    from dream_vla_ros.policy import Policy
    from dream_vla_ros.sim.place import (
        BOWL_COLOURS,
        check_choice,
        placed_by_naming,
        sample_place_layout,
    )
    from dream_vla_ros.sim.task import COLOURS
    from dream_vla_ros.sim.world import PiperWorld

    check_choice(cube, COLOURS, "cube")
    check_choice(bowl, BOWL_COLOURS, "bowl")

    policy = Policy.from_checkpoint(checkpoint, settings=policy_settings or PolicySettings())
    world = PiperWorld(width=settings.width, height=settings.height, bowls=BOWL_COLOURS)
    offsets = camera_offsets or [CameraOffset()]
    start = time.monotonic()
    rollouts = []
    limits: dict[str, Any] = {}
    try:
        for k, seed in enumerate(seeds):
            layout = sample_place_layout(seed, cube, bowl)
            offset = offsets[k % len(offsets)]
            world.set_front_offset(offset)
            monitor, fault = place_servo_rollout(
                policy_planner(policy, layout.instruction),
                world,
                layout,
                settings,
                limits=limits,
            )
            o = monitor.outcome
            rollouts.append(
                {
                    "seed": seed,
                    "instruction": layout.instruction,
                    "success": o.success,
                    "stage": o.stage,
                    "detail": o.detail,
                    "closest_m": round(monitor.closest_m, 4),
                    "closest_offset_m": _rounded(monitor.closest_offset_m),
                    "cube_xy_m": [round(float(v), 4) for v in layout.cubes[layout.cube][:2]],
                    "camera_offset": offset.as_list(),
                    "controller_fault": fault,
                }
            )
            if not o.success:
                log(
                    f"seed {seed}: {layout.instruction}: furthest stage {o.stage or 'none'}; "
                    f"{o.detail}; closest {monitor.closest_m * 100:.1f} cm"
                    + (f"; controller fault: {fault}" if fault else "")
                )
    finally:
        world.close()
    stages = Counter(r["stage"] or "none" for r in rollouts)
    limits["limited_share"] = round(limits.get("limited", 0) / max(limits.get("ticks", 0), 1), 3)
    summary = {
        "checkpoint": str(checkpoint),
        "task": "place",
        "mode": "servo",
        "settings": settings.__dict__,
        "successes": sum(r["success"] for r in rollouts),
        "stages": {s: stages.get(s, 0) for s in ("none", *STAGES)},
        "placed_by_naming": placed_by_naming(rollouts),
        "controller_faults": sum(bool(r["controller_fault"]) for r in rollouts),
        "seconds": round(time.monotonic() - start, 1),
        "controller_limits": limits,
        "rollouts": rollouts,
    }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
