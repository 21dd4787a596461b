"""The place expert's demonstrations without ROS, straight into a LeRobot dataset
(`dream-vla sim collect OUT --task place --offline`; no ROS imports).

Each episode is the proxy's rollout (evaluation/place_proxy.py) with the expert
streamed as the teleop node streams it (10 points 20 ms apart at 50 Hz, 5 ms late,
the arm 20 ms behind its command): the project's `ChunkController` at 200 Hz on a
virtual clock, the firmware simulator's `SimGripper`, the MuJoCo physics every
10 ms. Layouts, namings, misses and camera draws are the graph collection's
(`evaluation/closed_loop.collect`): episode i is layout seed0 + i // per_layout with
naming i % per_layout, the camera drawn from `seed * 16 + j`.

It samples what `dream-vla dataset build` samples from a recording, on the same
10 Hz grid: `observation.state` the measured joints, `action` the expert's target
at that instant (the teleop command), the front and wrist images rendered at that
instant. An episode lasts the expert's plan plus 1 s, and up to 2 s more until the
cube has rested in the bowl (the graph collection's wait); only episodes the world
judges placed, without a controller fault, are written. `meta/collect.json` lists
every episode, written or not. Ctrl-C stops the collection after the episode in
progress and writes the dataset of the episodes placed so far (a second Ctrl-C
stops at once, without a dataset).

What differs from a recording: no DDS or camera latency (each frame is rendered at
its grid time, where a recorded frame is up to 100 ms old) and the arm follows its
command by a fixed lag rather than the CAN simulator's dynamics. It is the fast way
to many demonstrations (2.4 s an episode on this VM, about 20 s through the graph); the
graph collection stays the one that exercises the recorder.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
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
from dream_vla_ros.evaluation.kinematic import ProxySettings
from dream_vla_ros.evaluation.place_proxy import START_S, expert_planner, place_servo_rollout
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
from dream_vla_ros.sim.task import COLOURS, HOME
from dream_vla_ros.sim.world import CameraOffset, random_offset

CAMERAS = ("front", "wrist")
# the teleop node's stream as the controller sees it (test_evaluation measures it)
TELEOP_TIMING = {"replan_s": 0.02, "latency_s": 0.005, "lag_s": 0.02}
AFTER_PLAN_S = 1.0  # the graph collection's wait after the expert's plan
SETTLE_WAIT_S = 2.0  # and at most this much more for the cube to rest in the bowl


def check_collection(episodes: int, per_layout: int, miss_radius: float, fps: int) -> None:
    namings = len(COLOURS) * len(BOWL_COLOURS)
    problems = [
        (episodes >= 1, f"episodes must be >= 1, got {episodes}"),
        (1 <= per_layout <= namings, f"per_layout must be 1 to {namings}, got {per_layout}"),
        (
            0.0 <= miss_radius <= MISS_MAX_M,
            f"miss_radius must be 0-{MISS_MAX_M} m, got {miss_radius}",
        ),
        (fps in (5, 10, 20, 25, 50), f"fps must divide the 100 Hz physics ticks, got {fps}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ValueError(message)


class _Recorder:
    """Samples the world on the dataset's grid from the rollout's `observe` hook."""

    def __init__(self, world, source, fps: int, t0: float) -> None:
        self.world, self.source = world, source
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
        for camera in CAMERAS:
            self.frames[camera].append(self.world.render(camera))


class _StopAfterEpisode:
    """Ctrl-C (SIGINT) sets `requested` instead of interrupting, so that no episode is
    cut in half; a second Ctrl-C raises KeyboardInterrupt as usual. Only where Ctrl-C
    would interrupt (the main thread, Python's own handler); a process that ignores
    SIGINT (started in the background) keeps ignoring it."""

    requested = False

    @contextmanager
    def installed(self) -> Iterator[_StopAfterEpisode]:
        previous = signal.getsignal(signal.SIGINT)
        main = threading.current_thread() is threading.main_thread()
        if not main or previous is not signal.default_int_handler:
            yield self
            return

        def handler(_signum, _frame) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


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
    recorder = _Recorder(world, source, fps, START_S)
    limits: dict[str, Any] = {}
    monitor, fault = place_servo_rollout(
        expert_planner(source), world, layout, timing, limits=limits, observe=recorder, done=done
    )
    return recorder, monitor, fault, limits, miss


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
) -> dict[str, Any]:
    """Write `episodes` place demonstrations (see the module docstring) as a LeRobot
    dataset in `out_dir` (new or empty). Returns the summary kept in
    `meta/collect.json`."""
    from dream_vla_ros.sim.world import PiperWorld

    check_collection(episodes, per_layout, miss_radius, fps)
    out = Path(out_dir)
    check_output_folder(out)
    fixed = CameraOffset.parse(camera_offset) if camera_offset else CameraOffset()
    cfg = load_safety_config()
    width, height = camera
    world = PiperWorld(width=width, height=height, bowls=BOWL_COLOURS)
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
    stop = _StopAfterEpisode()
    with stop.installed(), closing(world):
        for i in range(episodes):
            seed, j = seed0 + i // per_layout, i % per_layout
            layout = place_naming(seed, j)
            offset = random_offset(seed * 16 + j) if camera_randomise else fixed
            world.set_front_offset(offset)
            drawn = Miss.draw(seed * 16 + j, miss_radius) if miss_radius > 0 else None
            recorder, monitor, fault, limits, miss = _demonstrate(
                world, layout, cfg, drawn, fps, log
            )
            totals["ticks"] += limits.get("ticks", 0)
            totals["limited"] += limits.get("limited", 0)
            outcome = monitor.outcome
            success = outcome.success and not fault
            if success:
                writer.add_episode(
                    layout.instruction,
                    np.stack(recorder.state),
                    np.stack(recorder.action),
                    {f"observation.images.{c}": recorder.frames[c] for c in CAMERAS},
                )
            results.append(
                {
                    "seed": seed,
                    "instruction": layout.instruction,
                    "success": success,
                    "stage": outcome.stage,
                    "detail": outcome.detail,
                    "frames": len(recorder.state),
                    "miss": miss.text() if miss else "",
                    "camera_offset": offset.text(),
                    "controller_fault": fault,
                }
            )
            verdict = (
                "success"
                if success
                else f"FAILED ({outcome.detail}{'; ' + fault if fault else ''})"
            )
            log(f"collect: episode {i + 1}/{episodes} seed {seed}: {layout.instruction}: {verdict}")
            if stop.requested and i + 1 < episodes:
                log(
                    f"collect: interrupted after {i + 1} of {episodes} episodes; the "
                    f"{sum(r['success'] for r in results)} placed so far are written"
                )
                break
    written = sum(r["success"] for r in results)
    if written == 0:
        raise DatasetError(
            f"no episode placed the cube ({results[0]['detail']} in the first): nothing "
            f"written in {out}"
        )
    writer.finish()
    summary = {
        "mode": "offline",
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
        "miss_radius": miss_radius,
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
