"""Grounding pretraining on rendered scenes (dream_vla_ros/finetune/grounding.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.finetune.grounding import GroundingSettings, build_base, render_scenes
from dream_vla_ros.finetune.recipe import load_recipe
from dream_vla_ros.model.checkpoint import load_base_weights, load_config
from dream_vla_ros.model.modeling import DreamVLA
from dream_vla_ros.paths import config_path, model_path
from dream_vla_ros.policy.preprocess import ImagePreprocessor
from dream_vla_ros.sim.task import COLOURS, X_RANGE, sample_layout

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(scope="module")
def limits():
    cfg = load_safety_config()
    return np.asarray(cfg.soft_lower), np.asarray(cfg.soft_upper)


def test_token_labels_mark_the_pixels_of_each_cube(limits):
    from dream_vla_ros.sim.world import PiperWorld

    pre = ImagePreprocessor()
    world = PiperWorld(width=320, height=240)
    try:
        scenes = render_scenes(world, range(10000, 10006), *limits, pre, rng_seed=0)
    finally:
        world.close()
    assert scenes.images.shape == (6, 2, 3, 224, 224)
    assert scenes.coverage.shape == (6, 128, 3)
    rgb_channel = {"red": 0, "green": 1, "blue": 2}
    for i in range(6):
        front = scenes.coverage[i, :64]
        image = scenes.images[i, 0].float()  # (3, 224, 224) front camera
        for k, colour in enumerate(COLOURS):
            # the front camera always sees the whole table: every cube is labelled
            assert front[:, k].sum() > 0, f"scene {i}: no {colour} tokens"
            token = int(front[:, k].argmax())
            r, c = divmod(token, 8)
            block = image[:, r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28].reshape(3, -1)
            # the labelled token holds pixels of that colour: its channel dominates
            dominance = block[rgb_channel[colour]] - block.mean(0)
            assert dominance.max() > 40, f"scene {i}: token {token} shows no {colour} pixel"
        # table position target: inside the scaled cube region
        assert scenes.cube_xy[i].abs().max() <= 1.0 + 1e-6
    # a different layout moves the labels
    assert not torch.equal(scenes.coverage[0, :64], scenes.coverage[1, :64])
    # the scaled target comes from the layout itself
    red_x = sample_layout(10000).cubes["red"][0]
    scaled = (red_x - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0]) * 2 - 1
    assert scenes.cube_xy[0, 0, 0] == pytest.approx(scaled, abs=1e-5)


def test_a_short_grounding_run_learns_and_writes_a_usable_base(tmp_path, limits):
    settings = GroundingSettings(layouts=48, test_layouts=12, vision_steps=150, refer_steps=150)
    lines: list[str] = []
    report = build_base(tmp_path / "base", settings, *limits, log=lines.append)
    before, after = report["held_out_before"], report["held_out_after"]
    # held-out scenes: the tower finds cube tokens it could not find at initialisation,
    # and the language model points nearer to the named cube than before
    assert after["vision_recall"] > 0.8 > before["vision_recall"]
    assert after["referring_point_error_m"] < 0.8 * before["referring_point_error_m"]
    assert any(line.startswith("vision 150/150") for line in lines)
    written = json.loads((tmp_path / "base" / "grounding.json").read_text())
    assert written["held_out_after"] == after
    # usable as a recipe base: the backbone (vision, language model, projector) loads
    cfg = load_config(tmp_path / "base")
    model = DreamVLA(cfg)
    assert "backbone" in load_base_weights(model, tmp_path / "base")
    assert (tmp_path / "base" / "tokenizer.json").exists()


def test_the_base_takes_its_input_size_and_vision_tower_from_the_settings(tmp_path, limits):
    short = {"layouts": 4, "test_layouts": 2, "vision_steps": 2, "refer_steps": 2}
    settings = GroundingSettings(
        **short, batch_size=2, image_size=280, vision_depth=3, vision_width=48
    )
    build_base(tmp_path / "base", settings, *limits, log=lambda _: None)
    cfg = load_config(tmp_path / "base")
    assert cfg.image_size == 280
    assert (cfg.vision.depth, cfg.vision.embed_dim, cfg.vision.num_heads) == (3, 48, 3)
    model = DreamVLA(cfg)
    assert "backbone" in load_base_weights(model, tmp_path / "base")
    # the preset's own tower when the settings leave it
    default = GroundingSettings()
    assert (default.vision_depth, default.vision_width, default.image_size) == (0, 0, 224)
    assert default.problem() == "" and settings.problem() == ""
    assert "--image-size 300" in GroundingSettings(image_size=300).problem()
    assert "--vision-width" in GroundingSettings(vision_width=40).problem()


def test_the_shipped_base_is_grounded_and_the_touch_recipe_finds_it(tmp_path, monkeypatch):
    base = model_path("tiny_grounded")
    report = json.loads((base / "grounding.json").read_text())
    after = report["held_out_after"]
    assert after["referring_point_error_m"] < 0.05  # cubes are >= 9 cm apart
    assert after["vision_recall"] > 0.95
    # `base: models/tiny_grounded` resolves from any working directory
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(config_path("finetune/touch_tiny_cpu.yaml"))
    assert recipe.model.base == str(base)
    assert recipe.model.freeze_vision


def test_place_scenes_label_the_cubes_and_the_bowls(limits):
    """The place task's scenes: five objects per token, the bowls' labels cover
    their many wall and floor geoms, and instructions name a cube and a bowl."""
    from dream_vla_ros.finetune.grounding import SCENE_TASKS
    from dream_vla_ros.sim.place import BOWL_COLOURS
    from dream_vla_ros.sim.world import PiperWorld

    task = SCENE_TASKS["place"]
    pre = ImagePreprocessor()
    world = PiperWorld(width=320, height=240, bowls=BOWL_COLOURS)
    try:
        scenes = render_scenes(world, range(10000, 10004), *limits, pre, rng_seed=0, task=task)
    finally:
        world.close()
    assert scenes.coverage.shape == (4, 128, 5)
    front = scenes.coverage[:, :64]
    # a bowl (13 cm across) covers several tokens of the front view, a cube one or two
    assert (front[:, :, 3:] > 0.02).sum(1).min() >= 3
    assert (front[:, :, :3] > 0.02).sum(1).max() <= 4
    assert task.instruction((0, 4)) == "put the red cube in the purple bowl"
    assert len(task.instructions()) == 6
