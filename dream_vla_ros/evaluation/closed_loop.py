"""Closed-loop work in the MuJoCo world through the real ROS graph (docs/sim.md):

- `collect`: the `collect_world` graph (simulated controller, sim_world, the task's
  expert behind the teleop node, the recorder); per episode: new layout, record the
  expert's move, flag success (touch: from the measured joints; place: from the
  physics world's objects), return home.
- `evaluate`: controller + sim_world + policy (a checkpoint); per seed: the policy
  idles while the arm is brought home with a chunk, then the layout and instruction
  change, the policy is enabled, and the task's monitor decides success. Writes
  results.json, trajectories.png and rollout.gif.

Every node of the graph is its own process started by the launcher; this module
talks to them through a `GraphDriver` (evaluation/driver.py) made by `connect`.
Collection and evaluation of both tasks are in this one module (longer than most):
they share the graph's start, the homing, the fault recovery and the counters, and
a task differs only in its monitor and its expert.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control.config import load_safety_config
from dream_vla_ros.data.episode import WAIT_FOR_STREAMS
from dream_vla_ros.evaluation.driver import (
    CONTROLLER_STATUS,
    POLICY_STATUS,
    Connect,
    GraphDriver,
    GraphError,
    at_pose,
    faulted,
)
from dream_vla_ros.evaluation.homing import HOME_TOLERANCE_RAD, at_home, home, where
from dream_vla_ros.evaluation.plots import plot_trajectories, write_gif
from dream_vla_ros.graphs import COLLECT_WORLD, SIM_WORLD, parse_arguments
from dream_vla_ros.launcher import Launcher
from dream_vla_ros.sim.place import (
    BOWL_COLOURS,
    MISS_MAX_M,
    SETTLE_S,
    STAGES,
    Miss,
    PlaceLayout,
    PlaceMonitor,
    Snapshot,
    expert_with_miss,
    place_naming,
    placed_by_naming,
    placed_for,
    sample_place_layout,
)
from dream_vla_ros.sim.task import (
    APPROACH_S,
    COLOURS,
    DESCEND_S,
    HOME,
    TOUCH_HOLD_S,
    TOUCH_WAIT_S,
    Layout,
    SuccessMonitor,
    fingertip,
    sample_layout,
    start_pose,
    touch_naming,
)
from dream_vla_ros.sim.world import CameraOffset, random_offset

__all__ = ["GraphError", "Rollout", "collect", "evaluate"]

TASKS = ("touch", "place")
# The policy's views (PolicySettings.views, the node's chunk_views) in each task's
# evaluations and demo: the place task's grasp needs the centimetre the averaged
# views gain (docs/place.md, "What was tried"); the touch task's figure was measured
# with one.
TASK_VIEWS = {"touch": 1, "place": 5}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; choose one of {list(TASKS)}")
    return task


def track_objects(client: GraphDriver, layout: PlaceLayout) -> PlaceMonitor:
    """Judge the place task from every /sim_world/objects report of this layout from
    now on (reports of the previous layout are ignored)."""
    monitor = PlaceMonitor(layout)

    def hook(report: dict) -> None:
        if report.get("seed") == layout.seed:
            monitor.update(Snapshot.from_dict(report))

    client.on_objects = hook
    return monitor


def start_recording(client: GraphDriver, timeout_s: float = 60.0) -> None:
    """/recorder/start, retried while the recorder has not yet discovered a publisher
    on each of its topics or a message from each stream (the cameras come up last);
    any other refusal is an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok, message = client.trigger("/recorder/start", check=False)
        if ok:
            return
        waiting = any(reason in message for reason in WAIT_FOR_STREAMS)
        if not waiting or time.monotonic() > deadline:
            raise GraphError(f"/recorder/start: {message}")
        time.sleep(0.5)


@dataclass
class Rollout:
    seed: int
    instruction: str
    success: bool
    touched: str
    distance_m: float
    seconds: float
    tip_path: list[list[float]] = field(default_factory=list)
    controller_fault: bool = False  # the controller faulted during the rollout
    stage: str = ""  # place: the furthest stage (reached, grasped, lifted, placed)
    detail: str = ""  # place: the final state in words
    stages: dict[str, float] = field(default_factory=dict)  # place: stage -> world time
    camera_offset: str = ""  # the front camera's offset (empty: nominal)
    # place: the fingertip's offset from the named cube's centre at the closest approach
    closest_offset_m: list[float] | None = None


def track(client: GraphDriver, layout: Layout) -> tuple[SuccessMonitor, list]:
    """Judge the layout's task from every measured joint state from now on; also
    keep the fingertip's path (the first 5000 states)."""
    from dream_vla_ros.control.kinematics import DHChain

    chain = DHChain.load()
    monitor = SuccessMonitor(layout, chain)
    path: list[list[float]] = []

    def hook(_t: float, q: np.ndarray) -> None:
        monitor.update(q)
        if len(path) < 5000:
            path.append(fingertip(chain, q)[0].tolist())

    client.on_state = hook
    return monitor, path


def _counts(status: dict[str, str]) -> np.ndarray:
    keys = (
        "ticks",
        "limited_ticks",
        "limited_clamped_ticks",
        "limited_slowed_ticks",
        "floor_lifted_points",
        "floor_ticks",
    )
    return np.array([int(status.get(k, 0)) for k in keys])


def limited_ticks(totals: np.ndarray) -> dict[str, float]:
    """The controller's ticks during the rollouts and the share its limits changed;
    the chunk targets it lifted onto the workspace floor."""
    ticks, limited, clamped, slowed, floor, floor_ticks = (int(v) for v in totals)
    return {
        "ticks": ticks,
        "limited": limited,
        "clamped": clamped,
        "slowed": slowed,
        "share": limited / ticks if ticks else 0.0,
        "floor_lifted_points": floor,
        "floor_ticks": floor_ticks,
    }


def controller_counts(client: GraphDriver, fresh: bool) -> np.ndarray:
    """The controller's cumulative tick counters; `fresh` waits for a report sent
    from now on (at most 3 s)."""
    if fresh:
        seen = client.diagnostics_count(CONTROLLER_STATUS)
        deadline = time.monotonic() + 3.0
        while client.diagnostics_count(CONTROLLER_STATUS) == seen and time.monotonic() < deadline:
            time.sleep(0.02)
    return _counts(client.status(CONTROLLER_STATUS))


def track_path(client: GraphDriver) -> list:
    """The fingertip's path from every measured joint state from now on (the first
    5000)."""
    from dream_vla_ros.control.kinematics import DHChain

    chain = DHChain.load()
    path: list[list[float]] = []

    def hook(_t: float, q: np.ndarray) -> None:
        if len(path) < 5000:
            path.append(fingertip(chain, q)[0].tolist())

    client.on_state = hook
    return path


def _launch(graph, argv: list[str], log_path: Path) -> tuple[Launcher, Any]:
    values = parse_arguments(graph, argv)
    log = log_path.open("w")
    launcher = Launcher(graph, values, out=log, grace_s=5.0)
    os.environ.update(launcher.env)  # this process joins the graph's DDS domain
    launcher.start()
    return launcher, log


def collect(
    connect: Connect,
    out_dir: str | Path,
    episodes: int,
    seed0: int = 1000,
    camera: tuple[int, int] = (320, 240),
    log: Callable[[str], None] = print,
    per_layout: int = 1,
    during_episode: Callable[[GraphDriver, int], None] | None = None,
    random_starts: int = 0,
    task: str = "touch",
    camera_offset: str = "",
    camera_randomise: bool = False,
    miss_radius: float = 0.0,
) -> dict[str, Any]:
    """Record `episodes` expert episodes: layout seeds seed0, seed0 + 1, ..., each
    demonstrated `per_layout` times (1-3) from home with a different named cube,
    starting with the seed's own (the same images with different instructions and
    actions: the colour word is what decides), then `random_starts` more times from
    a random pose over the table (`sim.task.start_pose`; the named cube cycles on),
    which shows the way to the cube from where a policy's errors take the arm.
    `during_episode(client, i)` runs once the expert has started episode i (the
    tests use it to make the controller fault).

    `task` place: the place expert; a layout's K namings are `place_naming` (each
    changes the cube and the bowl); success is the physics world's (the named
    cube placed once the expert's plan has ended). `camera_offset` moves the front
    camera for the whole collection (sim/world.py CameraOffset); `camera_randomise`
    draws a new offset for every episode instead (`random_offset(episode seed)`,
    within CAMERA_JITTER). `miss_radius` > 0 (place): each episode's expert first
    approaches beside the cube, `Miss.draw(episode seed, miss_radius)`, then moves
    over it and goes on (sim/place.py Miss)."""
    check_task(task)
    if not 0.0 <= miss_radius <= MISS_MAX_M or (miss_radius > 0 and task != "place"):
        raise ValueError(
            f"miss_radius must be 0-{MISS_MAX_M} m, and only the place task has one; "
            f"got {miss_radius} for {task}"
        )
    namings = len(COLOURS) if task == "touch" else len(COLOURS) * len(BOWL_COLOURS)
    if not 1 <= per_layout <= namings:
        raise ValueError(f"per_layout must be 1 to {namings}, got {per_layout}")
    if not 0 <= random_starts <= 2 * len(COLOURS):
        raise ValueError(f"random_starts must be 0 to {2 * len(COLOURS)}, got {random_starts}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    cycle = per_layout + random_starts
    limits = load_safety_config(None)  # the teleop node's (its limits_file is not set)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        f"output_dir:={out}",
        f"camera_width:={camera[0]}",
        f"camera_height:={camera[1]}",
        f"task:={task}",
        f"camera_offset:={camera_offset}",
    ]
    launcher, graph_log = _launch(COLLECT_WORLD, argv, out / "graph.log")
    client = connect("closed_loop_collect")
    client.watch()
    results = []
    faults = 0
    totals = np.zeros(6, dtype=int)  # the controller's counters over the episodes

    def expert_home() -> None:
        client.set_param("teleop", "task.start_seed", -1)
        client.set_param("teleop", "task.seed", -1)  # from the measured pose
        client.wait(lambda: at_home(client) or faulted(client), 30, lambda: where(client))

    def expert_to_start(start_seed: int) -> None:
        pose = start_pose(start_seed, limits.soft_lower, limits.soft_upper)
        client.set_param("teleop", "task.start_seed", start_seed)
        client.set_param("teleop", "task.seed", -1)
        client.wait(
            lambda: at_pose(client, pose, HOME_TOLERANCE_RAD) or faulted(client),
            30,
            f"the arm to reach the start pose {np.round(pose, 3).tolist()}",
        )

    def stop_expert() -> None:
        # After a fault the expert still streams its episode (the touch pose); a
        # re-enabled controller would go there first, and the next plan, from a
        # moving arm, would fight it. Plan from the stopped arm before the reset.
        client.set_param("teleop", "task.seed", -1)

    def begin_episode(seed: int) -> None:
        # The expert plans (inverse kinematics) before the recording starts and
        # moves once it runs: planning inside a recording can keep the teleop node
        # silent long enough on a loaded host to leave a gap in its commands.
        client.set_param("teleop", "task.hold", True)
        client.set_param("teleop", "task.seed", seed)
        start_recording(client)
        client.set_param("teleop", "task.hold", False)

    def go_home() -> int:
        return home(client, log, expert_home, before_reset=stop_expert)

    try:
        client.wait(lambda: client.measured() is not None, 120, "/joint_states (see graph.log)")
        faults += go_home()
        for i in range(episodes):
            if launcher.check() != 0 or launcher.deaths:
                died = launcher.failed or launcher.deaths[0]
                raise GraphError(f"a node died: {died} (see {out}/graph.log)")
            seed, j = seed0 + i // cycle, i % cycle
            layout: Layout | PlaceLayout
            if task == "place":
                layout = place_naming(seed, j)
                target = layout.cube
                client.set_param("sim_world", "task.bowl", layout.bowl)
                client.set_param("teleop", "task.bowl", layout.bowl)
            else:
                layout = touch_naming(seed, j)
                target = layout.target
            offset = camera_offset
            if camera_randomise:
                offset = random_offset(seed * 16 + j).text()
                client.set_param("sim_world", "camera.front_offset", offset)
            client.set_param("sim_world", "task.target", target)
            client.set_param("sim_world", "task.seed", seed)
            client.set_param("teleop", "task.target", target)
            client.set_param("recorder", "instruction", layout.instruction)
            start = "home"
            if j >= per_layout:
                start_seed = seed * 16 + j
                expert_to_start(start_seed)
                start = f"start pose {start_seed}"
            time.sleep(0.3)  # the new layout reaches the cameras
            before = controller_counts(client, fresh=False)
            if isinstance(layout, PlaceLayout):
                place_monitor = track_objects(client, layout)
                drawn = Miss.draw(seed * 16 + j, miss_radius) if miss_radius > 0 else None
                plan, miss = expert_with_miss(layout, limits.soft_lower, limits.soft_upper, drawn)
                if drawn is not None and miss is None:
                    log(
                        f"collect: episode {i + 1}: the point beside the cube "
                        f"({drawn.text()}) is out of reach; demonstrated without a miss"
                    )
                client.set_param("teleop", "task.miss", miss.text() if miss else "")
                measured = client.measured()
                plan.start(0.0, HOME if measured is None else measured)
                begin_episode(seed)
                if during_episode is not None:
                    during_episode(client, i)
                # the expert's plan, the arm's lag, the cube settling
                time.sleep(plan.duration_s + 1.0)
                deadline = time.monotonic() + 2.0
                while not placed_for(place_monitor, SETTLE_S) and time.monotonic() < deadline:
                    time.sleep(0.05)
                place = place_monitor.outcome
                client.on_objects = None
                ok, how = place.success, place.stage or "nothing"
                record = {
                    "bowl": layout.bowl,
                    "stage": place.stage,
                    "detail": place.detail,
                    "miss": miss.text() if miss else "",
                }
            else:
                monitor, _ = track(client, layout)
                begin_episode(seed)
                if during_episode is not None:
                    during_episode(client, i)
                # the expert's move and the arm's lag, then a short hold at the touch
                deadline = time.monotonic() + APPROACH_S + DESCEND_S + TOUCH_WAIT_S
                while not monitor.touched and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(TOUCH_HOLD_S)
                outcome = monitor.outcome
                client.on_state = None
                ok, how = outcome.success, outcome.touched or "none"
                record = {"touched": outcome.touched}
            # an episode the controller stopped is not a demonstration of the task
            fault = faulted(client)
            success = ok and not fault
            totals += controller_counts(client, fresh=True) - before
            client.trigger("/recorder/stop" if success else "/recorder/stop_failed")
            results.append(
                {
                    "seed": seed,
                    "target": target,
                    "start": start,
                    "success": success,
                    **record,
                    "camera_offset": offset,
                    "controller_fault": fault,
                }
            )
            verdict = "success" if success else f"FAILED ({how})"
            verdict += " (controller fault)" if fault else ""
            log(
                f"collect: episode {i + 1}/{episodes} seed {seed} from {start}: "
                f"{layout.instruction}: {verdict}"
            )
            faults += go_home()
    finally:
        client.close()
        launcher.shutdown()
        graph_log.close()
    summary = {
        "task": task,
        "camera_offset": camera_offset,
        "camera_randomise": camera_randomise,
        "miss_radius": miss_radius,
        "episodes": episodes,
        "per_layout": per_layout,
        "random_starts": random_starts,
        "expert_success_rate": float(np.mean([r["success"] for r in results])) if results else 0.0,
        "controller_resets": faults,
        # the controller's ticks while the expert drove (as evaluate reports them)
        "limited_ticks": limited_ticks(totals),
        "results": results,
    }
    (out / "collect.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate(
    connect: Connect,
    checkpoint: str | Path,
    out_dir: str | Path,
    seeds: list[int],
    timeout_s: float = 8.0,
    camera: tuple[int, int] = (320, 240),
    log: Callable[[str], None] = print,
    during_rollout: Callable[[GraphDriver, int], None] | None = None,
    task: str = "touch",
    camera_offset: str | tuple[str, ...] = "",
) -> dict[str, Any]:
    """Closed-loop success rate of a checkpoint over layout seeds.

    `task` place: the seed's own cube and bowl; a rollout ends once the cube has
    rested in the bowl for SETTLE_S or at the timeout, and reports its stages.
    `camera_offset` moves the front camera (sim/world.py CameraOffset); several
    offsets are used in turn, rollout k with offset k modulo their number.
    `during_rollout(client, k)` runs once the policy is enabled for rollout k (the
    tests use it to cut the simulated CAN feedback and check the recovery)."""
    check_task(task)
    if not seeds:
        raise ValueError("no evaluation seeds: --seeds must be >= 1")
    offsets = (camera_offset,) if isinstance(camera_offset, str) else tuple(camera_offset)
    for text in offsets:
        if text:
            CameraOffset.parse(text)  # a bad offset is one sentence before the graph starts
    from dream_vla_ros.model.checkpoint import load_config

    load_config(Path(checkpoint))  # a bad checkpoint is one sentence before the graph starts
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        f"checkpoint:={Path(checkpoint).resolve()}",
        f"camera_width:={camera[0]}",
        f"camera_height:={camera[1]}",
        "policy_enabled:=false",
        f"task:={task}",
        f"camera_offset:={offsets[0]}",
        f"chunk_views:={TASK_VIEWS[task]}",
    ]
    launcher, graph_log = _launch(SIM_WORLD, argv, out / "graph.log")
    client = connect("closed_loop_eval")
    client.watch()
    rollouts: list[Rollout] = []
    gif_frames: list[np.ndarray] = []
    faults = 0
    totals = np.zeros(6, dtype=int)  # the controller's counters over the rollouts
    try:
        client.wait(lambda: client.measured() is not None, 120, "/joint_states")
        client.wait(
            lambda: client.status(POLICY_STATUS).get("ready") == "True",
            180,
            "the policy to warm up (see graph.log)",
        )
        for k, seed in enumerate(seeds):
            if launcher.check() != 0 or launcher.deaths:
                died = launcher.failed or launcher.deaths[0]
                raise GraphError(f"a node died: {died} (see {out}/graph.log)")
            client.set_param("policy", "enabled", False)
            faults += home(client, log)
            layout: Layout | PlaceLayout = (
                sample_place_layout(seed) if task == "place" else sample_layout(seed)
            )
            offset = offsets[k % len(offsets)]
            if len(offsets) > 1:
                client.set_param("sim_world", "camera.front_offset", offset)
            client.set_param("sim_world", "task.seed", seed)
            client.send_instruction(layout.instruction)
            time.sleep(0.4)  # the new layout and instruction arrive before the policy runs
            if isinstance(layout, PlaceLayout):
                place_monitor = track_objects(client, layout)
                path = track_path(client)
                done = functools.partial(placed_for, place_monitor, SETTLE_S)
            else:
                monitor, path = track(client, layout)
                done = functools.partial(lambda m: bool(m.touched), monitor)

            if k == 0:
                client.record_frames(400 if task == "touch" else 1000)
            before = controller_counts(client, fresh=False)
            start = time.monotonic()
            client.set_param("policy", "enabled", True)
            if during_rollout is not None:
                during_rollout(client, k)
            while time.monotonic() - start < timeout_s and not done():
                time.sleep(0.05)
            client.set_param("policy", "enabled", False)
            elapsed = time.monotonic() - start
            client.on_state = None
            client.on_objects = None
            totals += controller_counts(client, fresh=True) - before
            if k == 0:
                gif_frames = client.take_frames()
            fault = faulted(client)  # reported with the rollout (a fault stops the arm)
            if isinstance(layout, PlaceLayout):
                p = place_monitor.outcome
                rollout = Rollout(
                    seed,
                    layout.instruction,
                    p.success,
                    "",
                    place_monitor.closest_m,
                    elapsed,
                    path,
                    fault,
                    p.stage,
                    p.detail,
                    dict(place_monitor.stages),
                )
                if place_monitor.closest_offset_m is not None:
                    rollout.closest_offset_m = [
                        round(float(v), 4) for v in place_monitor.closest_offset_m
                    ]
                how = (
                    f"stage {p.stage or 'none'}: {p.detail}; closest "
                    f"{place_monitor.closest_m * 100:.1f} cm"
                )
            else:
                o = monitor.outcome
                rollout = Rollout(
                    seed, layout.instruction, o.success, o.touched, o.distance_m, elapsed, path
                )
                rollout.controller_fault = fault
                how = f"touched {o.touched or 'nothing'}, closest {o.distance_m * 100:.1f} cm"
            rollout.camera_offset = offset
            rollouts.append(rollout)
            log(
                f"evaluate: seed {seed}: {layout.instruction}: "
                f"{'success' if rollout.success else 'failure'} ({how}, {elapsed:.1f} s"
                f"{', controller fault' if fault else ''})"
            )
        diagnostics = {n: client.status(f"dream_vla/{n}") for n in ("policy", "controller")}
    finally:
        client.close()
        launcher.shutdown()
        graph_log.close()
    rate = float(np.mean([r.success for r in rollouts])) if rollouts else 0.0
    listed = [{k: v for k, v in r.__dict__.items() if k != "tip_path"} for r in rollouts]
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "task": task,
        "camera_offsets": list(offsets),
        "policy_views": TASK_VIEWS[task],
        "seeds": seeds,
        "success_rate": rate,
        # the controller's ticks while the policy drove (each rollout's counters from
        # its start to the first report after it; reports come every second)
        "limited_ticks": limited_ticks(totals),
        "controller_resets": faults,
        "diagnostics": diagnostics,  # the nodes' last /diagnostics values
        "rollouts": listed,
    }
    if task == "place":
        # each rollout's furthest stage, and the placed share by what was named
        reached = [r.stage or "none" for r in rollouts]
        summary["stages"] = {s: reached.count(s) for s in ("none", *STAGES)}
        summary["placed_by_naming"] = placed_by_naming(listed)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_trajectories(rollouts, out / "trajectories.png", task)
    if gif_frames:
        write_gif(gif_frames, out / "rollout.gif")
    return summary
