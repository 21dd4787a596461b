"""The published Dream-VLA layouts and numerical equality with the official code.

The fixtures in test/data/official were written by the official implementation
(DreamLM/Dream-VLX at a72fa41, transformers 4.51.3) from tiny random models; their
README says how. Each test loads or converts them here and reproduces what the
official code computed on the same inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dream_vla_ros.model.actions import ActionDecoder, DecodeSettings
from dream_vla_ros.model.checkpoint import CheckpointError, load_checkpoint
from dream_vla_ros.model.convert import ConvertSettings, convert, export
from dream_vla_ros.model.official import OfficialLayoutError
from dream_vla_ros.policy.policy import Observation, Policy
from dream_vla_ros.policy.preprocess import ImagePreprocessor
from dream_vla_ros.policy.prompt import PromptBuilder

FIXTURES = Path(__file__).resolve().parent / "data" / "official"
OUT = json.loads((FIXTURES / "outputs.json").read_text())
RESULTS = OUT["results"]
A = OUT["constants"]["NUM_ACTIONS_CHUNK"] * OUT["constants"]["ACTION_DIM"]


def finetune_output(tmp_path: Path, head: str) -> Path:
    """An official finetune output folder: the fixture's own files plus the merged
    weights and processor files, which equal the base's (not committed twice)."""
    src = tmp_path / f"official_{head}"
    shutil.copytree(FIXTURES / f"finetune_{head}", src)
    for f in (FIXTURES / "base").iterdir():
        if f.name != "config.json":
            shutil.copyfile(f, src / f.name)
    return src


def frames() -> list[np.ndarray]:
    return [np.array(Image.open(FIXTURES / f"image_{i}.png")) for i in range(2)]


def prompt(ckpt) -> torch.Tensor:
    """The prompt embeddings for the fixture's images and instruction."""
    builder = PromptBuilder.from_dir(ckpt.path, ckpt.config)
    ids = builder.ids(OUT["instruction"], 2, 64)
    assert ids == OUT["input_ids"]
    pixels, grid = ImagePreprocessor(resize=ckpt.config.image_resize)(frames())
    return ckpt.model.embed_prompt(torch.tensor([ids]), pixels, grid, shared_images=True)


PROPRIO = torch.tensor([OUT["proprio_normalised"]], dtype=torch.float32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("converted")
    return {h: convert(finetune_output(tmp, h), tmp / h) for h in ("discrete", "l1", "flow")}


# --------------------------------------------------------------- preprocessing


def test_prompt_ids_equal_the_official_processor_and_chat_template():
    ckpt_cfg = load_checkpoint(FIXTURES / "base", unnorm_key="libero_spatial").config
    builder = PromptBuilder.from_dir(FIXTURES / "base", ckpt_cfg)
    assert builder.ids(OUT["instruction"], 2, 64) == OUT["input_ids"]
    # the official evaluation does not lower-case; training does, and so do we
    assert builder.ids(OUT["instruction"].upper(), 2, 64) == OUT["input_ids"]


def test_pixel_values_equal_the_official_image_processor():
    """Two frames of different sizes: 224x224 (passed through) and 236x212, which the
    official processor resizes to 224x224 with PIL's bicubic, as `image_resize: pil`."""
    official = load_file(str(FIXTURES / "pixel_values.safetensors"))["pixel_values"]
    assert [f.shape[:2] for f in frames()] == [(224, 224), (212, 236)]
    pixels, grid = ImagePreprocessor(resize="pil")(frames())
    assert grid.tolist() == OUT["image_grid_thw"]
    assert pixels.shape == official.shape
    assert (pixels - official).abs().max() < 1e-3
    # PyTorch's antialiased bicubic (the default for this project's own checkpoints)
    # differs from PIL's by about one level on the resized frame, not on the other
    fast, _ = ImagePreprocessor(resize="torch")(frames())
    assert (fast[:256] - official[:256]).abs().max() < 1e-3
    assert (fast[256:] - official[256:]).abs().max() > 1e-3


# ------------------------------------------------------------- published base


def test_published_base_loads_with_its_norm_stats():
    with pytest.raises(
        CheckpointError, match=r"2 datasets \['bridge_orig', 'libero_spatial_no_noops'\]"
    ):
        load_checkpoint(FIXTURES / "base")
    with pytest.raises(CheckpointError, match=r"'libero_goal' is not in .* available keys are"):
        load_checkpoint(FIXTURES / "base", unnorm_key="libero_goal")
    ckpt = load_checkpoint(FIXTURES / "base", unnorm_key="libero_spatial")  # + _no_noops
    stats = json.loads((FIXTURES / "base" / "config.json").read_text())["norm_stats"]
    expected = stats["libero_spatial_no_noops"]["action"]
    assert np.array_equal(ckpt.action_stats.q01, expected["q01"])
    assert np.array_equal(ckpt.action_stats.q99, expected["q99"])
    assert ckpt.action_stats.mask.tolist() == expected["mask"]
    bridge = load_checkpoint(FIXTURES / "base", unnorm_key="bridge_orig").action_stats
    assert np.array_equal(bridge.q01, stats["bridge_orig"]["action"]["q01"])
    cfg = ckpt.config
    assert (cfg.action.head, cfg.action.chunk, cfg.action.action_dim) == ("discrete", 8, 7)
    assert (cfg.vocab_size, cfg.token_end, cfg.action.decoding) == (152064, 151923, "official")


def test_logits_at_the_action_positions_equal_the_official_forward(converted):
    """One forward with zero embeddings at the action positions and the proprio
    token (the official regression/discrete path): logits at the 56 action positions,
    read one position earlier."""
    ckpt = load_checkpoint(converted["discrete"])
    with torch.no_grad():
        p = prompt(ckpt)
        decoder = ActionDecoder(ckpt.model)
        hidden = decoder.sequence_hidden(p, None, p.new_zeros(1, A, p.shape[-1]), PROPRIO)
        length = p.shape[1]
        logits = ckpt.model.lm_head(hidden[:, length - 1 : length - 1 + A])[0]
    official = torch.tensor(RESULTS["discrete_one_pass"]["action_token_logits"])
    assert (logits[:, 151667:151923] - official).abs().max() < 1e-4
    assert logits.argmax(-1).tolist() == RESULTS["discrete_one_pass"]["argmax"]


# ------------------------------------------------------- converted finetune outputs


@pytest.mark.parametrize("steps", [1, 4])
def test_discrete_diffusion_decoding_equals_the_official_decoder(converted, steps):
    ckpt = load_checkpoint(converted["discrete"])
    official = RESULTS[f"discrete_diffusion_{steps}"]
    history: list[torch.Tensor] = []
    with torch.no_grad():
        normed = ActionDecoder(ckpt.model).discrete(
            prompt(ckpt), None, PROPRIO, DecodeSettings(steps=steps), history=history
        )
    assert [h[0].tolist() for h in history] == official["history"]  # every step
    assert history[-1][0].tolist() == official["tokens"]  # the suffix positions too
    actions = ckpt.action_stats.unnormalise(normed[0].double().numpy())
    assert np.abs(actions - np.array(official["actions"])).max() < 1e-4


def test_l1_regression_equals_the_official_head(converted):
    ckpt = load_checkpoint(converted["l1"])
    with torch.no_grad():
        normed = ActionDecoder(ckpt.model).regression(prompt(ckpt), None, PROPRIO)[0]
    assert (normed - torch.tensor(RESULTS["l1"]["normalised"])).abs().max() < 1e-4
    actions = ckpt.action_stats.unnormalise(normed.double().numpy())
    assert np.abs(actions - np.array(RESULTS["l1"]["actions"])).max() < 1e-4


@pytest.mark.parametrize("steps", [1, 4])
def test_flow_matching_equals_the_official_integration(converted, steps):
    ckpt = load_checkpoint(converted["flow"])
    noise = torch.tensor([RESULTS["flow_noise"]])
    with torch.no_grad():
        normed = ActionDecoder(ckpt.model).flow(prompt(ckpt), None, PROPRIO, steps, noise=noise)
    actions = ckpt.action_stats.unnormalise(normed[0].double().numpy())
    assert np.abs(actions - np.array(RESULTS[f"flow_{steps}"]["actions"])).max() < 1e-4


def test_the_policy_turns_raw_observations_into_the_official_actions(converted):
    """Policy.infer from raw frames and raw proprio (normalised by the checkpoint's
    statistics) gives the official chunk, except that it clips the normalised
    actions to [-1, 1] (the training range) before un-normalising: the official
    code does not."""
    ckpt = load_checkpoint(converted["l1"])
    policy = Policy(ckpt)
    chunk = policy.infer(
        Observation(frames(), OUT["instruction"], np.array(OUT["raw_proprio"]), 1.0)
    )
    normed = np.clip(np.array(RESULTS["l1"]["normalised"]), -1.0, 1.0)
    expected = ckpt.action_stats.unnormalise(normed)
    assert np.abs(chunk.actions - expected).max() < 1e-4


# ------------------------------------------------------------ convert and export


def _pt(path: Path) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("module."): v
        for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
    }


def test_convert_keeps_every_weight_and_statistic(tmp_path, converted):
    src = finetune_output(tmp_path, "flow")
    dst = converted["flow"]
    assert not [p for p in dst.iterdir() if p.suffix == ".pt"]  # no pickle left
    for module in ("action_head", "proprio_projector", "noisy_action_projector"):
        [pt] = src.glob(f"{module}--*.pt")
        ours = load_file(str(dst / f"{module}.safetensors"))
        theirs = _pt(pt)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (
        load_file(str(dst / "model.safetensors")).keys()
        == load_file(str(src / "model.safetensors")).keys()
    )
    stats = json.loads((src / "dataset_statistics.json").read_text())["libero_spatial_no_noops"]
    ckpt = load_checkpoint(dst)
    assert np.array_equal(ckpt.action_stats.q01, stats["action"]["q01"])
    assert np.array_equal(ckpt.proprio_stats.q99, stats["proprio"]["q99"])
    decided = json.loads((dst / "config.json").read_text())["official"]
    assert decided["decided"] == {"head": "flow", "chunk": 8, "action_dim": 7}
    assert decided["unnorm_key"] == "libero_spatial_no_noops"
    # the converted checkpoint accepts its own key (as given to the official eval)
    assert load_checkpoint(dst, unnorm_key="libero_spatial").config.action.head == "flow"
    with pytest.raises(CheckpointError, match="converted from 'libero_spatial_no_noops'"):
        load_checkpoint(dst, unnorm_key="bridge_orig")


@pytest.mark.parametrize("head", ["l1", "flow", "discrete"])
def test_official_to_ours_to_official_gives_back_every_tensor(tmp_path, head):
    src = finetune_output(tmp_path, head)
    back = export(convert(src, tmp_path / "ours"), tmp_path / "back")
    for f in src.iterdir():
        twin = back / f.name
        assert twin.is_file(), f.name
        if f.suffix == ".pt":
            a, b = _pt(f), _pt(twin)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        elif f.suffix == ".safetensors":
            a, b = load_file(str(f)), load_file(str(twin))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        elif f.suffix == ".json":
            assert json.loads(f.read_text()) == json.loads(twin.read_text()), f.name
        else:
            assert f.read_bytes() == twin.read_bytes(), f.name


def test_a_model_of_this_project_exports_in_the_official_layout(tmp_path, converted):
    """Finetuned here (from a converted base, so the official token layout): the
    export has what run_libero_eval_dream.py reads, and converts back unchanged."""
    ours = load_checkpoint(converted["l1"])
    data = json.loads((converted["l1"] / "config.json").read_text())
    del data["official"]  # as `dream-vla train` writes it
    fresh = tmp_path / "trained"
    shutil.copytree(converted["l1"], fresh)
    (fresh / "config.json").write_text(json.dumps(data))
    (fresh / "dataset_statistics.json").unlink()
    out = export(fresh, tmp_path / "official")
    config = json.loads((out / "config.json").read_text())
    assert config["n_action_bins"] == 256 and config["vocab_size"] == 152064
    assert "action_config" not in config
    # what the official from_pretrained and rotary embedding need (seen missing when
    # the official evaluation loaded an export)
    head_half = config["hidden_size"] // config["num_attention_heads"] // 2
    assert sum(config["mrope_section"]) == head_half
    assert json.loads((out / "generation_config.json").read_text())["pad_token_id"] == 151643
    stats = json.loads((out / "dataset_statistics.json").read_text())
    assert list(stats) == ["robot"] and stats["robot"]["action"]["q01"] == list(
        ours.action_stats.q01
    )
    [head] = out.glob("action_head--*_checkpoint.pt")
    back = convert(out, tmp_path / "again", ConvertSettings())
    again = load_checkpoint(back)
    for name, tensor in ours.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name
    assert head.name == "action_head--latest_checkpoint.pt"


def test_exporting_a_model_the_official_code_cannot_run_is_refused(tmp_path):
    from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint

    tiny = write_random_checkpoint(tmp_path / "tiny", "tiny", head="l1")
    with pytest.raises(OfficialLayoutError, match="special tokens are not Qwen2's"):
        export(tiny, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _trained_from(converted: Path, tmp_path: Path, edit) -> Path:
    """A copy of a converted checkpoint as a trained one (no `official` record), its
    config.json changed by `edit(config dict)`."""
    data = json.loads((converted / "config.json").read_text())
    del data["official"]
    edit(data)
    fresh = tmp_path / "trained"
    shutil.copytree(converted, fresh)
    (fresh / "config.json").write_text(json.dumps(data))
    return fresh


@pytest.mark.parametrize(
    "key, value, words",
    [
        (("image_size",), 336, "reads 336-pixel images"),
        # the official code reads every action as absolute
        (("action_config", "relative_dims"), 6, "first 6 actions are offsets"),
    ],
)
def test_a_model_the_official_code_would_misread_is_not_exported(
    tmp_path, converted, key, value, words
):
    def edit(data: dict) -> None:
        target = data
        for k in key[:-1]:
            target = target[k]
        target[key[-1]] = value

    fresh = _trained_from(converted["l1"], tmp_path, edit)
    with pytest.raises(OfficialLayoutError, match=words):
        export(fresh, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- refusals


def _rewrite(pt: Path, change) -> None:
    state = torch.load(pt, map_location="cpu", weights_only=True)
    torch.save(change(state), pt)


def test_convert_refuses_a_renamed_key_by_name(tmp_path):
    src = finetune_output(tmp_path, "l1")
    [pt] = src.glob("action_head--*.pt")
    _rewrite(
        pt, lambda s: {k.replace("model.fc2.weight", "model.fc3.weight"): v for k, v in s.items()}
    )
    with pytest.raises(OfficialLayoutError, match=r"fc3\.weight") as err:
        convert(src, tmp_path / "out")
    assert "fc2.weight" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_convert_refuses_a_wrong_shape_by_name(tmp_path):
    src = finetune_output(tmp_path, "flow")
    [pt] = src.glob("noisy_action_projector--*.pt")
    _rewrite(pt, lambda s: {**s, "module.fc2.bias": torch.zeros(3)})
    with pytest.raises(OfficialLayoutError, match=r"fc2\.bias: checkpoint \(3,\)"):
        convert(src, tmp_path / "out")


def test_convert_refuses_two_checkpoints_of_one_module_and_a_missing_one(tmp_path):
    src = finetune_output(tmp_path, "l1")
    [pt] = src.glob("action_head--*.pt")
    shutil.copyfile(pt, src / "action_head--60000_checkpoint.pt")
    with pytest.raises(OfficialLayoutError, match="two checkpoints of action_head"):
        convert(src, tmp_path / "out")
    pt.unlink()
    (src / "action_head--60000_checkpoint.pt").unlink()
    with pytest.raises(OfficialLayoutError, match=r"no action_head--.* which a l1 head needs"):
        convert(src, tmp_path / "out", ConvertSettings(head="l1"))


def test_convert_asks_for_the_head_when_the_files_do_not_say(tmp_path):
    src = finetune_output(tmp_path, "flow")
    [pt] = src.glob("action_head--*.pt")
    _rewrite(pt, lambda s: {k.replace("flow_predictor.", "model."): v for k, v in s.items()})
    with pytest.raises(OfficialLayoutError, match="give --head"):
        convert(src, tmp_path / "out")


class NotATensor:
    pass


def test_a_pickle_that_is_not_a_state_dict_is_refused_without_running_it(tmp_path):
    src = finetune_output(tmp_path, "l1")
    [pt] = src.glob("action_head--*.pt")
    torch.save({"optimizer": NotATensor()}, pt)  # unpickling it would build this class
    with pytest.raises(OfficialLayoutError, match="not a state dict that loads with weights_only"):
        convert(src, tmp_path / "out")


def test_the_policy_never_opens_a_pickle(tmp_path):
    src = finetune_output(tmp_path, "l1")
    with pytest.raises(CheckpointError, match="dream-vla convert SRC DST"):
        load_checkpoint(src)


def test_statistics_files_are_read_as_the_official_evaluation_does(tmp_path):
    """dataset_statistics.json replaces config.json's norm_stats."""
    base = tmp_path / "base"
    shutil.copytree(FIXTURES / "base", base)
    stats = {
        "mine": json.loads((FIXTURES / "finetune_l1" / "dataset_statistics.json").read_text())[
            "libero_spatial_no_noops"
        ]
    }
    (base / "dataset_statistics.json").write_text(json.dumps(stats))
    ckpt = load_checkpoint(base)  # one dataset: no key needed
    assert np.array_equal(ckpt.action_stats.q99, stats["mine"]["action"]["q99"])


def test_finetuning_from_the_published_base_keeps_the_official_layout(tmp_path):
    """A recipe whose model.base is the published base (model.unnorm_key chooses
    among its datasets' statistics): two discrete training steps on the toy data, and
    the trained model keeps the official token layout and decoding, runs in the policy
    and exports to the official layout."""
    from dream_vla_ros.finetune.recipe import load_recipe
    from dream_vla_ros.finetune.toy import write_toy_dataset
    from dream_vla_ros.finetune.trainer import Trainer

    toy = write_toy_dataset(tmp_path / "toy", episodes=3, length=12)
    recipe = Path(__file__).resolve().parents[1] / "config/finetune/piper_tiny_cpu.yaml"
    overrides = [
        f"data.dataset={toy}", f"output_dir={tmp_path / 'run'}", "train.batch_size=2",
        "train.val_every=0", "train.save_every=0", "train.steps=2", "lora.enabled=false",
        f"model.base={FIXTURES / 'base'}", "model.head=discrete",
    ]  # fmt: skip
    from dream_vla_ros.finetune.errors import TrainingError

    with pytest.raises((CheckpointError, TrainingError), match="choose one with unnorm_key"):
        Trainer(load_recipe(recipe, overrides), progress=False, log=lambda _: None).run()
    r = load_recipe(recipe, [*overrides, "model.unnorm_key=libero_spatial"])
    result = Trainer(r, progress=False, log=lambda _: None).run()
    ckpt = load_checkpoint(result.final)
    cfg = ckpt.config
    assert (cfg.token_end, cfg.action.decoding, cfg.image_resize) == (151923, "official", "pil")
    chunk = Policy(ckpt).infer(Observation(frames(), "reach the red cube", np.zeros(7), 0.0))
    assert chunk.actions.shape == (8, 7) and np.all(np.isfinite(chunk.actions))
    out = export(result.final, tmp_path / "official")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 152064


def test_an_official_config_this_project_cannot_build_is_refused_in_one_sentence(tmp_path):
    base = tmp_path / "base"
    shutil.copytree(FIXTURES / "base", base)
    config = json.loads((base / "config.json").read_text())
    for key, value, words in (
        ("projector_hidden_act", None, "projector_hidden_act must be one of"),
        ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope_scaling"),
    ):
        (base / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(base, unnorm_key="bridge_orig")


def test_the_published_base_converts_and_exports_under_its_own_dataset_name(tmp_path):
    ours = convert(FIXTURES / "base", tmp_path / "ours", ConvertSettings(unnorm_key="bridge_orig"))
    assert load_checkpoint(ours).config.action.head == "discrete"
    back = export(ours, tmp_path / "back")
    original = json.loads((FIXTURES / "base" / "config.json").read_text())
    assert json.loads((back / "config.json").read_text()) == original
    stats = json.loads((back / "dataset_statistics.json").read_text())
    assert list(stats) == ["bridge_orig"]
    assert (
        stats["bridge_orig"]["action"]["q01"]
        == original["norm_stats"]["bridge_orig"]["action"]["q01"]
    )
    with pytest.raises(OfficialLayoutError, match="already in the official layout"):
        export(back, tmp_path / "again")
