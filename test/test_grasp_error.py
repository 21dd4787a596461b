"""The open-loop grasp error of a place policy on the expert's own states
(evaluation/grasp_error.py): a predictor whose grasp is off by a known offset is
measured off by that offset, split along and across the line from the arm's base."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.evaluation.grasp_error import GraspQuery, grasp_errors, policy_predict
from dream_vla_ros.sim.place import BOWL_COLOURS, PlaceExpert
from dream_vla_ros.sim.task import HOME
from dream_vla_ros.sim.world import PiperWorld

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "place_tiny"
SEEDS = [5000, 5003]


@pytest.fixture(scope="module")
def world():
    w = PiperWorld(width=160, height=120, bowls=BOWL_COLOURS)
    yield w
    w.close()


def _expert_believing(offset_of):
    """A predictor: the expert planned for the named cube moved by `offset_of(cube xy)`."""
    cfg = load_safety_config()
    lower, upper = np.array(cfg.position_lower), np.array(cfg.position_upper)

    def predict(q: GraspQuery):
        lay = q.layout
        cubes = dict(lay.cubes)
        cubes[lay.cube] = cubes[lay.cube] + np.r_[offset_of(cubes[lay.cube][:2]), 0.0]
        expert = PlaceExpert(dataclasses.replace(lay, cubes=cubes), lower, upper)
        expert.start(0.0, HOME)
        times = q.stamp_s + 0.1 * np.arange(1, 17)
        return times, expert.preview(0.0, times)

    return predict


def test_an_exact_grasp_measures_zero(world):
    result = grasp_errors(_expert_believing(lambda c: np.zeros(2)), SEEDS, world, draws=1)
    assert len(result["rows"]) == 3 * len(SEEDS)
    for row in result["rows"]:
        assert np.hypot(*row["error_xy_m"]) < 1e-3
    assert all(s["within_2cm"] == 1.0 for s in result["by_lead"].values())


def test_a_grasp_off_along_the_base_line_is_radial_and_across_it_tangential(world):
    radial = grasp_errors(
        _expert_believing(lambda c: 0.025 * c / np.linalg.norm(c)), SEEDS, world, draws=1
    )
    for row in radial["rows"]:
        assert row["radial_m"] == pytest.approx(0.025, abs=1.5e-3)
        assert abs(row["tangential_m"]) < 1.5e-3
    lead = radial["by_lead"]["1"]
    assert lead["within_2cm"] == 0.0 and lead["radial_rms_m"] == pytest.approx(0.025, abs=1.5e-3)

    def across(c):
        u = c / np.linalg.norm(c)
        return -0.015 * np.array([-u[1], u[0]])

    tangential = grasp_errors(_expert_believing(across), SEEDS, world, leads_s=(0.5,), draws=1)
    for row in tangential["rows"]:
        assert row["tangential_m"] == pytest.approx(-0.015, abs=1.5e-3)
        assert abs(row["radial_m"]) < 1.5e-3
    assert tangential["by_lead"]["0.5"]["within_2cm"] == 1.0


def test_the_policy_is_queried_on_the_query_clock_and_its_draw(tmp_path):
    """The policy predictor reads the query's stamp as its episode clock and samples
    with the query's draw: the same query twice gives the same chunk; another draw
    another one from a sampling (flow) head, the same one from the shipped
    regression (L1) head, which has no noise to draw."""
    from dream_vla_ros.policy import Policy, PolicySettings
    from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint
    from dream_vla_ros.sim.place import sample_place_layout

    flow = write_random_checkpoint(tmp_path / "flow", head="flow", proprio_dim=1, clock_input=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    query = GraspQuery(sample_place_layout(5000), images, HOME.copy(), 2.3, draw=0)
    for checkpoint, head in ((CHECKPOINT, "l1"), (flow, "flow")):
        policy = Policy.from_checkpoint(checkpoint, settings=PolicySettings())
        assert policy.cfg.action.head == head
        predict = policy_predict(policy)
        times, actions = predict(query)
        assert policy.clock(2.3) == pytest.approx(2.3)
        np.testing.assert_allclose(times[0], 2.3 + policy.cfg.action.action_period_s)
        again = predict(query)[1]
        other = predict(dataclasses.replace(query, draw=1))[1]
        np.testing.assert_array_equal(actions, again)
        difference = np.abs(actions - other).max()
        assert difference > 1e-4 if head == "flow" else difference == 0.0, (head, difference)
