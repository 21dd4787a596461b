"""The experts' demonstrations collected without ROS into a LeRobot dataset
(evaluation/offline_collect.py)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from dream_vla_ros.data.lerobot import DatasetError, LeRobotDataset
from dream_vla_ros.evaluation import offline_collect
from dream_vla_ros.sim.place import BOWL_COLOURS, place_naming, sample_place_layout
from dream_vla_ros.sim.task import HOME
from dream_vla_ros.sim.world import random_offset

FRONT, WRIST = "observation.images.front", "observation.images.wrist"


def test_the_offline_collection_writes_the_placed_demonstrations_and_lists_every_episode(
    tmp_path, monkeypatch
):
    """Three episodes, the second demonstrated into the other bowl: the dataset holds
    the two placed ones, with the measured joints (the gripper stalled on the cube)
    and the expert's targets (the gripper commanded shut) on the 10 Hz grid and both
    cameras; collect.json lists all three, the failure named in its sentence."""
    real = offline_collect.expert_with_miss

    def wrong_bowl_on_the_second(layout, lower, upper, miss):
        if layout.seed == 1001:
            other = BOWL_COLOURS[1 - BOWL_COLOURS.index(layout.bowl)]
            layout = sample_place_layout(layout.seed, layout.cube, other)
        return real(layout, lower, upper, miss)

    monkeypatch.setattr(offline_collect, "expert_with_miss", wrong_bowl_on_the_second)
    out = tmp_path / "dataset"
    log: list[str] = []
    summary = offline_collect.collect_offline(
        out, 3, seed0=1000, camera=(160, 120), camera_randomise=True, log=log.append
    )

    assert summary["written"] == 2 and summary["expert_success_rate"] == 2 / 3
    results = json.loads((out / "meta" / "collect.json").read_text())["results"]
    assert [r["success"] for r in results] == [True, False, True]
    assert "not the" in results[1]["detail"] and "bowl" in results[1]["detail"]
    assert "FAILED" in log[1] and "success" in log[2]
    assert [r["camera_offset"] for r in results] == [
        random_offset(seed * 16).text() for seed in (1000, 1001, 1002)
    ]
    assert summary["controller_limits"]["limited_share"] < 0.02

    ds = LeRobotDataset(out)
    assert ds.fps == 10 and sorted(ds.camera_keys) == [FRONT, WRIST]
    assert [e.task for e in ds.episodes] == [
        place_naming(1000, 0).instruction,
        place_naming(1002, 0).instruction,
    ]
    for info, result in zip(ds.episodes, (results[0], results[2]), strict=True):
        cols = ds.frames(info)
        state, action = np.asarray(cols["state"]), np.asarray(cols["action"])
        assert info.length == result["frames"] and state.shape == action.shape == (info.length, 7)
        np.testing.assert_allclose(state[0, :6], HOME[:6], atol=1e-6)
        # the plan (about 9.5 s) and the second after it, sampled at 10 Hz
        assert 10.0 <= info.length / 10 <= 13.5
        closed = action[:, 6] < 1e-6
        assert closed.any()
        # commanded shut, the measured gripper stops on the 4 cm cube (3 cm less the squeeze)
        held = state[closed, 6][5:]
        assert held.size and 0.024 < np.median(held) < 0.032, np.median(held)
        front, wrist = ds.images(info, FRONT), ds.images(info, WRIST)
        assert front.shape == wrist.shape == (info.length, 120, 160, 3)
        # the cube leaves the table: the front view changes where it stood
        assert np.abs(front[0].astype(int) - front[-1].astype(int)).mean() > 1.0

    # a collection in which nothing was placed writes no dataset and says why
    with pytest.raises(DatasetError, match=r"no episode placed the cube.*not the"):
        offline_collect.collect_offline(tmp_path / "none", 1, seed0=1001, camera=(160, 120))


def test_ctrl_c_ends_the_offline_collection_after_the_episode_in_progress(tmp_path, monkeypatch):
    """SIGINT in the middle of the first of three episodes: that episode runs to its
    end and is written, the collection stops there with a sentence, collect.json says
    it was interrupted, and Ctrl-C is the usual KeyboardInterrupt again afterwards."""
    real = offline_collect.Recorder.__call__
    calls = []

    def interrupt_on_the_fifth_frame(self, now, q):
        real(self, now, q)
        calls.append(now)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(offline_collect.Recorder, "__call__", interrupt_on_the_fifth_frame)
    log: list[str] = []
    out = tmp_path / "dataset"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a shell
    try:
        summary = offline_collect.collect_offline(
            out, 3, seed0=1000, camera=(160, 120), log=log.append
        )
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)

    assert summary["interrupted"] and summary["episodes"] == 1 and summary["requested"] == 3
    assert "interrupted after 1 of 3 episodes" in log[-1] and "1 placed" in log[-1]
    ds = LeRobotDataset(out)
    assert len(ds.episodes) == 1 and ds.episodes[0].length == summary["results"][0]["frames"]
    assert ds.episodes[0].length > 100  # the whole episode, not the 5 frames before Ctrl-C
    assert json.loads((out / "meta" / "collect.json").read_text())["interrupted"]


def test_the_offline_touch_collection_writes_the_touches_and_matches_the_graph_namings(
    tmp_path,
):
    """Touch: each layout's namings in the graph collection's order, every episode
    from home to the named cube, the fingertip on it for the graph's hold at the end,
    the gripper commanded shut (the touch expert's), both cameras on the 10 Hz grid;
    the frames change as the arm moves."""
    from dream_vla_ros.control.kinematics import DHChain
    from dream_vla_ros.sim.task import TOUCH_HOLD_S, fingertip, touch_naming

    out = tmp_path / "dataset"
    log: list[str] = []
    summary = offline_collect.collect_offline(
        out, 3, seed0=1000, camera=(160, 120), per_layout=3, task="touch", log=log.append
    )
    assert summary["task"] == "touch" and summary["written"] == 3, log
    results = summary["results"]
    assert [r["touched"] for r in results] == [touch_naming(1000, j).target for j in range(3)]
    assert summary["controller_limits"]["limited_share"] < 0.02

    ds = LeRobotDataset(out)
    assert ds.fps == 10 and sorted(ds.camera_keys) == [FRONT, WRIST]
    assert [e.task for e in ds.episodes] == [touch_naming(1000, j).instruction for j in range(3)]
    chain = DHChain.load()
    for index, info in enumerate(ds.episodes):
        cols = ds.frames(info)
        state, action = np.asarray(cols["state"]), np.asarray(cols["action"])
        assert info.length == results[index]["frames"]
        np.testing.assert_allclose(state[0], HOME, atol=1e-6)
        assert np.all(action[-5:, 6] == 0.0)  # the expert's gripper: shut
        layout = touch_naming(1000, index)
        top = layout.top(layout.target)
        # the episode goes on TOUCH_HOLD_S after the touch: the fingertip stays on it
        for q in state[-int(TOUCH_HOLD_S * 10) :]:
            tip, _ = fingertip(chain, q.astype(np.float64))
            assert np.linalg.norm(tip - top) < 0.03, (tip, top)
        front, wrist = ds.images(info, FRONT), ds.images(info, WRIST)
        assert front.shape == wrist.shape == (info.length, 120, 160, 3)
        assert np.abs(front[0].astype(int) - front[-1].astype(int)).mean() > 1.0
