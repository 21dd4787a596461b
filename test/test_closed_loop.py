"""Closed-loop machinery in the MuJoCo world through the real ROS graph: expert
collection into episodes and a dataset, and the closed-loop evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dream_vla_ros.data.build import BuildSettings, build_dataset
from dream_vla_ros.data.episode import list_episodes, read_meta
from dream_vla_ros.data.lerobot import LeRobotDataset
from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint
from dream_vla_ros.ros.closed_loop import collect, evaluate
from dream_vla_ros.sim.task import COLOURS, HOME, sample_layout

pytestmark = pytest.mark.ros


def test_expert_episodes_are_recorded_with_their_layouts(tmp_path):
    summary = collect(tmp_path / "episodes", 2, seed0=1000, camera=(96, 72), per_layout=2)
    assert summary["expert_success_rate"] == 1.0, summary
    folders = list_episodes(tmp_path / "episodes")
    assert len(folders) == 2
    # one layout, demonstrated twice: its own target, then the next colour
    own = sample_layout(1000).target
    other = COLOURS[(COLOURS.index(own) + 1) % 3]
    assert [(r["seed"], r["target"]) for r in summary["results"]] == [(1000, own), (1000, other)]
    for folder, colour in zip(folders, (own, other)):
        meta = read_meta(folder)
        assert meta.instruction == f"touch the {colour} cube"
        assert meta.status == "finished" and meta.success is True
        assert meta.message_counts["/camera/front/image_raw"] >= 10
    report = build_dataset(
        tmp_path / "episodes",
        tmp_path / "ds",
        BuildSettings(fps=10, codec="libx264", image_tolerance_s=0.5, state_tolerance_s=0.3),
    )
    assert len(report.episodes) == 2
    ds = LeRobotDataset(tmp_path / "ds")
    frames = ds.frames(ds.episodes[0])
    # the recorded actions start near home and end near the expert's touch pose
    assert np.abs(frames["action"][0, :6] - HOME[:6]).max() < 0.1
    assert np.abs(frames["action"][-1, :6] - frames["action"][0, :6]).max() > 0.3
    assert set(ds.tasks.values()) == {f"touch the {c} cube" for c in (own, other)}
    # same layout, different cubes: the two demonstrations end in different poses
    last = [ds.frames(e)["action"][-1, :6] for e in ds.episodes]
    assert np.abs(last[0] - last[1]).max() > 0.1


def test_the_evaluator_reports_rollouts_plots_and_a_gif(tmp_path):
    ckpt = write_random_checkpoint(
        tmp_path / "random", "tiny", seed=0, head="flow", action_box=(HOME, np.full(7, 0.02))
    )
    summary = evaluate(ckpt, tmp_path / "eval", seeds=[7, 8], timeout_s=2.0, camera=(96, 72))
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert results == json.loads(json.dumps(summary))
    assert [r["seed"] for r in results["rollouts"]] == [7, 8]
    # a policy confined to 2 cm around home touches nothing
    assert results["success_rate"] == 0.0
    assert all(r["touched"] == "" and r["distance_m"] > 0.05 for r in results["rollouts"])
    assert (tmp_path / "eval/trajectories.png").stat().st_size > 5000
    assert (tmp_path / "eval/rollout.gif").stat().st_size > 1000
