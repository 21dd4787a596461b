"""Finetuning on CPU with the tiny preset: recipes, data windows, objectives, LoRA,
resume, learning, checkpoints that the policy (and the policy node) load."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from dream_vla_ros.data.lerobot import DatasetError, LeRobotDataset
from dream_vla_ros.finetune.adapters import (
    apply_lora,
    head_modules,
    set_full_finetuning,
    trainable_parameters,
)
from dream_vla_ros.finetune.augment import swap_colours
from dream_vla_ros.finetune.averaging import WeightAverage
from dream_vla_ros.finetune.checkpoints import RAW_WEIGHTS
from dream_vla_ros.finetune.data import (
    MIN_SPAN,
    DemoData,
    WindowDataset,
    quantile_stats,
    split_episodes,
)
from dream_vla_ros.finetune.errors import TrainingError
from dream_vla_ros.finetune.export import merge_checkpoint
from dream_vla_ros.finetune.objectives import BatchEncoder, TrainingObjective, draw_noise
from dream_vla_ros.finetune.optim import (
    check_gradients,
    check_optimizer_covers,
    lr_factor,
    param_groups,
)
from dream_vla_ros.finetune.recipe import (
    DataConfig,
    LoraSettings,
    RecipeError,
    TrainConfig,
    load_recipe,
)
from dream_vla_ros.finetune.toy import write_toy_dataset
from dream_vla_ros.finetune.trainer import Trainer
from dream_vla_ros.model import CheckpointError, DreamVLA, preset
from dream_vla_ros.model.checkpoint import load_base_weights, load_config
from dream_vla_ros.policy import Observation, Policy, PolicySettings
from dream_vla_ros.policy.policy import ObservationError
from dream_vla_ros.policy.preprocess import ImagePreprocessor
from dream_vla_ros.policy.prompt import PromptBuilder, byte_tokenizer, instruction_words, question

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "config/finetune/piper_tiny_cpu.yaml"
CAMERAS = ("observation.images.front", "observation.images.wrist")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "ds", episodes=6, length=24)


def recipe(toy: Path, out: Path, *overrides: str):
    return load_recipe(
        RECIPE,
        [
            f"data.dataset={toy}",
            f"output_dir={out}",
            "train.batch_size=4",
            "train.val_every=0",
            "train.save_every=0",
            "train.log_every=1",
            *overrides,
        ],
    )


def tiny_inputs(head: str, toy: Path, batch: int = 3, lora: bool = False):
    """A tiny model with `head` and one encoded batch of toy samples."""
    data = DemoData(DataConfig(dataset=str(toy), chunk=8))
    torch.manual_seed(0)
    model = DreamVLA(preset("tiny", head=head, proprio_dim=7))
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8), False) if lora else None
    if not lora:
        set_full_finetuning(model, freeze_vision=False)
    cfg = model.cfg
    encoder = BatchEncoder(model, PromptBuilder(byte_tokenizer(cfg.newline_token_id + 1), cfg))
    samples = [data.sample("train", i) for i in range(batch)]
    inputs = encoder(torch.utils.data.default_collate(samples), torch.device("cpu"))
    noise = draw_noise(head, batch, cfg.action.chunk, cfg.action.action_dim, torch.Generator())
    return model, peft_model, {**inputs, **noise}


# -- recipes ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((ROOT / "config/finetune").glob("*.yaml")))
def test_shipped_recipes_are_valid(path):
    r = load_recipe(path)
    assert r.model.head in ("flow", "discrete", "l1") and r.train.steps > 0


def test_7b_recipe_is_the_paper_lora_setting():
    r = load_recipe(ROOT / "config/finetune/piper_7b_lora.yaml")
    assert (r.lora.enabled, r.lora.r, r.lora.alpha, r.model.head) == (True, 32, 16, "flow")
    assert r.train.batch_size == 8 and r.model.gradient_checkpointing == "auto"


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.stepz=3"], "unknown recipe key 'train.stepz'"),
        (["train.steps=many"], "'train.steps' must be an integer"),
        (["train.steps=0"], "'train.steps' must be >= 1"),
        (["model.head=diffusion"], "'model.head' must be one of"),
        (["model.base=/nonexistent/ckpt"], "'model.base' must be a preset"),
        (["data.cameras=[a, b, c]"], "'data.cameras' must list one or two"),
        (["data.augment.crop_scale=[0.9]"], "'data.augment.crop_scale' must have 2 values"),
        (["lora.enabled=maybe"], "'lora.enabled' must be true or false"),
        (["data.augment.colour_words=[red, red, blue]"], "'data.augment.colour_words' must be"),
        (["train"], "is not of the form section.key=value"),
        (["data=3"], "'data' must be a mapping"),
        (["data.norm_quantile=0.5"], "'data.norm_quantile' must be in [0, 0.5)"),
        (["data.start_repeat=0"], "'data.start_repeat' must be >= 1"),
        (["data.start_frames=-1"], "'data.start_frames' must be >= 0"),
        (["data.oversample_repeat=0"], "'data.oversample_repeat' must be >= 1"),
        (["data.oversample_dim=-1"], "'data.oversample_dim' must be >= 0"),
        (["data.oversample_min_abs=-0.1"], "'data.oversample_min_abs' must be finite and >= 0"),
        (["data.augment.proprio_noise=-0.1"], "'data.augment.proprio_noise' must be in [0, 1]"),
        (["train.backbone_lr_scale=0"], "'train.backbone_lr_scale' must be in (0, 1]"),
        (["data.augment.instruction_dropout=1"], "'data.augment.instruction_dropout' must be"),
    ],
)
def test_bad_recipes_fail_with_one_clear_sentence(overrides, words):
    with pytest.raises(RecipeError) as info:
        load_recipe(RECIPE, overrides)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_yaml_words_and_numbers_read_as_meant(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "data: {dataset: x}\nmodel: {gradient_checkpointing: off, mixed_precision: no}\n"
        "train: {lr: 1e-3}\n"
    )
    r = load_recipe(path)
    assert (r.model.gradient_checkpointing, r.model.mixed_precision) == ("off", "no")
    assert r.train.lr == pytest.approx(1e-3)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="YAML mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_cli_reports_a_bad_recipe_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dream_vla_ros.cli", "train", str(RECIPE), "train.lr=-1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "dream-vla train: 'train.lr' must be > 0"
    # overrides after an option reach the recipe too; a stray option is still refused
    for tail, message in (
        (["--no-progress", "train.lr=-1"], "dream-vla train: 'train.lr' must be > 0"),
        (["--no-progress", "--fast"], "unrecognized arguments: --fast"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "dream_vla_ros.cli", "train", str(RECIPE), *tail],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# -- data --------------------------------------------------------------------------------
def test_splits_are_by_episode_seeded_and_disjoint():
    eps = list(range(10))
    train, val = split_episodes(eps, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == eps and not set(train) & set(val)
    assert split_episodes(eps, 0.2, seed=3) == (train, val)
    assert any(split_episodes(eps, 0.2, seed=s)[1] != val for s in range(4, 10))
    assert split_episodes([5], 0.5, 0) == ([5], [])  # a single episode is never held out
    assert split_episodes(eps, 0.0, 0) == (eps, [])


def test_windows_pad_at_episode_end_and_normalise_with_train_stats(toy):
    data = DemoData(DataConfig(dataset=str(toy), chunk=8, val_fraction=0.2))
    assert data.action_dim == 7 and data.proprio_dim == 7 and data.fps == 10
    assert len(data.val_episodes) == 1 and not set(data.val_episodes) & set(data.train_episodes)
    # q01/q99 over the training episodes only
    train_actions = np.concatenate([data.episodes[e].action for e in data.train_episodes])
    assert np.allclose(data.action_stats.q01, np.quantile(train_actions, 0.01, axis=0))
    assert np.allclose(data.action_stats.q99, np.quantile(train_actions, 0.99, axis=0))
    # every window of a 24-frame episode with offset 1: t = 0..22
    ep = data.train_episodes[0]
    windows = [w for w in data.windows["train"] if w[0] == ep]
    assert [t for _, t in windows] == list(range(23))
    last = data.windows["train"].index((ep, 20))
    s = data.sample("train", last)
    # rows 21, 22, 23 are real; the other five repeat row 23 and are marked as padding
    assert s["pad"].tolist() == [True] * 3 + [False] * 5
    raw = data.episodes[ep].action
    assert np.allclose(s["raw_actions"].numpy(), raw[[21, 22, 23, 23, 23, 23, 23, 23]], atol=1e-6)
    expected = data.action_stats.normalise(raw[[21, 22, 23, 23, 23, 23, 23, 23]])
    assert np.allclose(s["actions"].numpy(), expected, atol=1e-6)
    assert s["actions"].abs().max() <= 1.0
    assert np.allclose(
        s["state"].numpy(), data.proprio_stats.normalise(data.episodes[ep].state[20])
    )
    assert s["task"].startswith("reach the ") and s["images"].shape == (2, 3, 224, 224)


def test_hold_after_end_trains_the_repeated_rows_as_hold(toy):
    """With hold_after_end the rows past the episode's end are the same repeated last
    action, but real rows of the flow objective's loss."""
    plain = DemoData(DataConfig(dataset=str(toy), chunk=8, val_fraction=0.2))
    hold = DemoData(DataConfig(dataset=str(toy), chunk=8, val_fraction=0.2, hold_after_end=True))
    assert hold.windows == plain.windows
    ep = hold.train_episodes[0]
    i = hold.windows["train"].index((ep, 20))
    a, b = plain.sample("train", i), hold.sample("train", i)
    assert a["pad"].tolist() == [True] * 3 + [False] * 5 and b["pad"].all()
    assert torch.equal(a["actions"], b["actions"])
    torch.manual_seed(0)
    model = DreamVLA(preset("tiny", head="flow", proprio_dim=7))
    cfg = model.cfg
    encoder = BatchEncoder(model, PromptBuilder(byte_tokenizer(cfg.newline_token_id + 1), cfg))
    objective = TrainingObjective(model).eval()
    noise = draw_noise("flow", 1, cfg.action.chunk, cfg.action.action_dim, torch.Generator())

    def loss(sample) -> float:
        inputs = encoder(torch.utils.data.default_collate([sample]), torch.device("cpu"))
        with torch.no_grad():
            return float(objective(**inputs, **noise))

    # the same inputs and draws: only the rows the loss averages over differ
    assert abs(loss(b) - loss(a)) > 1e-4


def test_start_repeat_oversamples_the_first_windows_of_training_episodes_only(toy):
    """start_frames 3, start_repeat 4: each training episode's windows at frames 0-2
    appear 4 times, every later window once, validation windows once; the repeated
    windows are the same samples."""
    plain = DemoData(DataConfig(dataset=str(toy), chunk=8, val_fraction=0.2))
    more = DemoData(
        DataConfig(dataset=str(toy), chunk=8, val_fraction=0.2, start_frames=3, start_repeat=4)
    )
    assert more.windows["val"] == plain.windows["val"]
    counts: dict[tuple[int, int], int] = {}
    for key in more.windows["train"]:
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == set(plain.windows["train"])
    assert all(n == (4 if t < 3 else 1) for (_, t), n in counts.items())
    assert len(more.windows["train"]) == len(plain.windows["train"]) + 9 * len(more.train_episodes)
    ep = more.train_episodes[0]
    i, j = [k for k, w in enumerate(more.windows["train"]) if w == (ep, 1)][:2]
    a, b = more.sample("train", i), more.sample("train", j)
    assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["images"], b["images"])


def test_oversample_repeats_the_windows_of_episodes_that_end_far_out(toy):
    """oversample_dim 0, a threshold between the training episodes' last |action[0]|:
    every window of an episode ending at or beyond it appears 3 times, the others and
    validation once; a dimension the actions do not have is refused by name."""
    plain = DemoData(DataConfig(dataset=str(toy), chunk=8, val_fraction=0.2))
    ends = {e: abs(plain.episodes[e].action[-1, 0]) for e in plain.train_episodes}
    threshold = float(np.median(list(ends.values())))
    wide = {e for e, v in ends.items() if v >= threshold}
    assert 0 < len(wide) < len(ends)
    cfg = DataConfig(
        dataset=str(toy),
        chunk=8,
        val_fraction=0.2,
        oversample_dim=0,
        oversample_min_abs=threshold,
        oversample_repeat=3,
    )
    more = DemoData(cfg)
    assert more.oversampled == wide
    assert more.windows["val"] == plain.windows["val"]
    counts: dict[tuple[int, int], int] = {}
    for key in more.windows["train"]:
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == set(plain.windows["train"])
    assert all(n == (3 if e in wide else 1) for (e, _), n in counts.items())
    # with start_repeat the two multiply
    both = DemoData(dataclasses.replace(cfg, start_frames=2, start_repeat=2))
    e = sorted(wide)[0]
    assert both.windows["train"].count((e, 0)) == 6 and both.windows["train"].count((e, 5)) == 3
    # repeat 1 is off whatever the threshold
    off = DemoData(dataclasses.replace(cfg, oversample_repeat=1))
    assert off.windows["train"] == plain.windows["train"]
    with pytest.raises(DatasetError, match=r"data\.oversample_dim 7 is not an action dimension"):
        DemoData(dataclasses.replace(cfg, oversample_dim=7))


def test_norm_quantile_zero_bounds_every_training_action(toy):
    """With q01/q99 the extreme 2 % of actions are clipped in training, so a policy
    never commands them; norm_quantile 0 takes min/max and keeps every action."""
    default = DemoData(DataConfig(dataset=str(toy), chunk=8))
    full = DemoData(DataConfig(dataset=str(toy), chunk=8, norm_quantile=0.0))
    actions = np.concatenate([full.episodes[e].action for e in full.train_episodes])
    assert np.allclose(full.action_stats.q01, actions.min(0))
    assert np.allclose(full.action_stats.q99, actions.max(0))
    clipped = default.action_stats.unnormalise(default.action_stats.normalise(actions))
    kept = full.action_stats.unnormalise(full.action_stats.normalise(actions))
    assert np.abs(clipped - actions).max() > 1e-3  # q01/q99 lose the extremes
    assert np.allclose(kept, actions, atol=1e-6)  # min/max keep them
    assert np.allclose(
        full.proprio_stats.q01,
        np.concatenate([full.episodes[e].state for e in full.train_episodes]).min(0),
    )


def test_a_dimension_that_barely_moves_is_not_stretched_over_the_range():
    """The touch expert's joint4 wobbles by +-1.5e-4 rad: bounds at its extremes
    would make that noise span [-1, 1], a target the model learns as signal."""
    rng = np.random.default_rng(0)
    moving = rng.uniform(-0.5, 0.6, 500)
    still = 0.2 + rng.uniform(-1.5e-4, 1.5e-4, 500)
    stats = quantile_stats(np.stack([moving, still], axis=1), q=0.0)
    assert np.allclose(stats.q01[0], moving.min()) and np.allclose(stats.q99[0], moving.max())
    assert np.isclose(stats.q99[1] - stats.q01[1], MIN_SPAN)
    assert np.isclose((stats.q99[1] + stats.q01[1]) / 2, (still.max() + still.min()) / 2)
    normalised = stats.normalise(np.stack([moving, still], axis=1))
    assert np.abs(normalised[:, 1]).max() < 0.05  # noise stays small, not +-1
    assert np.allclose(stats.unnormalise(normalised)[:, 1], still)  # and is kept exactly


def test_cached_frames_are_the_policys_pixels_and_augmentation_is_training_only(toy):
    data = DemoData(DataConfig(dataset=str(toy), chunk=4))
    ep = data.dataset.episodes[0]
    decoded = data.dataset.images(ep, CAMERAS[1])[5]
    policy_pixels = ImagePreprocessor().resized([decoded])[0]
    i = data.windows["train"].index((ep.index, 5))
    assert torch.equal(data.sample("train", i)["images"][1], policy_pixels)
    train = WindowDataset(data, "train", data.cfg.augment)
    plain = WindowDataset(data, "train", None)
    a, b, c = train[(i, 11)], train[(i, 11)], train[(i, 12)]
    assert torch.equal(a["images"], b["images"])  # seeded: a resumed run sees the same
    assert not torch.equal(a["images"], c["images"])
    diff = (a["images"].float() - plain[i]["images"].float()).abs().mean()
    assert diff > 1.0  # augmented
    assert torch.equal(plain[i]["images"], data.sample("train", i)["images"])
    assert torch.equal(a["actions"], plain[i]["actions"])  # only pixels change


def test_a_frame_cache_on_disk_gives_the_same_samples_and_is_reused(toy, tmp_path, monkeypatch):
    """data.frame_cache: the frames go to disk, memory-mapped, past max_cache_gb; the
    samples are the in-memory ones; a second run reads them without decoding; another
    input size gets its own files."""
    memory = DemoData(DataConfig(dataset=str(toy), chunk=4))
    cache = tmp_path / "frames"
    cfg = DataConfig(dataset=str(toy), chunk=4, frame_cache=str(cache), max_cache_gb=1e-6)
    disk = DemoData(cfg)
    assert isinstance(disk.episodes[0].frames, np.ndarray)  # memory-mapped, not loaded
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == len(memory.episodes)
    for i in (0, 7, len(memory.windows["train"]) - 1):
        a, b = memory.sample("train", i), disk.sample("train", i)
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["actions"], b["actions"])
    augment = memory.cfg.augment
    i = len(memory.windows["train"]) // 2
    assert torch.equal(
        WindowDataset(memory, "train", augment)[(i, 3)]["images"],
        WindowDataset(disk, "train", augment)[(i, 3)]["images"],
    )

    def no_decoding(*_):
        raise AssertionError("decoded although the cache holds the frames")

    monkeypatch.setattr(LeRobotDataset, "images", no_decoding)
    again = DemoData(cfg)
    assert torch.equal(again.sample("val", 0)["images"], memory.sample("val", 0)["images"])
    monkeypatch.undo()
    DemoData(cfg, image_size=112)
    assert len(list(cache.iterdir())) == 2  # one folder per input size
    with pytest.raises(DatasetError, match=r"data\.frame_cache"):
        DemoData(DataConfig(dataset=str(toy), chunk=4, max_cache_gb=1e-6))


def test_proprio_noise_perturbs_the_training_state_only(toy):
    data = DemoData(DataConfig(dataset=str(toy), chunk=4))
    noisy_cfg = dataclasses.replace(data.cfg.augment, proprio_noise=0.1)
    noisy = WindowDataset(data, "train", noisy_cfg)
    quiet = WindowDataset(data, "train", data.cfg.augment)  # proprio_noise 0: off
    n = len(noisy)
    exact = torch.stack([data.sample("train", i)["state"] for i in range(n)])
    # each training key carries its own augmentation seed (StepBatchSampler)
    noise = torch.stack([noisy[(i, 100 + i)]["state"] for i in range(n)]) - exact
    assert torch.equal(torch.stack([quiet[(i, 7)]["state"] for i in range(n)]), exact)
    assert abs(float(noise.std()) - 0.1) < 0.02 and abs(float(noise.mean())) < 0.02
    assert torch.equal(noisy[(3, 7)]["state"], noisy[(3, 7)]["state"])  # seeded
    assert not torch.equal(noisy[(3, 7)]["state"], noisy[(3, 8)]["state"])
    assert torch.equal(noisy[(3, 7)]["actions"], quiet[(3, 7)]["actions"])  # state only


def test_clock_input_is_the_time_since_the_episode_start(toy, tmp_path):
    """data.clock: the proprio input ends with the seconds since the episode's first
    frame; with data.proprio off it is the only value. A checkpoint trained so says
    clock_input and the policy then reads the clock from the observation stamps."""
    both = DemoData(DataConfig(dataset=str(toy), chunk=4, clock=True))
    plain = DemoData(DataConfig(dataset=str(toy), chunk=4))
    assert (both.proprio_dim, plain.proprio_dim) == (8, 7)
    fps = both.fps
    for e, ep in both.episodes.items():
        assert np.allclose(ep.proprio[:, :7], plain.episodes[e].proprio)
        assert np.allclose(ep.proprio[:, 7], np.arange(ep.length) / fps, atol=1e-6)
    longest = (max(ep.length for ep in both.episodes.values()) - 1) / fps
    assert both.proprio_stats.q01[7] == pytest.approx(0.0, abs=1e-6)
    assert both.proprio_stats.q99[7] > 0.9 * longest  # the 99th percentile of the clock
    i = next(i for i, (_, t) in enumerate(both.windows["train"]) if t == 0)
    assert float(both.sample("train", i)["state"][7]) == pytest.approx(-1.0)  # t = 0
    only = DemoData(DataConfig(dataset=str(toy), chunk=4, proprio=False, clock=True))
    assert only.proprio_dim == 1
    assert torch.equal(only.sample("train", i)["state"], both.sample("train", i)["state"][7:])
    r = recipe(toy, tmp_path / "run", "data.proprio=false", "data.clock=true", "train.steps=2")
    final = Trainer(r, progress=False, log=lambda _: None).run().final
    policy = Policy.from_checkpoint(final)
    action = policy.cfg.action
    assert (action.proprio_dim, action.clock_input, action.state_dim) == (1, True, 0)
    frames = [np.zeros((48, 64, 3), np.uint8)] * 2
    chunks = [policy.infer(Observation(frames, "reach", None, t)) for t in (3.0, 3.4)]
    assert [c.clock_s for c in chunks] == pytest.approx([0.0, 0.4])


def test_relative_targets_are_offsets_from_the_state_and_the_policy_adds_it_back(toy, tmp_path):
    """data.relative_dims 6: a window's joint targets are learnt minus the joint state at
    its frame (the gripper stays absolute), normalised with the offsets' bounds; the
    checkpoint says so and its policy adds the measured joints back: the same draw
    from a state moved by d gives joint targets moved by d and the same gripper."""
    data = DemoData(DataConfig(dataset=str(toy), chunk=4, relative_dims=6, norm_quantile=0.0))
    plain = DemoData(DataConfig(dataset=str(toy), chunk=4, norm_quantile=0.0))
    i = 7
    e, t = data.windows["train"][i]
    ep = data.episodes[e]
    s, p = data.sample("train", i), plain.sample("train", i)
    expected = p["raw_actions"].numpy().astype(np.float64)
    expected[:, :6] -= ep.state[t, :6]
    np.testing.assert_allclose(s["raw_actions"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        s["actions"].numpy(), data.action_stats.normalise(expected), atol=1e-5
    )
    offsets = np.concatenate(
        [
            data.episodes[k].action[np.minimum(u + 1 + np.arange(4), data.episodes[k].length - 1)]
            - np.r_[data.episodes[k].state[u, :6], 0.0]
            for k, u in data.windows["train"]
        ]
    )
    np.testing.assert_allclose(data.action_stats.q01, offsets.min(0), atol=1e-9)
    np.testing.assert_allclose(data.action_stats.q99, offsets.max(0), atol=1e-9)
    with pytest.raises(DatasetError, match="relative_dims 8"):
        DemoData(DataConfig(dataset=str(toy), chunk=4, relative_dims=8))

    r = recipe(toy, tmp_path / "run", "data.proprio=false", "data.relative_dims=6", "train.steps=2")
    final = Trainer(r, progress=False, log=lambda _: None).run().final
    policy = Policy.from_checkpoint(final)
    assert policy.cfg.action.relative_dims == 6 and policy.cfg.action.state_dim == 0
    frames = [np.zeros((48, 64, 3), np.uint8)] * 2
    q = np.array([0.1, 1.0, -1.2, 0.0, 0.5, 0.0, 0.03])
    d = np.array([0.05, -0.04, 0.03, 0.02, -0.01, 0.06, 0.01])
    policy.reset()
    a = policy.infer(Observation(frames, "reach", q, 1.0)).actions
    policy.reset()
    b = policy.infer(Observation(frames, "reach", q + d, 1.0)).actions
    np.testing.assert_allclose(b[:, :6] - a[:, :6], np.broadcast_to(d[:6], (len(a), 6)), atol=1e-9)
    np.testing.assert_allclose(b[:, 6], a[:, 6], atol=1e-12)
    with pytest.raises(ObservationError, match="offsets from the first 6"):
        policy.infer(Observation(frames, "reach", q[:3], 1.0))
    with pytest.raises(ObservationError, match="needs the robot state"):
        policy.infer(Observation(frames, "reach", None, 1.0))


def test_relative_chunks_are_ensembled_and_inpainted_as_joint_targets(toy, tmp_path):
    """Two chunks planned from different states are averaged where they overlap as
    targets, not as offsets: with the model's offsets fixed, the second chunk's
    ensembled targets are the mean of both chunks' targets at the shared instants."""
    r = recipe(toy, tmp_path / "run", "data.proprio=false", "data.relative_dims=6", "train.steps=1")
    final = Trainer(r, progress=False, log=lambda _: None).run().final
    frames = [np.zeros((48, 64, 3), np.uint8)] * 2
    q0 = np.array([0.1, 1.0, -1.2, 0.0, 0.5, 0.0, 0.03])
    q1 = q0 + np.array([0.08, -0.05, 0.04, 0.0, 0.02, 0.03, 0.0])
    single = Policy.from_checkpoint(final, settings=PolicySettings(noise_scale=0.0))
    a0 = single.infer(Observation(frames, "reach", q0, 1.0)).actions
    a1 = single.infer(Observation(frames, "reach", q1, 1.2)).actions
    both = Policy.from_checkpoint(
        final, settings=PolicySettings(noise_scale=0.0, ensemble_chunks=2)
    )
    both.infer(Observation(frames, "reach", q0, 1.0))
    e1 = both.infer(Observation(frames, "reach", q1, 1.2)).actions
    lag = int(round(0.2 / both.cfg.action.action_period_s))
    shared = len(a0) - lag  # the instants both chunks plan
    np.testing.assert_allclose(e1[:shared], 0.5 * (a1[:shared] + a0[lag:]), atol=1e-9)
    np.testing.assert_allclose(e1[shared:], a1[shared:], atol=1e-9)
    # the inpainted prefix: the previous chunk's targets, as offsets from the new state
    settings = PolicySettings(noise_scale=0.0, prefix_actions=2)
    inpainting = Policy.from_checkpoint(final, settings=settings)
    first = inpainting.infer(Observation(frames, "reach", q0, 1.0)).actions
    rows, _ = inpainting._prefix(1.2, q1)
    np.testing.assert_allclose(
        inpainting._from_model(rows[0].numpy().astype(np.float64), q1),
        first[lag : lag + 2],
        atol=1e-5,
    )


def test_instruction_dropout_masks_the_instruction_of_training_samples_only(toy):
    data = DemoData(DataConfig(dataset=str(toy), chunk=4))
    dropping = WindowDataset(
        data, "train", dataclasses.replace(data.cfg.augment, instruction_dropout=0.3)
    )
    n = len(dropping)
    drops = [bool(dropping[(i, 100 + i)]["drop_instruction"]) for i in range(n)]
    assert abs(sum(drops) / n - 0.3) < 0.1, sum(drops) / n
    assert dropping[(3, 7)]["drop_instruction"] == dropping[(3, 7)]["drop_instruction"]  # seeded
    quiet = WindowDataset(data, "train", data.cfg.augment)  # 0: off
    assert not any(quiet[(i, 100 + i)]["drop_instruction"] for i in range(n))
    assert not any(
        data.sample("val", i)["drop_instruction"] for i in range(len(data.windows["val"]))
    )
    # the encoder masks exactly the flagged rows' instruction tokens
    torch.manual_seed(0)
    model = DreamVLA(preset("tiny", head="flow", proprio_dim=7))
    cfg = model.cfg
    encoder = BatchEncoder(model, PromptBuilder(byte_tokenizer(cfg.newline_token_id + 1), cfg))
    first = drops.index(True)
    kept = next(i for i in range(n) if not drops[i])
    samples = [dropping[(first, 100 + first)], dropping[(kept, 100 + kept)]]
    ids = encoder(torch.utils.data.default_collate(samples), torch.device("cpu"))["input_ids"]
    assert int((ids[0] == cfg.mask_token_id).sum()) > 0
    assert int((ids[1] == cfg.mask_token_id).sum()) == 0


def test_colour_swap_moves_pixels_and_words_together(toy):
    """A pure-red patch called red: after the swap the patch is in the channel whose word
    the instruction now uses, for every camera; other samples' words are untouched."""
    words = ("red", "green", "blue")
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    images[:, 0, 2:4, 2:4] = 200  # a red cube in both cameras
    images[:, 2, 5:7, 5:7] = 150  # and a blue one
    seen = set()
    for seed in range(40):
        out, task = swap_colours(images, "Touch the red cube, not the Blue one", words, (
            torch.Generator().manual_seed(seed)
        ))  # fmt: skip
        first, second = task.split()[2], task.split()[-2]
        assert task.startswith("Touch the ") and second[0].isupper()
        red_now, blue_now = words.index(first), words.index(second.lower())
        assert red_now != blue_now
        for cam in range(2):
            assert int(out[cam, red_now, 2, 2]) == 200 and int(out[cam, red_now].sum()) == 800
            assert int(out[cam, blue_now, 5, 5]) == 150
        seen.add(first)
    assert seen == set(words)  # every renaming happens
    # in training samples: the recipe switch, seeded like the other augmentations
    data = DemoData(DataConfig(dataset=str(toy), chunk=4))  # "reach the <colour> cube"
    plain = WindowDataset(data, "train", data.cfg.augment)
    swapped = WindowDataset(
        data, "train", dataclasses.replace(data.cfg.augment, colour_words=words)
    )
    renamed = 0
    for seed in range(12):
        a, b = swapped[(0, seed)], plain[(0, seed)]
        before, after = b["task"].split()[2], a["task"].split()[2]
        renamed += before != after
        # the channel now named `after` shows what the channel named `before` showed
        assert torch.equal(a["images"][:, words.index(after)], b["images"][:, words.index(before)])
        assert torch.equal(a["actions"], b["actions"])
    assert renamed > 0


def test_missing_camera_and_state_are_named(toy):
    with pytest.raises(Exception, match=r"no camera 'observation\.images\.top'"):
        DemoData(DataConfig(dataset=str(toy), cameras=("observation.images.top",)))
    with pytest.raises(Exception, match="not a LeRobot dataset"):
        DemoData(DataConfig(dataset=str(toy / "nothing")))


# -- objectives and what trains --------------------------------------------------------
@pytest.mark.parametrize("head", ["flow", "discrete", "l1"])
def test_a_gradient_reaches_every_head(toy, head):
    model, _, inputs = tiny_inputs(head, toy)
    loss = TrainingObjective(model)(**inputs)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    heads = head_modules(model)
    expected = {"flow": 3, "discrete": 1, "l1": 2}[head]
    assert len(heads) == expected  # action head (+ noisy-action projector) + proprio
    for name, module in heads.items():
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"
    check_gradients(model)  # every trainable parameter got one
    if head == "discrete":  # the action tokens' output rows learn
        first = model.cfg.base_vocab_size
        assert model.lm_head.weight.grad[first:].abs().sum() > 0
    else:
        assert not model.lm_head.weight.requires_grad  # unused by this head: frozen


def test_a_head_left_out_of_the_optimizer_is_caught(toy):
    model, _, _ = tiny_inputs("flow", toy)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    check_optimizer_covers(model, torch.optim.AdamW(params))
    # the official scripts' bug: the flow head built but not given to the optimizer
    head_ids = {id(p) for p in model.action_head.parameters()}
    without_head = [p for p in params if id(p) not in head_ids]
    with pytest.raises(TrainingError, match="missing from the optimizer"):
        check_optimizer_covers(model, torch.optim.AdamW(without_head))
    model.action_head.requires_grad_(False)
    with pytest.raises(TrainingError, match="the action_head is not in the optimizer"):
        check_optimizer_covers(model, torch.optim.AdamW(without_head))
    model.action_head.requires_grad_(True)
    model.model.norm.weight.grad = None
    (model.action_head.flow_predictor.mlp_resnet.fc2.bias.sum() * 0).backward()
    with pytest.raises(TrainingError, match="got no gradient"):
        check_gradients(model)


@pytest.mark.parametrize("lora", [False, True])
def test_backbone_lr_scale_slows_the_pretrained_weights_only(toy, lora):
    model, _, inputs = tiny_inputs("flow", toy, lora=lora)
    params = trainable_parameters(model)
    t = TrainConfig(lr=1e-2, backbone_lr_scale=0.1, weight_decay=0.0)
    groups = param_groups(params, t)
    optimizer = torch.optim.AdamW(groups, lr=t.lr)
    check_optimizer_covers(model, optimizer)
    assert sum(len(g["params"]) for g in groups) == len(params)
    before = {n: p.detach().clone() for n, p in params.items()}
    model.train()
    TrainingObjective(model)(**inputs).backward()
    optimizer.step()
    # Adam's first step moves every weight with a gradient by about lr
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in params.items()}
    backbone = [m for n, m in moved.items() if n.split(".")[0] not in head_modules(model)]
    heads = [m for n, m in moved.items() if n.split(".")[0] in head_modules(model)]
    assert backbone and heads
    assert 0.5e-3 < max(backbone) <= 1.01e-3  # lr * 0.1: the VLM (or its adapters)
    assert 0.5e-2 < max(heads) <= 1.01e-2  # lr: the new action heads
    if lora:
        assert any("lora_" in n for n in params)
    # the default: the same two groups (decay / no decay) as before the option
    assert [g["lr"] for g in param_groups(params, TrainConfig(lr=1e-2))] == [1e-2, 1e-2]


def test_gradient_checkpointing_gives_the_same_gradients(toy):
    grads = []
    for on in (False, True):
        model, _, inputs = tiny_inputs("flow", toy)
        model.train()
        model.set_gradient_checkpointing(on)
        TrainingObjective(model)(**inputs).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_lora_trains_only_adapters_and_heads(toy, tmp_path):
    r = recipe(toy, tmp_path / "run", "lora.enabled=true", "lora.r=4", "train.steps=3")
    trainer = Trainer(r, progress=False, log=lambda _: None)
    result = trainer.run()
    base = load_file(str(tmp_path / "run/base/model.safetensors"))
    model = trainer.model  # the DreamVLA with LoRA layers injected
    changed, same = [], []
    for name, value in model.state_dict().items():
        plain = name.replace(".base_layer", "")
        if "lora_" in name:
            continue
        if plain.split(".")[0] in head_modules(model):
            continue
        (same if torch.equal(value, base[plain]) else changed).append(name)
    assert not changed, changed[:5]
    assert len(same) == len(base)  # every backbone tensor checked, none moved
    lora_b = [v for n, v in model.state_dict().items() if "lora_B" in n]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # adapters moved off zero
    start = load_file(str(tmp_path / "run/base/action_head.safetensors"))
    end = load_file(str(result.final / "action_head.safetensors"))
    assert all(not torch.equal(start[k], end[k]) for k in start)  # the head trained
    files = sorted(p.name for p in result.final.iterdir())
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    # an adapter whose base is gone is named as such, not half-loaded
    (tmp_path / "run/base").rename(tmp_path / "run/base-moved")
    with pytest.raises(CheckpointError, match=r"base checkpoint .* does not exist"):
        Policy.from_checkpoint(result.final)


@pytest.mark.parametrize(("lora", "ema"), [(False, 0.0), (True, 0.0), (False, 0.9), (True, 0.9)])
def test_two_steps_then_resume_equals_four_steps(toy, tmp_path, lora, ema):
    flags = ["lora.enabled=true", "lora.r=4"] if lora else ["lora.enabled=false"]
    flags.append(f"train.ema_decay={ema}")
    straight = Trainer(
        recipe(toy, tmp_path / "a", *flags, "train.steps=4", "train.save_every=2"),
        progress=False,
        log=lambda _: None,
    ).run()
    assert (tmp_path / "a/checkpoint-000002").is_dir()
    resumed = Trainer(
        recipe(toy, tmp_path / "b", *flags, "train.steps=4"),
        resume=tmp_path / "a/checkpoint-000002",
        progress=False,
        log=lambda _: None,
    ).run()
    assert [x for _, x in resumed.losses] == [x for _, x in straight.losses][2:]
    names = [p.name for p in straight.final.glob("*.safetensors")]
    assert len(names) >= 4
    for name in names:
        a = load_file(str(straight.final / name))
        b = load_file(str(resumed.final / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"


def test_weight_average_follows_the_weights_and_is_applied_only_in_its_block():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = WeightAverage({"w": p}, decay=0.9)
    assert ema.factor(1) == pytest.approx(2 / 11) and ema.factor(1000) == 0.9
    expected = torch.zeros(3)
    for step in range(1, 40):
        with torch.no_grad():
            p.add_(1.0)
        ema.update(step)
        f = ema.factor(step)
        expected = f * expected + (1 - f) * p.detach()
    assert torch.allclose(ema.shadow["w"], expected)
    assert 30 < float(expected[0]) < 39  # behind the weights (39), not at the start
    with ema.applied():
        assert torch.equal(p.detach(), ema.shadow["w"])
    assert torch.equal(p.detach(), torch.full((3,), 39.0))
    with pytest.raises(RuntimeError, match="inside"), ema.applied():
        raise RuntimeError("inside")
    assert torch.equal(p.detach(), torch.full((3,), 39.0))  # restored on an error too


def test_an_ema_checkpoint_holds_the_average_and_the_trained_weights(toy, tmp_path):
    """The saved weights (what the policy loads) are the average; the trained ones
    sit beside them for resuming, and a resume must keep the average setting."""
    flags = ["lora.enabled=false", "train.steps=3", "train.save_every=1", "train.keep_last=5"]
    result = Trainer(
        recipe(toy, tmp_path / "a", *flags, "train.ema_decay=0.9"),
        progress=False,
        log=lambda _: None,
    ).run()

    def saved(path: Path) -> dict[str, torch.Tensor]:
        model = DreamVLA(load_config(path))
        load_base_weights(model, path)
        return dict(model.named_parameters())

    raw = load_file(str(result.final / RAW_WEIGHTS))
    before, after = saved(tmp_path / "a/checkpoint-000002"), saved(result.final)
    f = WeightAverage({}, 0.9).factor(3)
    moved = 0
    for name, trained in raw.items():
        expected = f * before[name].detach() + (1 - f) * trained
        assert torch.allclose(after[name].detach(), expected, atol=1e-6), name
        moved += not torch.equal(after[name].detach(), trained)
    assert moved > 0  # the average is not the trained weights
    assert json.loads((result.final / "training.json").read_text())["ema_decay"] == 0.9
    plain = recipe(toy, tmp_path / "b", *flags, "train.steps=4")
    with pytest.raises(TrainingError, match=r"with a weight average.*ema_decay is 0\.0"):
        Trainer(plain, resume=result.final, progress=False, log=lambda _: None).run()


def test_resume_refuses_a_changed_recipe_and_a_used_output(toy, tmp_path):
    r = recipe(toy, tmp_path / "a", "train.steps=2")
    Trainer(r, progress=False, log=lambda _: None).run()
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        Trainer(r, progress=False, log=lambda _: None).run()
    changed = recipe(toy, tmp_path / "b", "train.steps=4", "model.freeze_vision=true")
    with pytest.raises(TrainingError, match="trainable parameters differ"):
        Trainer(changed, resume=tmp_path / "a/final", progress=False, log=lambda _: None).run()


# -- learning, checkpoints, CLI ------------------------------------------------------------
def test_tiny_tokenizers_give_instruction_words_their_own_ids(toy, tmp_path):
    words = instruction_words(["Touch the red cube.", "touch the blue cube", "touch the red cube"])
    assert words == ["cube", "the", "touch", "red", "blue"]  # most frequent first
    tok = byte_tokenizer(8, words, 512)
    enc = {c: tok.encode(question(f"touch the {c} cube")) for c in ("red", "blue", "green")}
    # known words are one token each (with their space), unknown ones stay bytes
    assert enc["red"].tokens[-5:] == ["\u0120touch", "\u0120the", "\u0120red", "\u0120cube", "?"]
    assert "\u0120green" not in enc["green"].tokens
    assert len(enc["red"].ids) == len(enc["blue"].ids)  # they differ in one position only
    assert sum(a != b for a, b in zip(enc["red"].ids, enc["blue"].ids)) == 1
    for colour, e in enc.items():
        assert tok.decode(e.ids) == question(f"touch the {colour} cube")
        assert max(e.ids) < 512 and min(e.ids) >= 8
    # the id budget holds: words that do not fit stay spelt out
    small = byte_tokenizer(8, words, 8 + 256 + 6)
    assert small.get_vocab_size() <= 256 + 6
    assert byte_tokenizer(8).get_vocab_size() == 256  # no words: bytes only
    # a checkpoint trained on the toy dataset carries them
    r = recipe(toy, tmp_path / "run", "train.steps=1", "train.val_every=0")
    final = Trainer(r, progress=False, log=lambda _: None).run().final
    saved = Tokenizer.from_file(str(final / "tokenizer.json"))
    assert "\u0120red" in saved.encode(question("reach the red cube")).tokens


def test_tiny_model_learns_the_toy_demonstrations(toy, tmp_path):
    """Figures (2-core CPU, flow head, full finetuning, 300 steps of 8): loss
    FIRST -> LAST, open-loop joint MAE on the demonstrations BEFORE -> AFTER rad."""
    r = recipe(
        toy,
        tmp_path / "run",
        "data.val_fraction=0.0",
        "train.steps=300",
        "train.batch_size=8",
        "train.lr=3e-3",
        "train.log_every=10",
        "train.val_every=300",
    )
    result = Trainer(r, progress=False, log=lambda _: None).run()
    first, last = result.losses[0][1], result.losses[-1][1]
    before, after = result.validations[0], result.validations[-1]
    print(
        f"loss {first:.3f} -> {last:.3f}, MAE {before['joint_mae']:.3f} -> {after['joint_mae']:.3f}"
    )
    assert (before["step"], after["step"], after["split"]) == (0, 300, "train")
    assert last < 0.4 * first
    assert after["joint_mae"] < 0.4 * before["joint_mae"]
    # the policy (the inference path) reproduces a demonstration from its first frame
    policy = Policy.from_checkpoint(result.final)
    data = DemoData(DataConfig(dataset=str(toy), chunk=8, val_fraction=0.0))
    ep = data.dataset.episodes[0]
    t = 6  # mid-move, where holding still would be far off
    front = data.dataset.images(ep, CAMERAS[0])[t]
    wrist = data.dataset.images(ep, CAMERAS[1])[t]
    demo = data.episodes[ep.index]
    chunk = policy.infer(Observation([front, wrist], ep.task, demo.state[t], stamp_s=1.0))
    target = demo.action[t + 1 : t + 9, :6]  # rows t + 1 ... t + 8 (action_offset 1)
    error = np.abs(chunk.actions[:, :6] - target).mean()
    hold = np.abs(demo.state[t, :6] - target).mean()
    print(f"policy chunk error {error:.3f} rad vs holding still {hold:.3f} rad")
    assert error < 0.4 * hold, (error, hold)


def test_cli_trains_merges_and_plots(toy, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dream_vla_ros.cli",
            "train",
            str(RECIPE),
            f"data.dataset={toy}",
            f"output_dir={tmp_path}/{{name}}",
            "train.steps=4",
            "train.batch_size=4",
            "train.val_every=2",
            "train.log_every=2",
            "model.head=discrete",
            "lora.enabled=true",
            "lora.r=4",
            "--merge",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "piper_tiny_cpu"
    summary = [line for line in proc.stdout.splitlines() if "steps in" in line]
    assert summary and "loss" in summary[0] and "joint MAE" in summary[0]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert [r["step"] for r in records if "joint_mae" in r] == [0, 2, 4]
    assert (out / "curves.png").stat().st_size > 10_000
    info = json.loads((out / "final/training.json").read_text())
    assert info["step"] == 4 and info["adapter"] == "lora" and len(info["git_revision"]) >= 7
    assert (out / "final/recipe.yaml").read_text() == (out / "final-merged/recipe.yaml").read_text()
    # the adapter checkpoint and its merged export give the same actions
    rng = np.random.default_rng(0)
    obs = Observation(
        [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(2)],
        "reach the blue cube",
        np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.05]),
    )
    a = Policy.from_checkpoint(out / "final").infer(obs).actions
    b = Policy.from_checkpoint(out / "final-merged").infer(obs).actions
    assert np.allclose(a, b, atol=1e-5)
    assert "model.safetensors" in {p.name for p in (out / "final-merged").iterdir()}
    with pytest.raises(Exception, match="exists and is not empty"):
        merge_checkpoint(out / "final", out / "final-merged")


@pytest.mark.ros
def test_a_trained_lora_checkpoint_drives_the_policy_node(toy, tmp_path):
    from rosutil import NodeProcess, wait_for
    from test_policy_node import BASE_PARAMS, POLICY, Feeder, Watch, _wait_ready

    from dream_vla_ros.control import JOINT_NAMES
    from dream_vla_ros.ros.client import GraphClient
    from dream_vla_ros.ros.conversions import time_to_sec

    r = recipe(toy, tmp_path / "run", "lora.enabled=true", "lora.r=4", "train.steps=2")
    final = Trainer(r, progress=False, log=lambda _: None).run().final
    client = GraphClient("finetune_policy_test")
    watch = Watch(client)
    params = {
        **BASE_PARAMS,
        "model.allow_random_weights": False,
        "model.checkpoint": str(final),
        "instruction": "reach the red cube",
        "cameras.topics": ["/ft/front", "/ft/wrist"],
        "cameras.kinds": ["raw", "raw"],
        "cameras.roles": ["front", "wrist"],
    }
    proc = NodeProcess(POLICY, params, "policy_finetuned")
    feed = Feeder(client, {"front": "/ft/front", "wrist": "/ft/wrist"})
    try:
        _wait_ready(watch, proc)
        wait_for(lambda: watch.n_chunks() >= 2, 30, "chunks from the finetuned checkpoint")
        with watch.lock:
            _, msg = watch.chunks[-1]
        assert list(msg.joint_names) == list(JOINT_NAMES) and len(msg.points) == 8
        assert time_to_sec(msg.header.stamp) in feed.stamps
        # the checkpoint's action period: the toy dataset's 10 Hz
        assert msg.points[1].time_from_start.nanosec == 200_000_000
        data = DemoData(DataConfig(dataset=str(toy)))
        lo, hi = data.action_stats.q01 - 1e-6, data.action_stats.q99 + 1e-6
        for p in msg.points:
            assert np.all((np.array(p.positions) >= lo) & (np.array(p.positions) <= hi))
    finally:
        feed.stop()
        proc.stop()
        client.close()


def test_accelerate_launch_runs_the_same_code_on_two_processes(toy, tmp_path):
    """Data-parallel (DDP over gloo on CPU): what multi-GPU runs do, with no code change."""
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "dream_vla_ros.finetune",
            str(RECIPE),
            f"data.dataset={toy}",
            f"output_dir={tmp_path}/{{name}}",
            "train.steps=3",
            "train.batch_size=2",
            "train.log_every=1",
            "lora.enabled=true",
            "lora.r=4",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "piper_tiny_cpu"
    assert proc.stdout.count("steps in") == 1  # only the main process reports
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert json.loads((out / "final/training.json").read_text())["step"] == 3
    Policy.from_checkpoint(out / "final")  # loads (adapter merged onto out/base)


def test_bf16_lora_keeps_the_frozen_base_in_half_precision(toy, tmp_path):
    r = recipe(
        toy,
        tmp_path / "run",
        "lora.enabled=true",
        "lora.r=4",
        "train.steps=2",
        "model.mixed_precision=bf16",
    )
    trainer = Trainer(r, progress=False, log=lambda _: None)
    result = trainer.run()
    dtypes = {p.requires_grad: set() for p in trainer.model.parameters()}
    for p in trainer.model.parameters():
        dtypes[p.requires_grad].add(p.dtype)
    assert dtypes == {True: {torch.float32}, False: {torch.bfloat16}}
    assert np.isfinite(result.losses[-1][1])
    chunk = Policy.from_checkpoint(result.final).infer(
        Observation([np.zeros((72, 96, 3), np.uint8)] * 2, "reach the red cube", np.zeros(7))
    )
    assert np.all(np.isfinite(chunk.actions))


def test_a_checkpoint_base_keeps_its_backbone_and_gets_a_new_head(toy, tmp_path):
    from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint

    base = write_random_checkpoint(tmp_path / "base", "tiny", seed=3, head="discrete")
    r = recipe(
        toy,
        tmp_path / "run",
        f"model.base={base}",
        "train.steps=1",
        "lora.enabled=true",
        "lora.r=4",
    )
    trainer = Trainer(r, progress=False, log=lambda _: None)
    result = trainer.run()
    backbone = load_file(str(base / "model.safetensors"))
    state = trainer.model.state_dict()
    for name, value in backbone.items():  # LoRA (enabled in this recipe) left them alone
        key = name if name in state else name.replace(".weight", ".base_layer.weight")
        key = key if key in state else key.replace(".bias", ".base_layer.bias")
        assert torch.equal(state[key], value), name
    head = trainer.model.action_head.flow_predictor.mlp_resnet.fc1.weight
    assert torch.isfinite(head).all() and head.std() > 0  # the new flow head was initialised
    chunk = Policy.from_checkpoint(result.final).infer(
        Observation([np.zeros((72, 96, 3), np.uint8)] * 2, "reach the red cube", np.zeros(7))
    )
    assert chunk.actions.shape == (8, 7) and np.all(np.isfinite(chunk.actions))


def test_the_base_sets_the_input_size_of_the_cached_frames_and_of_the_checkpoint(toy, tmp_path):
    from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint

    base = write_random_checkpoint(tmp_path / "base", "tiny", seed=3, image_size=336)
    r = recipe(toy, tmp_path / "run", f"model.base={base}", "train.steps=1")
    trainer = Trainer(r, progress=False, log=lambda _: None)
    result = trainer.run()
    assert trainer.data.preprocessor.size == 336
    frames = next(iter(trainer.data.episodes.values())).frames
    assert frames.shape[-2:] == (336, 336)
    policy = Policy.from_checkpoint(result.final)
    assert policy.cfg.image_size == 336 and policy.images.tokens_per_image == 144
    chunk = policy.infer(
        Observation([np.zeros((72, 96, 3), np.uint8)] * 2, "reach the red cube", np.zeros(7))
    )
    assert np.all(np.isfinite(chunk.actions))


def test_gradient_accumulation_steps_the_optimizer_once_per_group(toy, tmp_path):
    r = recipe(toy, tmp_path / "run", "train.steps=2", "train.grad_accum=3", "train.batch_size=2")
    trainer = Trainer(r, progress=False, log=lambda _: None)
    result = trainer.run()
    assert [s for s, _ in result.losses] == [1, 2]
    state = json.loads((result.final / "trainer_state.json").read_text())
    assert state["step"] == 2
    steps = load_file(str(result.final / "trainer_state.safetensors"))
    assert {float(v) for k, v in steps.items() if k.endswith(".step")} == {2.0}  # AdamW steps
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(r.train.lr * lr_factor(2, r))


def test_a_dataset_with_other_column_names_is_read_through_the_recipe_mapping(toy, tmp_path):
    """A third-party LeRobot v3.0 dataset calls its columns `actions` and
    `observation.joint_state`: without a mapping one sentence names the columns it
    has and the recipe key to set; with data.action_key / data.state_key it loads."""
    import shutil

    import pyarrow.parquet as pq

    from dream_vla_ros.data.lerobot import DatasetError
    from dream_vla_ros.finetune.data import DemoData

    other = tmp_path / "other"
    shutil.copytree(toy, other)
    renames = {"action": "actions", "observation.state": "observation.joint_state"}
    for path in (other / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([renames.get(n, n) for n in table.column_names]), path)
    info = json.loads((other / "meta/info.json").read_text())
    info["features"] = {renames.get(k, k): v for k, v in info["features"].items()}
    (other / "meta/info.json").write_text(json.dumps(info))
    (other / "meta/stats.json").unlink()
    with pytest.raises(
        DatasetError, match=r"no action column 'action'.*'actions'.*data.action_key"
    ):
        DemoData(DataConfig(dataset=str(other), proprio=True))
    with pytest.raises(DatasetError, match=r"no joint-state column.*data.state_key"):
        DemoData(DataConfig(dataset=str(other), action_key="actions", proprio=True))
    mapped = DemoData(
        DataConfig(
            dataset=str(other),
            action_key="actions",
            state_key="observation.joint_state",
            proprio=True,
        )
    )
    plain = DemoData(DataConfig(dataset=str(toy), proprio=True))
    assert mapped.proprio_dim == plain.proprio_dim > 0
    assert np.allclose(mapped.action_stats.q99, plain.action_stats.q99)
