"""The kinematic closed-loop proxy of the touch-the-cube task (`dream-vla sim proxy`).

A checkpoint runs on layout seeds without ROS: the front and wrist cameras are
rendered at the current joints, a chunk is inferred, and then either

- `rollout`: its first `execute` actions are applied exactly (the arm is where the
  policy says); no controller, no latency, no servo lag: it measures what the model
  decides, in about 0.2 s per layout; or
- `servo_rollout`: the graph's timing: the project's chunk controller (splicing, the
  limits of config/piper.yaml) at 200 Hz on a virtual clock, a chunk every
  `replan_s` that reaches the controller `latency_s` after its observation, the arm
  `lag_s` behind its command.

It is a proxy: the figure that counts is `dream-vla sim evaluate` through the real
graph (docs/sim.md compares the two).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.policy import Observation, Policy, PolicySettings
from dream_vla_ros.sim.task import HOME, Layout, Outcome, SuccessMonitor, sample_layout


@dataclass(frozen=True)
class ProxySettings:
    execute: int = 5  # actions applied per chunk (kinematic mode)
    timeout_s: float = 8.0  # seconds of actions per layout
    servo: bool = False  # through the chunk controller on a virtual clock
    replan_s: float = 0.1  # servo: re-plan period (the graph: each 10 Hz frame)
    latency_s: float = 0.06  # servo: observation stamp to chunk at the controller
    lag_s: float = 0.0  # servo: the arm behind its command
    width: int = 320
    height: int = 240

    def __post_init__(self) -> None:
        if self.execute < 1:
            raise ValueError(f"execute must be >= 1, got {self.execute}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.replan_s < 0.005 or self.latency_s < 0 or self.lag_s < 0:
            raise ValueError(
                "replan_s must be >= 0.005 s (one control tick) and latency_s, lag_s >= 0; "
                f"got {self.replan_s}, {self.latency_s}, {self.lag_s}"
            )


def rollout(policy: Policy, world, seed: int, execute: int, timeout_s: float):
    """Apply each chunk's first `execute` actions exactly until a cube is touched or
    `timeout_s` seconds of actions have passed; returns (layout, outcome)."""
    layout = sample_layout(seed)
    world.set_cubes(layout.cubes)
    monitor = SuccessMonitor(layout)
    q = HOME.copy()
    policy.reset()
    period = policy.cfg.action.action_period_s
    steps = round(timeout_s / period)
    done = 0
    while done < steps and not monitor.touched:
        images = [world.render_front(q), world.render_wrist(q)]
        stamp = done * period  # q is the pose at that instant
        chunk = policy.infer(Observation(images, layout.instruction, q.copy(), stamp))
        for action in chunk.actions[:execute]:
            q = np.asarray(action, dtype=np.float64).copy()
            monitor.update(q)
            done += 1
            if monitor.touched or done >= steps:
                break
    return layout, monitor.outcome


@dataclass(frozen=True)
class Chunk:
    stamp_s: float
    times_s: np.ndarray  # (K,) time from the stamp
    points: np.ndarray  # (K, 7)


# A planner gets (now, the measured joints, a function that renders the cameras) and
# returns a chunk, or None for nothing this time.
Planner = Callable[[float, np.ndarray, Callable[[], list[np.ndarray]]], Chunk | None]


def policy_planner(policy, instruction: str) -> Planner:
    """The policy node's step: the front and wrist images and the instruction in, its
    chunk out, stamped with the observation's time."""
    from dream_vla_ros.policy import Observation

    policy.reset()

    def plan(now: float, q: np.ndarray, render) -> Chunk:
        c = policy.infer(Observation(render(), instruction, q.copy(), now))
        times = c.period_s * np.arange(1, len(c.actions) + 1)
        return Chunk(c.stamp_s, times, np.asarray(c.actions, dtype=np.float64))

    return plan


def expert_planner(source, points: int = 10, dt_s: float = 0.02) -> Planner:
    """The teleop node's step: the source's next `points` targets `dt_s` apart."""
    horizon = dt_s * np.arange(1, points + 1)
    started = False

    def plan(now: float, q: np.ndarray, render) -> Chunk | None:
        nonlocal started
        if not started:
            source.start(now, q)
            started = True
        future = source.preview(now, now + horizon)
        return None if future is None else Chunk(now, horizon, np.asarray(future))

    return plan


def servo_rollout(
    policy: Policy,
    world,
    seed: int,
    replan_s: float,
    latency_s: float,
    timeout_s: float,
    lag_s: float = 0.0,
    control_hz: float = 200.0,
    limits: dict[str, Any] | None = None,
) -> tuple[Layout, Outcome]:
    """The graph's timing without ROS (see the module docstring). `limits`: a dict
    the controller's tick counts are added to (ticks, limited, clamped, slowed and
    the joints involved), as the controller node reports them on /diagnostics."""
    layout = sample_layout(seed)
    timing = ProxySettings(
        timeout_s=timeout_s, servo=True, replan_s=replan_s, latency_s=latency_s, lag_s=lag_s
    )
    planner = policy_planner(policy, layout.instruction)
    monitor, _ = touch_servo_rollout(planner, world, layout, timing, control_hz, limits)
    return layout, monitor.outcome


class ChunksInFlight:
    """A planner's chunks on their way to the controller on the virtual clock: one
    planned every `timing.replan_s`, submitted `timing.latency_s` after."""

    def __init__(self, planner: Planner, controller, timing: ProxySettings, control_hz: float):
        self.planner, self.controller = planner, controller
        self.control_hz = control_hz
        self.replan = max(round(timing.replan_s * control_hz), 1)
        self.delay = round(timing.latency_s * control_hz)
        self.first = 0  # the tick the planner took over at
        self.pending: list[tuple[int, Chunk]] = []  # (tick it arrives at, chunk)

    def hand_over(self, planner: Planner, timing: ProxySettings, k: int) -> None:
        """From tick k on `planner` plans, with `timing`'s period and latency; the
        chunks of the one before that are still on their way are dropped."""
        self.planner, self.first, self.pending = planner, k, []
        self.replan = max(round(timing.replan_s * self.control_hz), 1)
        self.delay = round(timing.latency_s * self.control_hz)

    def tick(self, k: int, now: float, q: np.ndarray, render) -> None:
        """Tick k at `now` with the measured joints `q`: plan when due, and submit
        what has arrived (a rejection is counted by the controller)."""
        from dream_vla_ros.control import JOINT_NAMES
        from dream_vla_ros.control.validation import ChunkRejected

        if (k - self.first) % self.replan == 0:
            chunk = self.planner(now, q.copy(), render)
            if chunk is not None:
                self.pending.append((k + self.delay, chunk))
        while self.pending and self.pending[0][0] <= k:
            _, c = self.pending.pop(0)
            with contextlib.suppress(ChunkRejected):
                self.controller.submit(
                    JOINT_NAMES, c.stamp_s, c.times_s.tolist(), c.points.tolist(), now
                )


def touch_servo_rollout(
    planner: Planner,
    world,
    layout: Layout,
    timing: ProxySettings,
    control_hz: float = 200.0,
    limits: dict[str, Any] | None = None,
    observe: Callable[[float, np.ndarray], None] | None = None,
    done: Callable[[float, SuccessMonitor], bool] | None = None,
) -> tuple[SuccessMonitor, str]:
    """One touch layout from home: `planner`'s chunks every `timing.replan_s`, at the
    controller `latency_s` after their stamp, the arm `lag_s` behind its command, for
    at most `timing.timeout_s`. After every tick `observe(now, measured joints)` runs,
    and the rollout ends when `done(now, monitor)` (default: a cube is touched).
    Returns the monitor and the controller's fault reason ('' when it ran on)."""
    from dream_vla_ros.control.config import load_safety_config
    from dream_vla_ros.control.controller import ChunkController

    world.set_cubes(layout.cubes)
    monitor = SuccessMonitor(layout)
    period = 1.0 / control_hz
    controller = ChunkController(load_safety_config(), period)
    q = HOME.copy()
    t0 = 1.0  # the virtual clock starts here: the controller refuses a chunk stamped 0
    controller.activate(q, t0)
    chunks = ChunksInFlight(planner, controller, timing, control_hz)
    sent = [q.copy()] * (round(timing.lag_s * control_hz) + 1)  # commands, oldest first

    def render() -> list[np.ndarray]:
        return [world.render_front(q), world.render_wrist(q)]

    fault = ""
    for k in range(round(timing.timeout_s * control_hz)):
        now = t0 + k * period
        chunks.tick(k, now, q, render)
        command = controller.tick(now, q)
        if command is None:
            fault = controller.reason  # a tracking fault: the arm stops
            break
        sent = sent[1:] + [command.position.copy()]
        q = sent[0]
        monitor.update(q)
        if observe is not None:
            observe(now, q.copy())
        if done(now, monitor) if done is not None else bool(monitor.touched):
            break
    if limits is not None:
        add_controller_stats(limits, controller)
    return monitor, fault


def add_controller_stats(limits: dict[str, Any], controller) -> None:
    """Add a ChunkController's tick counts to `limits` (ticks, limited, clamped,
    slowed and the joints involved), as the controller node reports them."""
    s = controller.stats
    for key, n in (
        ("ticks", s.ticks),
        ("limited", s.limited_ticks),
        ("clamped", s.clamped_ticks),
        ("slowed", s.slowed_ticks),
        ("floor_lifted_points", s.floor_lifted_points),
        ("floor_ticks", s.floor_ticks),
    ):
        limits[key] = limits.get(key, 0) + n
    for key, by_joint in (
        ("clamped_by_joint", s.clamped_by_joint),
        ("slowed_by_joint", s.slowed_by_joint),
    ):
        merged = limits.setdefault(key, {})
        for name, n in by_joint.items():
            merged[name] = merged.get(name, 0) + n


def run_proxy(
    checkpoint: str | Path,
    seeds: list[int],
    settings: ProxySettings,
    policy_settings: PolicySettings | None = None,
    out: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """The proxy over `seeds`; returns (and with `out`, writes results.json) the
    successes, the wrong-cube and no-touch counts and every rollout."""
    from dream_vla_ros.sim.world import PiperWorld

    policy = Policy.from_checkpoint(checkpoint, settings=policy_settings or PolicySettings())
    world = PiperWorld(width=settings.width, height=settings.height)
    start = time.monotonic()
    rollouts = []
    limits: dict[str, Any] = {}
    try:
        for seed in seeds:
            if settings.servo:
                layout, o = servo_rollout(
                    policy,
                    world,
                    seed,
                    settings.replan_s,
                    settings.latency_s,
                    settings.timeout_s,
                    settings.lag_s,
                    limits=limits,
                )
            else:
                layout, o = rollout(policy, world, seed, settings.execute, settings.timeout_s)
            rollouts.append(
                {
                    "seed": seed,
                    "instruction": layout.instruction,
                    "success": o.success,
                    "touched": o.touched,
                    "distance_m": o.distance_m,
                }
            )
            if not o.success:
                log(
                    f"seed {seed}: {layout.instruction}: touched {o.touched or 'nothing'}, "
                    f"closest {o.distance_m * 100:.1f} cm"
                )
    finally:
        world.close()
    summary = {
        "checkpoint": str(checkpoint),
        "mode": "servo" if settings.servo else "kinematic",
        "settings": settings.__dict__,
        "successes": sum(r["success"] for r in rollouts),
        "wrong_cube": sum(bool(r["touched"]) and not r["success"] for r in rollouts),
        "none": sum(not r["touched"] for r in rollouts),
        "seconds": round(time.monotonic() - start, 1),
        "rollouts": rollouts,
    }
    if limits:
        # the controller's ticks over all rollouts: how much of the executed motion
        # the limits changed (a tick is limited when any joint's command differs
        # from the spliced plan), and why
        limits["limited_share"] = round(limits["limited"] / max(limits["ticks"], 1), 3)
        summary["controller_limits"] = limits
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
