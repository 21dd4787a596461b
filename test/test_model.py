"""Dream-VLA model core on CPU with the tiny preset: architecture, decoding, heads,
checkpoints, preprocessing against transformers' Qwen2-VL processor, policy."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dream_vla_ros.model import (
    ActionDecoder,
    ActionTokenizer,
    CheckpointError,
    DecodeSettings,
    DreamVLA,
    ModelConfigError,
    load_checkpoint,
    preset,
)
from dream_vla_ros.model.checkpoint import load_config
from dream_vla_ros.model.heads import euler_integrate
from dream_vla_ros.policy import (
    ImagePreprocessor,
    Observation,
    ObservationError,
    Policy,
    PolicySettings,
    write_random_checkpoint,
)

GOLDEN = Path(__file__).parent / "data" / "golden_tiny.safetensors"


def tiny_model(head: str = "discrete", seed: int = 0) -> DreamVLA:
    torch.manual_seed(seed)
    return DreamVLA(preset("tiny", head=head)).eval()


def prompt_inputs(model: DreamVLA, n_images: int = 2, seed: int = 1):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(8, 264, (10,), generator=g).tolist()
    ids = [cfg.im_start_token_id, *text[:4]]
    for _ in range(n_images):
        ids += [cfg.vision_start_token_id, *[cfg.image_token_id] * 64, cfg.vision_end_token_id]
    ids += [*text[4:], cfg.im_end_token_id]
    pixels = torch.randn(n_images * 256, 3 * 2 * 14 * 14, generator=g)
    grid = torch.tensor([[1, 16, 16]] * n_images)
    return torch.tensor([ids]), pixels, grid


# -- presets and architecture ----------------------------------------------------------
def test_7b_preset_has_the_published_shapes():
    cfg = preset("dream-vla-7b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (3584, 28, 28)
    assert (cfg.num_key_value_heads, cfg.intermediate_size) == (4, 18944)
    assert cfg.base_vocab_size == 152064 and cfg.vocab_size == 152064 + 256
    assert cfg.rope_theta == 1e6 and cfg.rms_norm_eps == 1e-6
    v = cfg.vision
    assert (v.depth, v.embed_dim, v.num_heads, v.patch_size) == (32, 1280, 16, 14)
    assert (v.spatial_merge_size, v.temporal_patch_size) == (2, 2)
    with torch.device("meta"):
        model = DreamVLA(cfg)
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (512, 3584)
    assert "model.layers.0.self_attn.q_proj.bias" in shapes
    assert "model.layers.0.self_attn.o_proj.bias" not in shapes  # bias on q/k/v only
    assert shapes["model.layers.27.mlp.gate_proj.weight"] == (18944, 3584)
    assert shapes["visual.blocks.31.attn.qkv.weight"] == (3840, 1280)
    assert shapes["projector.linear_1.weight"] == (3584, 3584)
    assert shapes["lm_head.weight"] == (152320, 3584)
    params = sum(t.numel() for t in model.parameters())
    assert 8.0e9 < params < 8.6e9, params


def test_tiny_forward_and_backward():
    model = tiny_model("flow").train()
    ids, pixels, grid = prompt_inputs(model)
    embeds = model.embed_prompt(ids, pixels, grid)
    out = model.forward_embeds(
        embeds,
        proprio=torch.linspace(-0.5, 0.5, 7)[None],
        time_token=model.action_head.time_token(torch.tensor([0.3])),
        logits=True,
    )
    assert out.hidden.shape == (1, ids.shape[1], 64)
    assert out.logits.shape == (1, ids.shape[1], model.cfg.vocab_size)
    loss = out.logits.logsumexp(-1).mean() + out.hidden.pow(2).mean()
    loss.backward()
    for name in ("visual.patch_embed.proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert model.proprio_projector.fc1.weight.grad.abs().sum() > 0


def test_attention_is_bidirectional():
    model = tiny_model()
    ids = torch.randint(8, 264, (1, 12))
    first = model.forward_embeds(model.embed_prompt(ids)).hidden[0, 0]
    ids2 = ids.clone()
    ids2[0, -1] = (ids[0, -1] + 1 - 8) % 256 + 8
    second = model.forward_embeds(model.embed_prompt(ids2)).hidden[0, 0]
    assert not torch.allclose(first, second), "the first position ignored the last token"


def test_padding_mask_hides_padded_keys():
    model = tiny_model()
    ids = torch.randint(8, 264, (1, 10))
    plain = model.forward_embeds(model.embed_prompt(ids)).hidden
    padded_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], dim=1).long()
    padded = model.forward_embeds(model.embed_prompt(padded_ids), mask).hidden[:, 3:]
    assert torch.allclose(plain, padded, atol=1e-5)


def test_sync_free_vision_matches_the_vision_tower():
    """The form of the vision call that CUDA graphs capture (grid on the CPU, rotary
    positions precomputed) computes what the plain call does; on CPU tensors the graph
    cache is never used."""
    model = tiny_model()
    _, pixels, grid = prompt_inputs(model, n_images=2)
    with torch.no_grad():
        plain = model.image_features(pixels, grid)
        sync_free = model.sync_free_vision(((1, 16, 16), (1, 16, 16)))(pixels)
        model.use_cuda_graphs()
        again = model.image_features(pixels, grid)
    assert plain.shape == (128, model.cfg.hidden_size)
    assert torch.allclose(sync_free, plain, atol=1e-6)
    assert torch.equal(again, plain) and model.graphs.captures == 0


def test_image_token_count_must_match_features():
    model = tiny_model()
    ids, pixels, grid = prompt_inputs(model, n_images=2)
    with pytest.raises(ValueError, match="do not match"):
        model.embed_prompt(ids, pixels[:256], grid[:1])


def test_golden_output_regression():
    """Outputs of a fixed-seed tiny model on fixed inputs, saved once (safetensors)."""
    model = tiny_model("discrete", seed=0)
    ids, pixels, grid = prompt_inputs(model, seed=1)
    with torch.no_grad():
        out = model.forward_embeds(
            model.embed_prompt(ids, pixels, grid), proprio=torch.ones(1, 7) * 0.1, logits=True
        )
    current = {
        "hidden": out.hidden[0, ::16].contiguous(),
        "logits": out.logits[0, -4:].contiguous(),
    }
    if os.environ.get("DREAM_VLA_WRITE_GOLDEN") == "1":  # deliberate regeneration only
        save_file(current, str(GOLDEN))
    assert GOLDEN.exists(), f"{GOLDEN} is missing (DREAM_VLA_WRITE_GOLDEN=1 rewrites it)"
    golden = load_file(str(GOLDEN))
    for key in golden:
        assert torch.allclose(current[key], golden[key], atol=1e-4), key


# -- action tokens and decoding ----------------------------------------------------------
def test_action_tokens_round_trip_within_half_a_bin():
    tok = ActionTokenizer(preset("tiny"))
    values = np.linspace(-1, 1, 1001)
    tokens = tok.encode(values)
    assert tokens.min() >= tok.first_token and tokens.max() < tok.vocab_size
    assert np.all(np.diff(tokens) <= 0), "higher values must get lower token ids"
    width = 2.0 / 255
    assert np.abs(tok.decode(tokens) - values).max() <= width / 2 + 1e-9


def test_one_step_reveals_every_action_token():
    model = tiny_model()
    decoder = ActionDecoder(model)
    prompt = model.embed_prompt(prompt_inputs(model)[0][:, :5])
    history: list[torch.Tensor] = []
    actions = decoder.discrete(prompt, None, None, DecodeSettings(steps=1), history=history)
    assert actions.shape == (1, 8, 7)
    assert len(history) == 1
    final = history[-1]
    assert not (final == model.cfg.mask_token_id).any()
    assert (final >= model.cfg.base_vocab_size).all(), "only action tokens at action positions"


@pytest.mark.parametrize("algorithm", ["maskgit_plus", "topk_margin", "entropy"])
def test_k_steps_reveal_in_confidence_order(monkeypatch, algorithm):
    model = tiny_model()
    decoder = ActionDecoder(model)
    n_bins = model.cfg.action.n_bins
    A = decoder.n_actions
    # position j is "sure" in proportion to j: its logits put more mass on bin j % n_bins
    sharp = torch.full((1, A, n_bins), 0.0)
    for j in range(A):
        sharp[0, j, j % n_bins] = 0.2 * j
    monkeypatch.setattr(decoder, "action_logits", lambda hidden: sharp.clone())
    prompt = model.embed_prompt(torch.randint(8, 264, (1, 6)))
    history: list[torch.Tensor] = []
    steps = 4
    decoder.discrete(
        prompt, None, None, DecodeSettings(steps=steps, algorithm=algorithm), history=history
    )
    mask_id = model.cfg.mask_token_id
    revealed_at = torch.full((A,), -1)
    for step, x in enumerate(history):
        newly = (x[0] != mask_id) & (revealed_at < 0)
        revealed_at[newly] = step
    assert (revealed_at >= 0).all()
    counts = [int((revealed_at == s).sum()) for s in range(steps)]
    levels = torch.linspace(1, 1e-3, steps + 1).tolist()
    remaining, expected = A, []
    for i in range(steps):
        n = remaining if i == steps - 1 else int(remaining * (1 - levels[i + 1] / levels[i]))
        expected.append(n)
        remaining -= n
    assert counts == expected
    # the most confident (highest j) positions come out first
    order = revealed_at.tolist()
    assert all(order[j] >= order[j + 1] for j in range(A - 1)), order
    # and every revealed token is the argmax bin of its position
    final = history[-1][0]
    assert torch.equal(final - model.cfg.base_vocab_size, torch.arange(A) % n_bins)


def test_left_to_right_is_one_token_per_step():
    model = tiny_model()
    decoder = ActionDecoder(model)
    prompt = model.embed_prompt(torch.randint(8, 264, (1, 6)))
    history: list[torch.Tensor] = []
    decoder.discrete(prompt, None, None, DecodeSettings(algorithm="left_to_right"), history=history)
    assert len(history) == decoder.n_actions
    for k, x in enumerate(history):
        revealed = (x[0] != model.cfg.mask_token_id).nonzero().squeeze(-1).tolist()
        assert revealed == list(range(k + 1))


def test_logit_shift_reads_the_previous_position(monkeypatch):
    """Action token p is read from the hidden state at p - 1 (Dream's shifted logits)."""
    model = tiny_model()
    decoder = ActionDecoder(model)
    seen = {}
    real = model.forward_embeds

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen["hidden"] = out.hidden
        return out

    monkeypatch.setattr(model, "forward_embeds", spy)
    prompt = model.embed_prompt(torch.randint(8, 264, (1, 6)))
    zeros = prompt.new_zeros(1, decoder.n_actions, 64)
    got = decoder.action_hidden(prompt, None, zeros, None)
    length = prompt.shape[1]
    assert torch.equal(got, seen["hidden"][:, length - 1 : length - 1 + decoder.n_actions])


def test_top_p_and_temperature_sampling_are_seeded():
    model = tiny_model()
    decoder = ActionDecoder(model)
    prompt = model.embed_prompt(torch.randint(8, 264, (1, 6)))
    s = DecodeSettings(steps=2, algorithm="origin", temperature=1.0, top_p=0.9)
    a = decoder.discrete(prompt, None, None, s, torch.Generator().manual_seed(3))
    b = decoder.discrete(prompt, None, None, s, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown decoding algorithm"):
        DecodeSettings(algorithm="beam")


def test_euler_integration_on_a_known_field():
    # dx/dt = a - x0 (constant): exact after any number of steps
    x0 = torch.tensor([[[0.5, -1.0]]])
    target = torch.tensor([[[0.2, 0.4]]])
    out = euler_integrate(lambda x, t: target - x0, x0, 4)
    assert torch.allclose(out, target, atol=1e-6)
    # dx/dt = x: Euler with N steps gives (1 + 1/N)^N, approaching e
    one = torch.ones(1, 1, 1)
    for n in (1, 4, 64):
        got = euler_integrate(lambda x, t: x, one, n).item()
        assert math.isclose(got, (1 + 1 / n) ** n, rel_tol=1e-6)
    # time is passed as k / N
    times = []
    euler_integrate(lambda x, t: (times.append(t.item()), x * 0)[1], one, 4)
    assert times == [0.0, 0.25, 0.5, 0.75]


def test_euler_inpaints_a_weighted_prefix():
    x0 = torch.tensor([[[1.0], [2.0], [3.0]]])
    target = torch.tensor([[[-1.0], [-2.0], [-3.0]]])
    prefix = torch.tensor([[[5.0], [6.0]]])
    seen = []

    def field(x, t):
        seen.append((t.item(), x.clone()))
        return target - x0

    out = euler_integrate(field, x0, 4, prefix, torch.tensor([1.0, 0.0]))
    # weight 1: the row is on the straight path from its noise to the prefix at every
    # step the field sees, and ends on the prefix; weight 0 and free rows: untouched
    for t, x in seen:
        assert torch.allclose(x[0, 0], (1 - t) * x0[0, 0] + t * prefix[0, 0])
    assert torch.allclose(out[0, 0], prefix[0, 0])
    assert torch.allclose(out[0, 1:], target[0, 1:])
    half = euler_integrate(lambda x, t: target - x0, x0, 4, prefix[:, :1], torch.tensor([0.5]))
    # weight 0.5 at every step: pulled past the mid-point towards the prefix, not onto it
    assert 0.5 * (prefix[0, 0, 0] + target[0, 0, 0]) < half[0, 0, 0] < prefix[0, 0, 0]
    with pytest.raises(ValueError, match="needs 2 weights"):
        euler_integrate(field, x0, 4, prefix, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="does not fit"):
        euler_integrate(field, x0, 4, torch.zeros(1, 4, 1), torch.ones(4))


# -- checkpoints -------------------------------------------------------------------------
def test_checkpoint_round_trip_and_official_names(tmp_path):
    path = write_random_checkpoint(tmp_path / "ckpt", head="flow", seed=5)
    files = sorted(p.name for p in path.iterdir())
    for name in (
        "config.json",
        "model.safetensors",
        "action_head.safetensors",
        "noisy_action_projector.safetensors",
        "proprio_projector.safetensors",
        "norm_stats.json",
        "tokenizer.json",
    ):
        assert name in files
    keys = set(load_file(str(path / "model.safetensors")))
    assert {k.split(".")[0] for k in keys} == {"visual", "model", "projector", "lm_head"}
    assert "flow_predictor.mlp_resnet.fc1.weight" in load_file(
        str(path / "action_head.safetensors")
    )
    assert set(load_file(str(path / "proprio_projector.safetensors"))) == {
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    }
    loaded = load_checkpoint(path)
    torch.manual_seed(5)
    original = DreamVLA(preset("tiny", head="flow")).state_dict()
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, original[k]), k
    config = json.loads((path / "config.json").read_text())
    assert config["vision_config"]["embed_dim"] == 32 and config["vocab_size"] == 512 + 256


def test_sharded_checkpoint_and_dtypes(tmp_path):
    from dream_vla_ros.model import save_checkpoint
    from dream_vla_ros.model.checkpoint import NormStats

    model = tiny_model("l1")
    stats = NormStats(-np.ones(7), np.ones(7))
    path = save_checkpoint(model, tmp_path / "s", stats, stats, max_shard_bytes=100_000)
    assert (path / "model.safetensors.index.json").exists()
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 2
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        loaded = load_checkpoint(path, dtype=dtype)
        assert loaded.model.lm_head.weight.dtype == torch_dtype


def test_missing_keys_and_wrong_shapes_are_named(tmp_path):
    path = write_random_checkpoint(tmp_path / "c")
    state = load_file(str(path / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    state["projector.linear_2.bias"] = torch.zeros(65)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "model.layers.1.mlp.up_proj.weight" in text
    assert "projector.linear_2.bias: checkpoint (65,) vs model (64,)" in text
    assert "extra.weight" in text


def test_pickle_files_are_refused(tmp_path):
    path = write_random_checkpoint(tmp_path / "c")
    (path / "action_head--10000_checkpoint.pt").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_missing_norm_stats_and_missing_head_file(tmp_path):
    path = write_random_checkpoint(tmp_path / "c", head="l1")
    (path / "norm_stats.json").unlink()
    with pytest.raises(CheckpointError, match=r"norm_stats\.json"):
        load_checkpoint(path)
    path2 = write_random_checkpoint(tmp_path / "d", head="l1")
    (path2 / "action_head.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"action_head\.safetensors"):
        load_checkpoint(path2)
    path3 = write_random_checkpoint(tmp_path / "e")
    (path3 / "norm_stats.json").write_text(json.dumps({"action": {"q01": [0] * 7}}))
    with pytest.raises(CheckpointError, match="q99"):
        load_checkpoint(path3)


# -- preprocessing -----------------------------------------------------------------------
def _frames(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    out = []
    for k in range(2):
        img = np.stack(
            [127 + 100 * np.sin(xx / 37 + k), 127 + 100 * np.cos(yy / 23), (xx + yy) % 256], -1
        )
        out.append(np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8))
    return out


def test_patches_match_transformers_qwen2_vl_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    pre = ImagePreprocessor()
    resized = pre.resized(_frames())  # two 640x480 frames -> 224x224
    ours, grid = pre.patchify(resized)
    reference = Qwen2VLImageProcessorPil()(
        images=[f.permute(1, 2, 0).numpy() for f in resized], return_tensors="pt"
    )
    assert ours.shape == reference["pixel_values"].shape == (512, 1176)
    assert torch.equal(grid, reference["image_grid_thw"])
    assert (ours - reference["pixel_values"]).abs().max().item() <= 1e-3


def test_resize_is_close_to_pil_bicubic_and_crops():
    from PIL import Image

    pre = ImagePreprocessor()
    frames = _frames(1)
    ours = pre.resized(frames).permute(0, 2, 3, 1).numpy().astype(int)
    pil = np.stack(
        [np.asarray(Image.fromarray(f).resize((224, 224), Image.BICUBIC)) for f in frames]
    )
    diff = np.abs(ours - pil.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 8
    cropped = ImagePreprocessor(center_crop=True).resized([frames[0]])
    expected = pre.resized([frames[0][:, 80:560]])
    assert torch.equal(cropped, expected)


def test_bad_images_are_named():
    pre = ImagePreprocessor()
    with pytest.raises(ValueError, match="image 1: expected uint8"):
        pre([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="image 0: expected an HxWx3"):
        pre([np.zeros((10, 10), np.uint8)])


# -- policy ------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["discrete", "flow", "l1"])
def test_policy_infers_a_stamped_si_chunk(tmp_path, head):
    path = write_random_checkpoint(tmp_path / head, head=head)
    policy = Policy.from_checkpoint(path, settings=PolicySettings(decode=DecodeSettings(steps=2)))
    obs = Observation(_frames(), "Pick up the apple.", np.zeros(7), stamp_s=42.25)
    chunk = policy.infer(obs)
    assert chunk.actions.shape == (8, 7) and chunk.stamp_s == 42.25
    assert chunk.period_s == 0.05
    stats = policy.action_stats
    assert np.all(chunk.actions >= stats.q01 - 1e-6) and np.all(chunk.actions <= stats.q99 + 1e-6)
    assert np.allclose(stats.unnormalise(chunk.normalised), chunk.actions)
    policy.reset()
    again = policy.infer(obs)
    assert np.allclose(again.actions, chunk.actions), "reset() must make sampling repeatable"


def test_policy_prefix_continues_the_previous_chunk(tmp_path):
    path = write_random_checkpoint(tmp_path / "flow", head="flow")
    free = Policy.from_checkpoint(path)
    tied = Policy.from_checkpoint(path, settings=PolicySettings(prefix_actions=3))
    period = tied.cfg.action.action_period_s
    obs = Observation(_frames(), "Pick up the apple.", np.zeros(7), stamp_s=10.0)
    first = tied.infer(obs)
    assert np.allclose(first.normalised, free.infer(obs).normalised)  # nothing to tie to
    # two periods later: actions 0-2 are what the first chunk planned for those instants
    later = Observation(obs.images, obs.instruction, obs.state, stamp_s=10.0 + 2 * period)
    second = tied.infer(later)
    assert np.allclose(second.normalised[:3], first.normalised[2:5], atol=1e-6)
    untied = free.infer(later)
    assert not np.allclose(second.normalised[:3], untied.normalised[:3], atol=1e-3)
    # the previous chunk covers one more action only: one row is tied
    end = second.stamp_s + len(second.normalised) * period
    last = tied.infer(Observation(obs.images, obs.instruction, obs.state, stamp_s=end - period))
    assert np.allclose(last.normalised[0], second.normalised[-1], atol=1e-6)
    # an older observation or a reset: nothing is tied
    tied.reset()
    free.reset()
    again = tied.infer(obs)
    assert np.allclose(again.normalised, free.infer(obs).normalised)
    older = Observation(obs.images, obs.instruction, obs.state, stamp_s=5.0)
    assert np.allclose(tied.infer(older).normalised, free.infer(older).normalised)
    with pytest.raises(ValueError, match="prefix_actions must be >= 0"):
        PolicySettings(prefix_actions=-1)
    with pytest.raises(ValueError, match="prefix_min_weight must be in"):
        PolicySettings(prefix_actions=2, prefix_min_weight=1.5)


def test_policy_correlated_start_noise(tmp_path):
    path = write_random_checkpoint(tmp_path / "flow", head="flow")
    assert Policy.from_checkpoint(path)._start_noise() is None  # as trained: the decoder's
    same = Policy.from_checkpoint(path, settings=PolicySettings(noise_correlation=1.0))
    rows = same._start_noise()[0]
    assert torch.allclose(rows, rows[:1].expand_as(rows))  # every action the same noise
    policy = Policy.from_checkpoint(path, settings=PolicySettings(noise_correlation=0.9))
    draws = torch.stack([policy._start_noise()[0] for _ in range(3000)])  # (N, H, D)
    a, b = draws[:, 0].flatten(), draws[:, -1].flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item() - 0.9) < 0.03
    assert abs(draws.var().item() - 1.0) < 0.05  # each row stays N(0, 1)
    chunk = policy.infer(Observation(_frames(), "Pick up the apple.", np.zeros(7), 1.0))
    assert chunk.actions.shape == (8, 7) and np.all(np.isfinite(chunk.actions))
    with pytest.raises(ValueError, match="noise_correlation must be in"):
        PolicySettings(noise_correlation=1.5)


def test_policy_start_noise_scale(tmp_path):
    path = write_random_checkpoint(tmp_path / "flow", head="flow")
    obs = Observation(_frames(), "Pick up the apple.", np.zeros(7), 1.0)
    half = Policy.from_checkpoint(path, settings=PolicySettings(noise_scale=0.5))
    draws = torch.stack([half._start_noise()[0] for _ in range(2000)])
    assert abs(draws.std().item() - 0.5) < 0.02 and abs(draws.mean().item()) < 0.02
    both = Policy.from_checkpoint(
        path, settings=PolicySettings(noise_scale=0.5, noise_correlation=1.0)
    )
    rows = both._start_noise()[0]
    assert torch.allclose(rows, rows[:1].expand_as(rows))  # correlation kept, then scaled
    assert abs(torch.stack([both._start_noise() for _ in range(2000)]).std().item() - 0.5) < 0.03
    # scale 0: every draw starts at the centre, so re-plans of one observation agree
    zero = Policy.from_checkpoint(path, settings=PolicySettings(noise_scale=0.0))
    first, second = zero.infer(obs), zero.infer(obs)
    assert np.allclose(first.actions, second.actions)
    plain = Policy.from_checkpoint(path)
    assert not np.allclose(plain.infer(obs).actions, plain.infer(obs).actions)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="noise_scale must be finite and >= 0"):
            PolicySettings(noise_scale=bad)


def test_policy_reads_the_episode_clock_from_the_observation_stamps(tmp_path):
    """A clock checkpoint reads the time since the first observation after reset():
    no robot state, restarted by reset(), clipped at the training range (0-3 s here)."""
    path = write_random_checkpoint(tmp_path / "clock", head="flow", proprio_dim=1, clock_input=True)
    policy = Policy.from_checkpoint(path, settings=PolicySettings(noise_scale=0.0))
    assert policy.cfg.action.state_dim == 0
    frames, text = _frames(), "Pick up the apple."
    chunks = [policy.infer(Observation(frames, text, None, t)) for t in (5.0, 5.5, 7.2)]
    assert [c.clock_s for c in chunks] == pytest.approx([0.0, 0.5, 2.2])
    assert not np.allclose(chunks[0].actions, chunks[1].actions)  # the clock is read
    late = [policy.infer(Observation(frames, text, None, t)).actions for t in (8.0, 20.0)]
    assert np.allclose(late[0], late[1])  # 3 s and 15 s: both the bound
    assert policy.infer(Observation(frames, text, None, 4.0)).clock_s == 0.0  # never < 0
    policy.reset()
    again = policy.infer(Observation(frames, text, None, 100.0))
    assert again.clock_s == 0.0 and np.allclose(again.actions, chunks[0].actions)
    # an inference that began before a reset (its chunk is dropped) does not start the
    # next episode's clock: the first observation after the reset does
    began = policy._episode
    policy.reset()
    assert policy.clock(100.0, began) == 0.0
    assert policy.infer(Observation(frames, text, None, 100.3)).clock_s == 0.0
    # a state-free checkpoint takes no state; one with both wants the joints only
    both = write_random_checkpoint(tmp_path / "both", proprio_dim=8, clock_input=True)
    joints = Policy.from_checkpoint(both)
    assert joints.infer(Observation(frames, text, np.zeros(7), 1.0)).clock_s == 0.0
    with pytest.raises(ObservationError, match="expected 7 values"):
        joints.infer(Observation(frames, text, np.zeros(8), 1.0))
    with pytest.raises(ModelConfigError, match=r"clock_input needs action\.proprio_dim >= 1"):
        preset("tiny", proprio_dim=0, clock_input=True)


def test_the_input_size_sets_the_tokens_per_image_and_old_configs_read_as_224(tmp_path):
    """`image_size` travels in config.json: a 336-pixel checkpoint gives 144 tokens an
    image (24 x 24 patches merged 2 x 2) from frames of any size; a config.json
    without the key reads as 224."""
    big = Policy.from_checkpoint(write_random_checkpoint(tmp_path / "big", image_size=336))
    assert big.images.size == 336 and big.images.tokens_per_image == 144
    frames = [np.zeros((240, 320, 3), np.uint8), np.zeros((72, 96, 3), np.uint8)]
    chunk = big.infer(Observation(frames, "reach the red cube", np.zeros(7)))
    assert np.all(np.isfinite(chunk.actions))
    assert json.loads((tmp_path / "big" / "config.json").read_text())["image_size"] == 336
    old = write_random_checkpoint(tmp_path / "old", image_size=336)
    data = json.loads((old / "config.json").read_text())
    del data["image_size"]  # as config.json files written before the key, and published ones
    (old / "config.json").write_text(json.dumps(data))
    assert load_config(old).image_size == 224
    assert Policy.from_checkpoint(old).images.tokens_per_image == 64
    for size in (0, 300):
        with pytest.raises(ModelConfigError, match="image_size must be a positive multiple of 28"):
            dataclasses.replace(preset("tiny"), image_size=size)


def test_policy_rejects_bad_observations(tmp_path):
    policy = Policy.from_checkpoint(write_random_checkpoint(tmp_path / "p"))
    good = _frames()
    bad = [
        (Observation(good, "", np.zeros(7)), "instruction"),
        (Observation([], "pick", np.zeros(7)), "images"),
        (Observation(good, "pick", None), "state"),
        (Observation(good, "pick", np.zeros(6)), "state: expected 7"),
        (Observation(good, "pick", np.array([0, 0, 0, np.nan, 0, 0, 0])), "NaN"),
        (Observation([good[0].astype(np.float32)], "pick", np.zeros(7)), "uint8"),
    ]
    for obs, message in bad:
        with pytest.raises(ObservationError, match=message):
            policy.infer(obs)


def test_prompt_is_the_qwen_chat_format(tmp_path):
    policy = Policy.from_checkpoint(write_random_checkpoint(tmp_path / "p"))
    cfg = policy.cfg
    ids = policy.prompts.ids("pick up the apple", 2, 64)
    assert ids.count(cfg.image_token_id) == 128
    assert ids.count(cfg.vision_start_token_id) == 2 and ids[0] == cfg.im_start_token_id
    text = policy.prompts.tokenizer.decode([i for i in ids if i > cfg.newline_token_id])
    assert "What action should the robot take to pick up the apple?" in text
    assert text.endswith("assistant\n")


def test_dropped_instruction_masks_exactly_its_tokens(tmp_path):
    policy = Policy.from_checkpoint(write_random_checkpoint(tmp_path / "p"))
    cfg, prompts = policy.cfg, policy.prompts
    ids = prompts.ids("Touch the red cube.", 2, 64)
    masked = prompts.ids("Touch the red cube.", 2, 64, drop_instruction=True)
    assert len(masked) == len(ids)  # same positions: the two rows batch without padding
    changed = [k for k, (a, b) in enumerate(zip(ids, masked, strict=True)) if a != b]
    assert changed and all(masked[k] == cfg.mask_token_id for k in changed)
    assert changed == list(range(changed[0], changed[-1] + 1))  # one contiguous span
    keep = [i for i in masked if i > cfg.newline_token_id]
    text = prompts.tokenizer.decode(keep)
    # the rest of the question stays (the space before the instruction may be a token)
    assert re.search(r"What action should the robot take to ?\?\nassistant", text), text
    assert "touch" not in text and "red" not in text
    # the span is the instruction's: a longer instruction masks more tokens
    longer = prompts.ids("touch the red cube now", 2, 64, drop_instruction=True)
    assert longer.count(cfg.mask_token_id) > masked.count(cfg.mask_token_id)


def test_guided_flow_extrapolates_from_the_masked_prompt():
    model = tiny_model("flow", seed=3)
    decoder = ActionDecoder(model)
    ids, pixels, grid = prompt_inputs(model)
    masked = ids.clone()
    masked[0, -5:-1] = model.cfg.mask_token_id  # stands for the instruction's tokens
    both = model.embed_prompt(torch.cat([ids, masked]), pixels, grid, shared_images=True)
    assert torch.allclose(both[:1], model.embed_prompt(ids, pixels, grid), atol=1e-5)
    noise = torch.randn(1, model.cfg.action.chunk, model.cfg.action.action_dim)
    cond = decoder.flow(both[:1], None, None, 1, noise=noise)
    uncond = decoder.flow(both[1:], None, None, 1, noise=noise)
    assert not torch.allclose(cond, uncond, atol=1e-4)  # the instruction matters
    # one Euler step from the same noise: x1 = x0 + v_u + w (v_c - v_u)
    for w in (0.0, 2.5):
        guided = decoder.flow(both, None, None, 1, noise=noise, guidance=w)
        assert guided.shape == cond.shape
        assert torch.allclose(guided, uncond + w * (cond - uncond), atol=1e-4)
    with pytest.raises(ValueError, match="guidance needs 2B prompt rows"):
        decoder.flow(both[:1], None, None, 1, noise=noise, guidance=2.0)


def test_policy_guidance_needs_a_dropout_trained_flow_checkpoint(tmp_path):
    obs = Observation(_frames(), "Pick up the apple.", np.zeros(7), stamp_s=3.0)
    discrete = write_random_checkpoint(tmp_path / "d", head="discrete")
    with pytest.raises(ValueError, match="needs a flow head"):
        Policy.from_checkpoint(discrete, settings=PolicySettings(guidance_scale=2.0))
    path = write_random_checkpoint(tmp_path / "f", head="flow")
    with pytest.raises(ValueError, match="instruction_dropout > 0"):
        Policy.from_checkpoint(path, settings=PolicySettings(guidance_scale=2.0))
    (path / "recipe.yaml").write_text("data:\n  augment:\n    instruction_dropout: 0.15\n")
    plain = Policy.from_checkpoint(path).infer(obs)
    same = Policy.from_checkpoint(path, settings=PolicySettings(guidance_scale=1.0)).infer(obs)
    assert np.array_equal(plain.normalised, same.normalised)  # 1: off, one row
    guided = Policy.from_checkpoint(path, settings=PolicySettings(guidance_scale=3.0)).infer(obs)
    assert guided.actions.shape == plain.actions.shape and np.all(np.isfinite(guided.actions))
    assert not np.allclose(guided.normalised, plain.normalised, atol=1e-4)
    with pytest.raises(ValueError, match="guidance_scale must be finite and >= 0"):
        PolicySettings(guidance_scale=-1.0)
    with pytest.raises(ValueError, match="guidance_scale must be finite and >= 0"):
        PolicySettings(guidance_scale=float("nan"))


def test_guidance_until_guides_only_the_early_flow_steps():
    model = tiny_model("flow", seed=3)
    decoder = ActionDecoder(model)
    ids, pixels, grid = prompt_inputs(model)
    masked = ids.clone()
    masked[0, -5:-1] = model.cfg.mask_token_id
    both = model.embed_prompt(torch.cat([ids, masked]), pixels, grid, shared_images=True)
    noise = torch.randn(1, model.cfg.action.chunk, model.cfg.action.action_dim)
    plain = decoder.flow(both[:1], None, None, 2, noise=noise)
    never = decoder.flow(both, None, None, 2, noise=noise, guidance=3.0, guidance_until=0.0)
    assert torch.allclose(never, plain, atol=1e-5)  # no step starts before t 0
    every = decoder.flow(both, None, None, 2, noise=noise, guidance=3.0)
    first = decoder.flow(both, None, None, 2, noise=noise, guidance=3.0, guidance_until=0.5)
    assert not torch.allclose(first, plain, atol=1e-4)  # the step at t 0 is guided
    assert not torch.allclose(first, every, atol=1e-4)  # the step at t 0.5 is not
    with pytest.raises(ValueError, match="guidance_until must be in"):
        PolicySettings(guidance_until=1.5)


# -- the prompt-cached flow head ----------------------------------------------------------
def _cached_model(seed: int = 0) -> DreamVLA:
    torch.manual_seed(seed)
    return DreamVLA(preset("tiny", head="flow", flow_attention="prompt_cached")).eval()


def test_prompt_cached_flow_gives_the_actions_of_the_whole_sequence():
    """The prompt's keys and values computed once and reused by every Euler step give
    the chunk of the block-causal forward over the whole sequence, with proprio and
    with classifier-free guidance (two prompt rows)."""
    model = _cached_model()
    decoder = ActionDecoder(model)
    prompt = model.model.embed_tokens(torch.randint(10, 300, (2, 40)))
    proprio = torch.randn(1, 7)
    noise = torch.randn(1, 8, 7)
    with torch.no_grad():
        for rows, guidance in ((prompt[:1], 1.0), (prompt, 2.0)):
            cached = decoder.flow(rows, None, proprio, 4, noise=noise, guidance=guidance)
            whole = decoder.flow(
                rows, None, proprio, 4, noise=noise, guidance=guidance, use_cache=False
            )
            assert (cached - whole).abs().max() < 1e-5
            full = ActionDecoder(_full_twin(model)).flow(
                rows, None, proprio, 4, noise=noise, guidance=guidance
            )
            assert (cached - full).abs().max() > 1e-2  # a different model: not a no-op


def _full_twin(model: DreamVLA) -> DreamVLA:
    twin = DreamVLA(preset("tiny", head="flow")).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_the_prompt_of_the_cached_head_does_not_see_the_actions():
    model = _cached_model()
    decoder = ActionDecoder(model)
    prompt = model.model.embed_tokens(torch.randint(10, 300, (1, 30)))
    time_token = model.action_head.time_token(torch.tensor([0.5]))
    with torch.no_grad():
        a = decoder.sequence_hidden(prompt, None, torch.randn(1, 56, 64), None, time_token)
        b = decoder.sequence_hidden(prompt, None, torch.randn(1, 56, 64), None, time_token)
        assert torch.equal(a[:, :30], b[:, :30])  # the prompt's hidden states
        assert not torch.allclose(a[:, 30:], b[:, 30:])
        # with a padding mask (training batches) the same holds
        mask = torch.ones(1, 30, dtype=torch.long)
        mask[0, :3] = 0
        c = decoder.sequence_hidden(prompt, mask, torch.randn(1, 56, 64), None, time_token)
        d = decoder.sequence_hidden(prompt, mask, torch.randn(1, 56, 64), None, time_token)
        assert torch.equal(c[:, 3:30], d[:, 3:30])


def test_the_prompt_cached_head_trains_and_needs_the_flow_head():
    from dream_vla_ros.finetune.objectives import TrainingObjective

    model = _cached_model().train()
    objective = TrainingObjective(model)
    ids = torch.randint(10, 300, (2, 30))
    prompt_ids = ids.clone()
    loss = objective(
        input_ids=prompt_ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=None,
        grid_thw=None,
        actions=torch.rand(2, 8, 7) * 2 - 1,
        pad=torch.ones(2, 8),
        proprio=torch.randn(2, 7),
        t=torch.rand(2),
        noise=torch.randn(2, 8, 7),
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert model.action_head.flow_predictor.mlp_resnet.fc1.weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ModelConfigError, match="prompt_cached needs the flow head"):
        preset("tiny", head="l1", flow_attention="prompt_cached")


# -- 8-bit weights --------------------------------------------------------------------------
def test_int8_weights_keep_the_chunk_and_halve_the_backbone_weights():
    from dream_vla_ros.model.quantize import Int8Linear, quantize_backbone

    torch.manual_seed(0)
    model = DreamVLA(preset("tiny", head="flow")).eval()
    decoder = ActionDecoder(model)
    prompt_ids = torch.randint(10, 300, (1, 40))
    proprio, noise = torch.randn(1, 7), torch.randn(1, 8, 7)
    layer = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        plain = decoder.flow(model.model.embed_tokens(prompt_ids), None, proprio, 4, noise=noise)
        history: list[torch.Tensor] = []
        decoder.discrete(
            model.model.embed_tokens(prompt_ids), None, proprio, DecodeSettings(), history=history
        )
        assert quantize_backbone(model, "int8") == 2 * 7
        q = model.model.layers[0].mlp.up_proj
        assert isinstance(q, Int8Linear) and q.qweight.dtype == torch.int8
        assert q.qweight.numel() == layer.weight.numel()
        # one row's error: at most half a step of its scale
        assert (
            q.qweight.float() * q.scale[:, None] - layer.weight
        ).abs().max() <= 0.5 * q.scale.max() + 1e-7
        int8 = decoder.flow(model.model.embed_tokens(prompt_ids), None, proprio, 4, noise=noise)
        again: list[torch.Tensor] = []
        decoder.discrete(
            model.model.embed_tokens(prompt_ids), None, proprio, DecodeSettings(), history=again
        )
    assert 0 < (int8 - plain).abs().max() < 0.05  # normalised units
    assert (again[-1] != history[-1]).sum() <= 2
    with pytest.raises(ValueError, match="weights must be one of"):
        quantize_backbone(model, "int4")


def test_fp8_weights_are_refused_on_a_cpu(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "ckpt", "tiny", head="l1")
    with pytest.raises(ValueError, match="fp8 needs a CUDA device"):
        Policy.from_checkpoint(ckpt, settings=PolicySettings(weights="fp8"))
    policy = Policy.from_checkpoint(ckpt, settings=PolicySettings(weights="int8"))
    frames = [np.zeros((64, 64, 3), np.uint8)] * 2
    chunk = policy.infer(Observation(frames, "reach", np.zeros(7), 0.0))
    assert np.all(np.isfinite(chunk.actions))


def test_chunk_smoothing_keeps_the_course_and_drops_the_jitter(tmp_path):
    from dream_vla_ros.policy.policy import smooth_chunk

    t = np.linspace(0.0, 1.5, 16)[:, None]
    course = np.hstack([0.3 * t**2 - 0.1 * t, np.sin(t), 0.02 * t])  # (16, 3), degree <= 4-ish
    jitter = np.random.default_rng(0).normal(0.0, 0.003, course.shape)
    fit = smooth_chunk(course + jitter, 4)
    # the course stays: the fit is nearer to it than the jittered points are
    assert np.sqrt(np.mean((fit - course) ** 2)) < 0.6 * np.sqrt(np.mean(jitter**2))
    # the second differences (what the arm feels as acceleration) lose the jitter
    rough = np.abs(np.diff(jitter, 2, axis=0)).max()
    assert np.abs(np.diff(fit - course, 2, axis=0)).max() < rough / 3
    assert np.allclose(smooth_chunk(course, 15), course)  # degree K-1: the points back
    path = write_random_checkpoint(tmp_path / "flow", head="flow")
    obs = Observation(_frames(), "Pick up the apple.", np.zeros(7), 1.0)
    plain = Policy.from_checkpoint(path, settings=PolicySettings(noise_scale=0.0))
    smooth = Policy.from_checkpoint(path, settings=PolicySettings(noise_scale=0.0, smooth_degree=2))
    a, b = plain.infer(obs), smooth.infer(obs)
    assert not np.allclose(a.actions, b.actions)
    # the published chunk is the fit (clipped to the trusted range like any chunk)
    inside = np.all(np.abs(b.normalised) < 1.0, axis=0)
    assert inside.any()
    fitted = b.normalised[:, inside]
    assert np.allclose(smooth_chunk(fitted, 2), fitted, atol=1e-9)
    assert np.allclose(b.actions, smooth.action_stats.unnormalise(b.normalised))
    with pytest.raises(ValueError, match="smooth_degree must be >= 0"):
        PolicySettings(smooth_degree=-1)


def test_temporal_ensembling_averages_the_draws_for_the_same_instant(tmp_path):
    path = write_random_checkpoint(tmp_path / "flow", head="flow")
    frames, text = _frames(), "Pick up the apple."
    plain = Policy.from_checkpoint(path)
    ensembled = Policy.from_checkpoint(path, settings=PolicySettings(ensemble_chunks=2))
    period = plain.cfg.action.action_period_s
    stamps = (1.0, 1.0 + period, 1.0 + 2 * period)
    draws = [plain.infer(Observation(frames, text, np.zeros(7), t)).normalised for t in stamps]
    out = [ensembled.infer(Observation(frames, text, np.zeros(7), t)) for t in stamps]
    assert np.allclose(out[0].normalised, draws[0])  # nothing earlier to average with
    # one action period later: action k was drawn for the instant of the first chunk's
    # action k + 1; the last one has no earlier draw
    assert np.allclose(out[1].normalised[:-1], (draws[1][:-1] + draws[0][1:]) / 2)
    assert np.allclose(out[1].normalised[-1], draws[1][-1])
    # the third averages with the two before it (the draws, not the averages)
    third = (draws[2][:-2] + draws[1][1:-1] + draws[0][2:]) / 3
    assert np.allclose(out[2].normalised[:-2], third)
    assert np.allclose(out[2].actions, ensembled.action_stats.unnormalise(out[2].normalised))
    ensembled.reset()  # a new episode forgets the draws
    again = ensembled.infer(Observation(frames, text, np.zeros(7), 5.0))
    assert np.allclose(again.normalised, draws[0])
    with pytest.raises(ValueError, match="ensemble_chunks must be >= 0"):
        PolicySettings(ensemble_chunks=-1)


def _corner_views(policy: Policy, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The frames resized, then cropped at the top-left and bottom-right corners to 95 %
    of their area and resized back: the first three views, made by hand."""
    from dream_vla_ros.policy.policy import VIEW_CROP_AREA

    resized = policy.images.resized(frames)
    s = resized.shape[-1]
    side = round(s * VIEW_CROP_AREA**0.5)

    def crop(top: int, left: int) -> list[np.ndarray]:
        crops = [f[:, top : top + side, left : left + side] for f in resized]
        return [policy.images.resize(c).permute(1, 2, 0).numpy() for c in crops]

    return [[f.permute(1, 2, 0).numpy() for f in resized], crop(0, 0), crop(s - side, s - side)]


@pytest.mark.parametrize("head", ["l1", "flow"])
def test_views_average_the_chunks_of_the_frames_and_their_corner_crops(tmp_path, head):
    """Each view is one batch row with its own images (not another row's), the flow
    head's rows start from the same noise, and the chunk is their mean."""
    path = write_random_checkpoint(tmp_path / head, head=head)
    text, state = "Pick up the apple.", np.zeros(7)
    noise = {"noise_scale": 0.5} if head == "flow" else {}
    three = Policy.from_checkpoint(path, settings=PolicySettings(views=3, **noise))
    out = three.infer(Observation(_frames(), text, state, 1.0))
    single = []
    for view in _corner_views(three, _frames()):
        # a fresh policy per view: the same seed, so the same start noise
        plain = Policy.from_checkpoint(path, settings=PolicySettings(**noise))
        single.append(plain.infer(Observation(view, text, state, 1.0)).normalised)
    assert not np.allclose(single[0], single[1], atol=1e-4)  # a crop changes the chunk
    inside = np.all(np.abs(np.stack(single)) < 1.0, axis=0)  # each view's chunk is clipped
    assert inside.mean() > 0.5
    assert np.allclose(out.normalised[inside], np.mean(single, 0)[inside], atol=1e-5)
    assert out.actions.shape == single[0].shape


def test_views_are_refused_where_an_average_of_rows_means_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"views must be in 1\.\.5"):
        PolicySettings(views=0)
    discrete = write_random_checkpoint(tmp_path / "discrete", head="discrete")
    with pytest.raises(ValueError, match="views > 1 averages the continuous heads"):
        Policy.from_checkpoint(discrete, settings=PolicySettings(views=2))
    flow = write_random_checkpoint(tmp_path / "flow", head="flow")
    with pytest.raises(ValueError, match="views > 1 averages the continuous heads"):
        Policy.from_checkpoint(flow, settings=PolicySettings(views=2, prefix_actions=2))
