"""The experts' demonstrations without ROS, straight into a LeRobot dataset
(`dream-vla sim collect OUT --task touch|place --offline`; no ROS imports).

Each episode is a proxy rollout with the expert streamed as the teleop node streams
it (10 points 20 ms apart at 50 Hz, 5 ms late, the arm 20 ms behind its command):
the project's `ChunkController` at 200 Hz on a virtual clock. Place
(evaluation/place_proxy.py): the firmware simulator's `SimGripper` and the MuJoCo
physics every 10 ms. Touch (evaluation/kinematic.py): the arm over the cubes, no
physics (as the touch world renders them). Layouts, namings, misses and camera
draws are the graph collection's (`evaluation/closed_loop.collect`): episode i is
layout seed0 + i // per_layout with naming i % per_layout, the camera drawn from
`seed * 16 + j`.

It samples what `dream-vla dataset build` samples from a recording, on the same
10 Hz grid: `observation.state` the measured joints, `action` the expert's target
at that instant (the teleop command), the front and wrist images rendered at that
instant. A place episode lasts the expert's plan plus 1 s, and up to 2 s more until
the cube has rested in the bowl; a touch episode the expert's move, up to
TOUCH_WAIT_S more until the fingertip reaches a cube, and TOUCH_HOLD_S after (the
graph collection's waits). Only successful episodes (the named cube placed, or
touched, without a controller fault) are written; `meta/collect.json` lists every
episode, written or not. Ctrl-C stops the collection after the episode in progress
and writes the dataset of the successful ones so far (a second Ctrl-C stops at once,
without a dataset).

What differs from a recording: no DDS or camera latency (each frame is rendered at
its grid time, where a recorded frame is up to 100 ms old) and the arm follows its
command by a fixed lag rather than the CAN simulator's dynamics. It is the fast way
to many demonstrations (2.4 s an episode on this VM, about 20 s through the graph); the
graph collection stays the one that exercises the recorder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control import JOINT_NAMES, load_safety_config
from dream_vla_ros.data.lerobot import (
    CameraSpec,
    DatasetError,
    LeRobotWriter,
    check_output_folder,
)
from dream_vla_ros.evaluation.interrupt import StopAfterEpisode
from dream_vla_ros.evaluation.kinematic import ProxySettings, expert_planner, touch_servo_rollout
from dream_vla_ros.evaluation.place_proxy import START_S, place_servo_rollout
from dream_vla_ros.sim.place import (
    BOWL_COLOURS,
    MISS_MAX_M,
    SETTLE_S,
    Miss,
    PlaceMonitor,
    expert_with_miss,
    place_naming,
    placed_for,
)
from dream_vla_ros.sim.task import (
    APPROACH_S,
    COLOURS,
    DESCEND_S,
    HOME,
    TOUCH_HOLD_S,
    TOUCH_WAIT_S,
    SuccessMonitor,
    TouchExpert,
    touch_naming,
)
from dream_vla_ros.sim.world import CameraOffset, random_offset

CAMERAS = ("front", "wrist")
# the teleop node's stream as the controller sees it (test_evaluation measures it)
TELEOP_TIMING = {"replan_s": 0.02, "latency_s": 0.005, "lag_s": 0.02}
AFTER_PLAN_S = 1.0  # the graph collection's wait after the expert's plan
SETTLE_WAIT_S = 2.0  # and at most this much more for the cube to rest in the bowl


TASKS = ("touch", "place")


def check_collection(
    episodes: int, per_layout: int, miss_radius: float, fps: int, task: str = "place"
) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    namings = len(COLOURS) * (len(BOWL_COLOURS) if task == "place" else 1)
    problems = [
        (episodes >= 1, f"episodes must be >= 1, got {episodes}"),
        (1 <= per_layout <= namings, f"per_layout must be 1 to {namings}, got {per_layout}"),
        (
            0.0 <= miss_radius <= MISS_MAX_M,
            f"miss_radius must be 0-{MISS_MAX_M} m, got {miss_radius}",
        ),
        (miss_radius == 0 or task == "place", "only the place task has a miss_radius"),
        (fps in (5, 10, 20, 25, 50), f"fps must divide the 100 Hz physics ticks, got {fps}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ValueError(message)


class Recorder:
    """Samples the world on the dataset's grid from the rollout's `observe` hook;
    `render(q)` gives the front and wrist images of the world as it is."""

    def __init__(self, render, source, fps: int, t0: float) -> None:
        self.render, self.source = render, source
        self.period, self.next = 1.0 / fps, t0
        self.state: list[np.ndarray] = []
        self.action: list[np.ndarray] = []
        self.frames: dict[str, list[np.ndarray]] = {c: [] for c in CAMERAS}

    def __call__(self, now: float, q: np.ndarray) -> None:
        if now + 1e-9 < self.next:
            return
        self.next += self.period
        self.state.append(q)
        self.action.append(np.asarray(self.source.command(now), dtype=np.float64))
        for camera, image in zip(CAMERAS, self.render(q), strict=True):
            self.frames[camera].append(image)


def _demonstrate(world, layout, cfg, drawn: Miss | None, fps: int, log: Callable[[str], None]):
    """One expert episode in `world` (its camera set): (recorder, monitor, controller
    fault, limit counts, the miss demonstrated)."""
    source, miss = expert_with_miss(layout, cfg.soft_lower, cfg.soft_upper, drawn)
    if drawn is not None and miss is None:
        log(
            f"collect: seed {layout.seed}: the point beside the cube is out of reach; "
            "demonstrated without a miss"
        )
    source.start(0.0, HOME)
    plan_s = source.duration_s

    def done(now: float, monitor: PlaceMonitor) -> bool:
        waited = now - START_S - plan_s - AFTER_PLAN_S
        return waited >= 0 and (placed_for(monitor, SETTLE_S) or waited >= SETTLE_WAIT_S)

    timing = ProxySettings(
        timeout_s=plan_s + AFTER_PLAN_S + SETTLE_WAIT_S + 0.1, servo=True, **TELEOP_TIMING
    )
    recorder = Recorder(lambda _q: [world.render(c) for c in CAMERAS], source, fps, START_S)
    limits: dict[str, Any] = {}
    monitor, fault = place_servo_rollout(
        expert_planner(source), world, layout, timing, limits=limits, observe=recorder, done=done
    )
    return recorder, monitor, fault, limits, miss


def _demonstrate_touch(world, layout, cfg, fps: int):
    """One touch expert episode in `world`: (recorder, monitor, controller fault,
    limit counts)."""
    source = TouchExpert(layout, cfg.soft_lower, cfg.soft_upper)
    source.start(0.0, HOME)
    touched_at: list[float] = []

    def done(now: float, monitor: SuccessMonitor) -> bool:
        if monitor.touched and not touched_at:
            touched_at.append(now)
        return bool(touched_at) and now - touched_at[0] >= TOUCH_HOLD_S

    plan_s = APPROACH_S + DESCEND_S
    timing = ProxySettings(
        timeout_s=plan_s + TOUCH_WAIT_S + TOUCH_HOLD_S, servo=True, **TELEOP_TIMING
    )
    recorder = Recorder(
        lambda q: [world.render_front(q), world.render_wrist(q)], source, fps, START_S
    )
    limits: dict[str, Any] = {}
    monitor, fault = touch_servo_rollout(
        expert_planner(source), world, layout, timing, limits=limits, observe=recorder, done=done
    )
    return recorder, monitor, fault, limits


@dataclass
class EpisodeRun:
    """One collected episode: what `collect_episodes` writes and reports of it."""

    instruction: str
    recorder: Recorder | None  # None: nothing was recorded
    success: bool  # written to the dataset
    fields: dict[str, Any]  # the result's task fields; "detail" says what happened
    fault: str  # the controller's fault ('' for none)
    limits: dict[str, Any]  # the controller's tick counts
    clock_start_s: float = 0.0  # the episode clock at its first frame


# (world, layout seed, naming j) -> the episode
RunEpisode = Callable[[Any, int, int], EpisodeRun]


def _episode(task: str, world, seed: int, j: int, cfg, miss_radius: float, fps: int, log):
    """Episode (seed, naming j) of `task` by the expert."""
    if task == "touch":
        touch = touch_naming(seed, j)
        recorder, monitor, fault, limits = _demonstrate_touch(world, touch, cfg, fps)
        outcome = monitor.outcome
        detail = (
            f"touched {outcome.touched}"
            if outcome.touched
            else f"touched nothing (closest {outcome.distance_m * 100:.1f} cm)"
        )
        fields = {"touched": outcome.touched, "detail": detail}
        success = outcome.success and not fault
        return EpisodeRun(touch.instruction, recorder, success, fields, fault, limits)
    layout = place_naming(seed, j)
    drawn = Miss.draw(seed * 16 + j, miss_radius) if miss_radius > 0 else None
    recorder, place, fault, limits, miss = _demonstrate(world, layout, cfg, drawn, fps, log)
    placed = place.outcome
    fields = {
        "stage": placed.stage,
        "detail": placed.detail,
        "miss": miss.text() if miss else "",
    }
    success = placed.success and not fault
    return EpisodeRun(layout.instruction, recorder, success, fields, fault, limits)


def collect_offline(
    out_dir: str | Path,
    episodes: int,
    seed0: int = 1000,
    camera: tuple[int, int] = (320, 240),
    per_layout: int = 1,
    camera_offset: str = "",
    camera_randomise: bool = False,
    miss_radius: float = 0.0,
    fps: int = 10,
    codec: str = "",
    log: Callable[[str], None] = print,
    task: str = "place",
) -> dict[str, Any]:
    """Write `episodes` demonstrations of `task` (see the module docstring) as a
    LeRobot dataset in `out_dir` (new or empty). Returns the summary kept in
    `meta/collect.json`."""
    check_collection(episodes, per_layout, miss_radius, fps, task)
    cfg = load_safety_config()

    def run(world, seed: int, j: int) -> EpisodeRun:
        return _episode(task, world, seed, j, cfg, miss_radius, fps, log)

    return collect_episodes(
        out_dir,
        run,
        episodes,
        seed0,
        camera,
        per_layout,
        camera_offset,
        camera_randomise,
        fps,
        codec,
        log,
        task,
        {"mode": "offline", "miss_radius": miss_radius},
    )


def collect_episodes(
    out_dir: str | Path,
    run: RunEpisode,
    episodes: int,
    seed0: int,
    camera: tuple[int, int],
    per_layout: int,
    camera_offset: str,
    camera_randomise: bool,
    fps: int,
    codec: str,
    log: Callable[[str], None],
    task: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Run episode i = `run(world, seed0 + i // per_layout, i % per_layout)` with the
    front camera at the fixed `camera_offset` or drawn per episode, and write the
    successful ones as a LeRobot dataset in `out_dir` (new or empty). Returns the
    summary kept in `meta/collect.json` (with `meta`'s fields)."""
    from dream_vla_ros.sim.world import PiperWorld

    out = Path(out_dir)
    check_output_folder(out)
    fixed = CameraOffset.parse(camera_offset) if camera_offset else CameraOffset()
    width, height = camera
    bowls = BOWL_COLOURS if task == "place" else ()
    world = PiperWorld(width=width, height=height, bowls=bowls)
    writer = LeRobotWriter(
        out,
        fps,
        [CameraSpec(f"observation.images.{c}", height, width) for c in CAMERAS],
        JOINT_NAMES,
        codec=codec,
    )
    results: list[dict[str, Any]] = []
    totals = {"ticks": 0, "limited": 0}
    start = time.monotonic()
    stop = StopAfterEpisode()
    with stop.installed(), closing(world):
        for i in range(episodes):
            seed, j = seed0 + i // per_layout, i % per_layout
            offset = random_offset(seed * 16 + j) if camera_randomise else fixed
            world.set_front_offset(offset)
            ep = run(world, seed, j)
            totals["ticks"] += ep.limits.get("ticks", 0)
            totals["limited"] += ep.limits.get("limited", 0)
            rec = ep.recorder
            if ep.success and rec is not None:
                writer.add_episode(
                    ep.instruction,
                    np.stack(rec.state),
                    np.stack(rec.action),
                    {f"observation.images.{c}": rec.frames[c] for c in CAMERAS},
                    ep.clock_start_s,
                )
            results.append(
                {
                    "seed": seed,
                    "instruction": ep.instruction,
                    "success": ep.success,
                    **ep.fields,
                    "frames": len(rec.state) if rec is not None else 0,
                    "camera_offset": offset.text(),
                    "controller_fault": ep.fault,
                }
            )
            verdict = (
                "success"
                if ep.success
                else f"FAILED ({ep.fields['detail']}{'; ' + ep.fault if ep.fault else ''})"
            )
            log(f"collect: episode {i + 1}/{episodes} seed {seed}: {ep.instruction}: {verdict}")
            if stop.requested and i + 1 < episodes:
                log(
                    f"collect: interrupted after {i + 1} of {episodes} episodes; the "
                    f"{sum(r['success'] for r in results)} "
                    f"{'placed' if task == 'place' else 'successful'} so far are written"
                )
                break
    written = sum(r["success"] for r in results)
    if written == 0:
        goal = "placed the cube" if task == "place" else "touched the named cube"
        raise DatasetError(
            f"no episode {goal} ({results[0]['detail']} in the first): nothing written in {out}"
        )
    writer.finish()
    summary = {
        **meta,
        "task": task,
        "episodes": len(results),
        "requested": episodes,
        "interrupted": len(results) < episodes,
        "written": written,
        "expert_success_rate": written / len(results),
        "seed0": seed0,
        "per_layout": per_layout,
        "camera": [width, height],
        "camera_randomise": camera_randomise,
        "camera_offset": camera_offset,
        "fps": fps,
        "timing": TELEOP_TIMING,
        "controller_limits": {
            **totals,
            "limited_share": round(totals["limited"] / max(totals["ticks"], 1), 4),
        },
        "seconds": round(time.monotonic() - start, 1),
        "results": results,
    }
    (out / "meta" / "collect.json").write_text(json.dumps(summary, indent=2))
    return summary
