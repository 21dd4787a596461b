"""Labels on the policy's own states: the policy drives a place layout, the expert
takes over at a handover time, and its continuation is the dataset
(evaluation/dagger.py), carrying the episode clock of the moment it took over."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dream_vla_ros.data.lerobot import LeRobotDataset
from dream_vla_ros.data.merge import merge_datasets
from dream_vla_ros.evaluation.dagger import collect_dagger, draw_handover, layout_now
from dream_vla_ros.evaluation.offline_collect import collect_offline
from dream_vla_ros.finetune.data import DemoData
from dream_vla_ros.finetune.recipe import DataConfig
from dream_vla_ros.sim.place import BOWL_COLOURS, sample_place_layout
from dream_vla_ros.sim.task import CUBE_SIZE, HOME
from dream_vla_ros.sim.world import PiperWorld

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "place_tiny"
FRONT, WRIST = "observation.images.front", "observation.images.wrist"
CAMERA = (160, 120)


def _episode(root: Path, k: int = 0) -> tuple[object, dict[str, np.ndarray]]:
    ds = LeRobotDataset(root)
    info = ds.episodes[k]
    return info, {**ds.frames(info), "front": ds.images(info, FRONT)}


def test_a_handover_at_the_start_gives_the_experts_own_demonstration(tmp_path):
    """Taken over before the policy's first chunk, the continuation is the offline
    collector's demonstration of the layout: the same joints, targets and images."""
    dagger = tmp_path / "dagger"
    summary = collect_dagger(
        dagger, CHECKPOINT, 1, seed0=1000, camera=CAMERA, handover=(0.0, 0.0), log=lambda _: None
    )
    demo = tmp_path / "demo"
    collect_offline(demo, 1, seed0=1000, camera=CAMERA, log=lambda _: None)

    assert summary["written"] == 1 and summary["mode"] == "dagger"
    (info_d, d), (info_e, e) = _episode(dagger), _episode(demo)
    assert info_d.task == info_e.task == sample_place_layout(1000).instruction
    assert info_d.length == info_e.length and info_d.clock_start_s == 0.0
    np.testing.assert_allclose(d["state"], e["state"], atol=1e-5)
    np.testing.assert_allclose(d["action"], e["action"], atol=1e-5)
    assert np.abs(d["front"].astype(int) - e["front"].astype(int)).mean() < 0.5


def test_the_continuation_starts_where_the_policy_left_the_arm_on_the_policys_clock(tmp_path):
    """Handed over 1.5 s in: the first frame is where the policy drove the arm (not
    home), the expert's targets start there, the episode's clock starts at 1.5 s, and
    a merge and the training data keep that clock."""
    seed = 3001
    out = tmp_path / "dagger"
    summary = collect_dagger(
        out, CHECKPOINT, 1, seed0=seed, camera=CAMERA, handover=(1.5, 1.5), log=lambda _: None
    )
    result = json.loads((out / "meta" / "collect.json").read_text())["results"][0]
    assert summary["written"] == 1, result
    assert result["handover_s"] == 1.5 and result["stage"] == "placed"
    assert result["policy_closest_m"] is not None and result["policy_closest_m"] > 0
    info, cols = _episode(out)
    assert info.clock_start_s == pytest.approx(1.5)
    state, action = np.asarray(cols["state"]), np.asarray(cols["action"])
    assert np.abs(state[0, :6] - HOME[:6]).max() > 0.05  # the policy moved the arm
    # the expert's first target is the pose it took over at (the arm lags 20 ms)
    np.testing.assert_allclose(action[0, :6], state[0, :6], atol=0.01)
    assert (action[:, 6] < 1e-6).any()  # it closes the gripper on the cube

    demo = tmp_path / "demo"
    collect_offline(demo, 1, seed0=1000, camera=CAMERA, log=lambda _: None)
    merged = tmp_path / "merged"
    merge_datasets([demo, out], merged, log=lambda _: None)
    assert [e.clock_start_s for e in LeRobotDataset(merged).episodes] == [0.0, 1.5]
    data = DemoData(
        DataConfig(dataset=str(merged), chunk=8, proprio=False, clock=True, val_fraction=0.0),
        image_size=56,
    )
    clocks = [data.episodes[i].proprio[:, 0] for i in sorted(data.episodes)]
    assert clocks[0][0] == 0.0 and clocks[1][0] == pytest.approx(1.5)
    np.testing.assert_allclose(np.diff(clocks[1]), 0.1, atol=1e-5)


def test_the_expert_takes_over_only_a_cube_it_can_grasp_and_reads_how_it_is_turned():
    layout = sample_place_layout(3002)
    cube, bowl = layout.cube, layout.bowl
    world = PiperWorld(width=64, height=48, bowls=BOWL_COLOURS)
    try:
        world.set_bowls(layout.bowls)

        def put(where, yaw=0.0, colour=cube):
            world.set_cubes({**layout.cubes, colour: np.asarray(where, dtype=float)}, {colour: yaw})

        put(layout.cubes[cube], yaw=0.3)
        now, reason = layout_now(world, layout)
        assert reason == "" and now is not None
        assert now.yaws[cube] == pytest.approx(0.3, abs=1e-9)
        np.testing.assert_allclose(now.cubes[cube], layout.cubes[cube], atol=1e-9)
        put(layout.cubes[cube], yaw=1.2)  # a quarter turn on looks the same
        assert world.cube_yaw(cube) == pytest.approx(1.2 - np.pi / 2, abs=1e-9)

        lifted = np.r_[layout.cubes[cube][:2], 0.1]
        put(lifted)
        assert layout_now(world, layout)[1] == f"the {cube} cube does not rest upright on the table"
        put(layout.cubes[cube])
        adr = world._cube_adr[cube]
        half = np.radians(30) / 2  # tipped 30 degrees about x
        world.data.qpos[adr + 3 : adr + 7] = (np.cos(half), np.sin(half), 0.0, 0.0)
        assert world.cube_yaw(cube) is None
        assert "does not rest upright" in layout_now(world, layout)[1]

        put(np.r_[layout.bowls[bowl][:2], CUBE_SIZE / 2])
        assert layout_now(world, layout)[1] == f"the {cube} cube is in a bowl already"
        other = next(c for c in layout.cubes if c != cube)
        put(layout.cubes[cube])
        put(np.r_[layout.bowls[bowl][:2], CUBE_SIZE / 2], colour=other)
        assert layout_now(world, layout)[1] == f"the {other} cube is in the {bowl} bowl"
    finally:
        world.close()


def test_handover_times_are_drawn_per_layout_on_the_frame_grid():
    draws = [draw_handover(seed, (0.5, 5.0)) for seed in range(200)]
    assert min(draws) >= 0.5 and max(draws) <= 5.0
    assert all(abs(d * 10 - round(d * 10)) < 1e-9 for d in draws)
    assert len(set(draws)) > 30
    assert draws == [draw_handover(seed, (0.5, 5.0)) for seed in range(200)]
