"""The policy path as it runs on the robot's GPU, against the CPU path that the rest of
the suite checks: preprocessing on the device, checkpoints loaded to CUDA in each
dtype, decoding, the shipped checkpoint through `Policy.infer`. Marked `gpu` and
skipped (with the reason shown) where no CUDA device exists; on a machine with a CUDA
build of torch: `python -m pytest -m gpu test/test_gpu.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dream_vla_ros.model import ActionDecoder, DecodeSettings, DreamVLA, load_checkpoint, preset
from dream_vla_ros.policy import (
    ImagePreprocessor,
    Observation,
    Policy,
    PolicySettings,
    write_random_checkpoint,
)
from dream_vla_ros.policy.prompt import PromptBuilder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "touch_tiny"
ONE_LEVEL = 1.0 / (255 * 0.26130258)  # one uint8 level after CLIP normalisation (largest)


def frames(n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = np.mgrid[0:480, 0:640]
        smooth = np.stack([x * 0.3, y * 0.4, (x + y) * 0.2], -1) % 256
        out.append(np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8))
    return out


def prompt_of(policy_ckpt, n_images: int, device: str, dtype: torch.dtype):
    """(prompt embeddings, proprio) for two frames and an instruction, on `device`."""
    cfg = policy_ckpt.config
    pre = ImagePreprocessor(device=device)
    pixels, grid = pre(frames(n_images))
    ids = PromptBuilder.from_dir(policy_ckpt.path, cfg).ids(
        "touch the red cube", n_images, pre.tokens_per_image
    )
    model = policy_ckpt.model
    prompt = model.embed_prompt(torch.tensor([ids], device=device), pixels, grid)
    proprio = None
    if cfg.action.proprio_dim:
        proprio = torch.full((1, cfg.action.proprio_dim), 0.1, device=device, dtype=dtype)
    return prompt, proprio


def decode(ckpt, head: str, noise: torch.Tensor) -> torch.Tensor:
    """One chunk from a checkpoint loaded on the GPU (fixed start noise for flow)."""
    decoder = ActionDecoder(ckpt.model)
    prompt, proprio = prompt_of(ckpt, 2, "cuda", torch.float32)
    if head == "discrete":
        return decoder.discrete(prompt, None, proprio, DecodeSettings(steps=3))
    if head == "flow":
        return decoder.flow(prompt, None, proprio, 4, noise=noise)
    return decoder.regression(prompt, None, proprio)


def test_preprocessing_on_the_gpu_matches_the_cpu():
    cpu, gpu = ImagePreprocessor(), ImagePreprocessor(device="cuda")
    images = frames()
    resized_cpu, resized_gpu = cpu.resized(images), gpu.resized(images)
    assert resized_gpu.device.type == "cuda" and resized_gpu.dtype == torch.uint8
    # CUDA has no uint8 antialias kernel: floats are resized and rounded there, which
    # lands within two levels of the CPU's fixed-point uint8 kernel
    diff = (resized_gpu.cpu().int() - resized_cpu.int()).abs()
    assert diff.max().item() <= 2 and diff.float().mean().item() < 0.2
    # the same uint8 frames patchify identically on both devices
    pixels_cpu, grid_cpu = cpu.patchify(resized_cpu)
    pixels_gpu, grid_gpu = gpu.patchify(resized_cpu.cuda())
    assert torch.equal(grid_gpu.cpu(), grid_cpu)
    assert (pixels_gpu.cpu() - pixels_cpu).abs().max().item() <= 1e-5
    # and end to end within two levels of the CPU path
    full_gpu, _ = gpu(images)
    assert (full_gpu.cpu() - pixels_cpu).abs().max().item() <= 2 * ONE_LEVEL + 1e-5
    cropped = ImagePreprocessor(center_crop=True, device="cuda").resized([images[0]])
    assert cropped.shape == (1, 3, 224, 224)


@pytest.mark.parametrize("head", ["discrete", "flow", "l1"])
def test_checkpoint_on_cuda_matches_cpu_in_each_dtype(tmp_path, head):
    path = write_random_checkpoint(tmp_path / head, head=head)
    reference = load_checkpoint(path)
    with torch.no_grad():
        prompt, proprio = prompt_of(reference, 2, "cpu", torch.float32)
        expected = reference.model.forward_embeds(prompt, proprio=proprio).hidden
    # a loose bound per dtype: relative error of the last hidden states
    for dtype, bound in (("fp32", 1e-3), ("bf16", 0.1), ("fp16", 0.02)):
        ckpt = load_checkpoint(path, dtype=dtype, device="cuda")
        params = list(ckpt.model.parameters())
        assert all(p.device.type == "cuda" for p in params)
        assert {p.dtype for p in params} == {
            {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        }
        attn = ckpt.model.model.layers[0].self_attn.config._attn_implementation
        assert attn in ("sdpa", "flash_attention_2")
        with torch.no_grad():
            prompt, proprio = prompt_of(ckpt, 2, "cuda", params[0].dtype)
            hidden = ckpt.model.forward_embeds(prompt, proprio=proprio).hidden.float().cpu()
        err = ((hidden - expected).norm() / expected.norm()).item()
        assert err < bound, f"{head} {dtype}: relative hidden-state error {err:.4f}"


def test_decoding_on_cuda_matches_cpu(tmp_path):
    """Same inputs, same noise: flow and L1 chunks agree across devices; greedy discrete
    decoding picks the same bins (fp32)."""
    results = {}
    for head in ("discrete", "flow", "l1"):
        path = write_random_checkpoint(tmp_path / head, head=head)
        noise = torch.randn(1, 8, 7, generator=torch.Generator().manual_seed(3))
        for device in ("cpu", "cuda"):
            ckpt = load_checkpoint(path, device=device)
            decoder = ActionDecoder(ckpt.model)
            with torch.no_grad():
                prompt, proprio = prompt_of(ckpt, 2, device, torch.float32)
                if head == "discrete":
                    out = decoder.discrete(prompt, None, proprio, DecodeSettings(steps=2))
                elif head == "flow":
                    out = decoder.flow(prompt, None, proprio, 4, noise=noise)
                else:
                    out = decoder.regression(prompt, None, proprio)
            results[head, device] = out.float().cpu()
    for head in ("discrete", "flow", "l1"):
        cpu, gpu = results[head, "cpu"], results[head, "cuda"]
        assert gpu.shape == cpu.shape == (1, 8, 7)
        if head == "discrete":  # bins are 2/255 apart; allow an ulp-level tie to flip
            assert (gpu - cpu).abs().gt(1e-6).float().mean().item() <= 0.05
        else:
            assert torch.allclose(gpu, cpu, atol=2e-3), f"{head}: {(gpu - cpu).abs().max()}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_shipped_checkpoint_infers_on_cuda(dtype):
    """models/touch_tiny through Policy.infer on the GPU (front + wrist frames): an SI
    chunk inside the training range, repeatable after reset(), and from the same start
    noise the same integration as on the CPU."""
    obs = Observation(frames(2), "touch the red cube", None, stamp_s=7.5)
    policy = Policy.from_checkpoint(SHIPPED, dtype=dtype, device="cuda")
    chunk = policy.infer(obs)
    assert chunk.stamp_s == 7.5 and np.all(np.isfinite(chunk.actions))
    stats = policy.action_stats
    assert chunk.actions.shape == (policy.cfg.action.chunk, policy.cfg.action.action_dim)
    assert np.all(chunk.actions >= stats.q01 - 1e-6) and np.all(chunk.actions <= stats.q99 + 1e-6)
    policy.reset()
    assert np.allclose(policy.infer(obs).actions, chunk.actions, atol=1e-6)
    # with the same start noise, the GPU integration equals the CPU one
    cpu = Policy.from_checkpoint(SHIPPED)
    noise = torch.randn(
        1, cpu.cfg.action.chunk, cpu.cfg.action.action_dim, generator=torch.Generator()
    )
    outs = []
    for p, device in ((cpu, "cpu"), (policy, "cuda")):
        with torch.no_grad():
            pixels, grid = p.images(obs.images)
            ids = p.prompts.ids(obs.instruction, 2, p.images.tokens_per_image)
            prompt = p.model.embed_prompt(torch.tensor([ids], device=device), pixels, grid)
            steps = p.cfg.action.flow_steps
            outs.append(p.decoder.flow(prompt, None, None, steps, noise=noise).float().cpu())
    bound = 2e-3 if dtype == "fp32" else 0.1
    assert (outs[0] - outs[1]).abs().max().item() < bound


def test_policy_settings_seed_the_gpu_sampler(tmp_path):
    path = write_random_checkpoint(tmp_path / "flow", head="flow")
    obs = Observation(frames(2), "pick up the apple", np.zeros(7), stamp_s=1.0)
    a = Policy.from_checkpoint(path, device="cuda", settings=PolicySettings(seed=1)).infer(obs)
    b = Policy.from_checkpoint(path, device="cuda", settings=PolicySettings(seed=1)).infer(obs)
    c = Policy.from_checkpoint(path, device="cuda", settings=PolicySettings(seed=2)).infer(obs)
    assert np.array_equal(a.actions, b.actions)
    assert not np.allclose(a.actions, c.actions)


# -- CUDA graphs (dream_vla_ros/model/graphs.py) ------------------------------------------
def test_cuda_graphs_replay_the_eager_results(tmp_path):
    noise = torch.randn(1, 8, 7, generator=torch.Generator().manual_seed(4))
    for head in ("discrete", "flow", "l1"):
        ckpt = load_checkpoint(write_random_checkpoint(tmp_path / head, head=head), device="cuda")
        model = ckpt.model
        with torch.no_grad():
            eager = decode(ckpt, head, noise)
            model.use_cuda_graphs()
            first = decode(ckpt, head, noise)  # captures the vision tower and the backbone
            assert model.graphs.captures == 2 and not model.graphs.failures
            second = decode(ckpt, head, noise)  # replays only
            assert model.graphs.captures == 2 and model.graphs.replays > 2
        for out in (first, second):
            assert torch.allclose(out, eager, atol=1e-5), f"{head}: {(out - eager).abs().max()}"


def test_cuda_graphs_recapture_per_shape_and_stay_out_of_training(tmp_path):
    ckpt = load_checkpoint(write_random_checkpoint(tmp_path / "l1", head="l1"), device="cuda")
    model = ckpt.model
    embeds = torch.randn(1, 32, model.cfg.hidden_size, device="cuda")
    with torch.no_grad():
        eager = {n: model.forward_embeds(embeds[:, :n]).hidden for n in (30, 31, 32)}
        model.use_cuda_graphs(max_entries=2)
        for n in (30, 31, 32, 32):  # three prompt lengths: the oldest graph is dropped
            out = model.forward_embeds(embeds[:, :n]).hidden
            assert torch.allclose(out, eager[n], atol=1e-5)
    assert len(model.graphs) == 2 and model.graphs.captures == 3
    # a padding mask, gradients or training mode run eagerly
    mask = torch.ones(1, 30, dtype=torch.long, device="cuda")
    with torch.no_grad():
        model.forward_embeds(embeds[:, :30], attention_mask=mask)
    model.forward_embeds(embeds)  # grad enabled
    model.train()
    with torch.no_grad():
        model.forward_embeds(embeds)
    assert model.graphs.captures == 3


def test_policy_with_and_without_graphs_gives_the_same_chunk():
    obs = Observation(frames(2), "touch the blue cube", None, stamp_s=3.0)
    chunks = []
    for graphs in (False, True):
        settings = PolicySettings(cuda_graphs=graphs)
        policy = Policy.from_checkpoint(SHIPPED, device="cuda", settings=settings)
        assert (policy.model.graphs is not None) == graphs
        chunks.append([policy.infer(obs).actions for _ in range(2)])
        policy.reset()
        chunks[-1].append(policy.infer(obs).actions)
    for eager, graphed in zip(*chunks):
        assert np.allclose(eager, graphed, atol=1e-5)


def test_finetuning_runs_on_cuda_and_the_checkpoint_loads(tmp_path):
    """The trainer on the GPU (accelerate places the batches there): a few steps of the
    toy recipe, a checkpoint the policy loads back on the GPU."""
    from dream_vla_ros.finetune.recipe import load_recipe
    from dream_vla_ros.finetune.toy import write_toy_dataset
    from dream_vla_ros.finetune.trainer import Trainer

    toy = write_toy_dataset(tmp_path / "toy", episodes=3, length=20)
    root = Path(__file__).resolve().parents[1]
    r = load_recipe(
        root / "config/finetune/piper_tiny_cpu.yaml",
        [
            f"data.dataset={toy}",
            f"output_dir={tmp_path / 'run'}",
            "train.device=cuda",
            "train.steps=20",
            "train.batch_size=4",
            "train.val_every=0",
            "train.save_every=0",
        ],
    )
    result = Trainer(r, progress=False, log=lambda _: None).run()
    losses = [x for _, x in result.losses]
    assert len(losses) > 0 and all(np.isfinite(losses))
    policy = Policy.from_checkpoint(result.final, device="cuda")
    cfg = policy.cfg.action
    obs = Observation(frames(2), "pick up the cube", np.zeros(cfg.proprio_dim), stamp_s=2.0)
    assert policy.infer(obs).actions.shape == (cfg.chunk, cfg.action_dim)


def test_guided_policy_on_cuda_matches_cpu_with_and_without_graphs(tmp_path):
    """Classifier-free guidance (two batch rows) on the GPU, eager and graphed, gives the
    CPU's chunk for the same seed."""
    path = write_random_checkpoint(tmp_path / "flow", head="flow")
    (path / "recipe.yaml").write_text("data:\n  augment:\n    instruction_dropout: 0.15\n")
    obs = Observation(frames(2), "touch the blue cube", np.zeros(7), stamp_s=3.0)
    noise = torch.randn(1, 8, 7, generator=torch.Generator().manual_seed(5))
    chunks = {}
    for device, graphs in (("cpu", False), ("cuda", False), ("cuda", True)):
        settings = PolicySettings(guidance_scale=2.0, guidance_until=0.5, cuda_graphs=graphs)
        policy = Policy.from_checkpoint(path, device=device, settings=settings)
        policy._start_noise = lambda: noise.clone()  # the same start on every device
        chunks[(device, graphs)] = [policy.infer(obs).normalised for _ in range(2)]
    reference = chunks[("cpu", False)][0]
    for key, (first, second) in chunks.items():
        assert np.allclose(first, reference, atol=2e-3), key
        assert np.allclose(second, reference, atol=2e-3), key  # a replay, same inputs


# -- speed settings (dream_vla_ros/model/quantize.py, the prompt-cached flow head) -------
def _tiny_flow(flow_attention: str = "full") -> DreamVLA:
    torch.manual_seed(0)
    with torch.device("cuda"):
        return DreamVLA(preset("tiny", head="flow", flow_attention=flow_attention)).eval()


FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.parametrize(
    "weights",
    [
        "int8",
        pytest.param(
            "fp8",
            marks=pytest.mark.skipif(
                not FP8_GPU, reason="fp8 matrix products need compute capability 8.9 or above"
            ),
        ),
    ],
)
def test_8_bit_weights_track_the_bf16_model(weights):
    from dream_vla_ros.model.quantize import quantize_backbone

    model = _tiny_flow().to(torch.bfloat16)
    decoder = ActionDecoder(model)
    ids = torch.randint(10, 300, (1, 40), generator=torch.Generator().manual_seed(1)).cuda()
    proprio = torch.randn(1, 7, device="cuda", dtype=torch.bfloat16)
    noise = torch.randn(1, 8, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = decoder.flow(model.model.embed_tokens(ids), None, proprio, 4, noise=noise)
        assert quantize_backbone(model, weights) == 14
        eight = decoder.flow(model.model.embed_tokens(ids), None, proprio, 4, noise=noise)
    assert torch.isfinite(eight).all()
    assert (
        eight - plain
    ).abs().max() < 0.1  # normalised units; bench/speed_settings.py measures the 7B


def test_the_prompt_cached_flow_head_on_cuda_equals_its_whole_sequence():
    model = _tiny_flow("prompt_cached")
    decoder = ActionDecoder(model)
    ids = torch.randint(10, 300, (1, 40), generator=torch.Generator().manual_seed(1)).cuda()
    proprio = torch.randn(1, 7, device="cuda")
    noise = torch.randn(1, 8, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        prompt = model.model.embed_tokens(ids)
        cached = decoder.flow(prompt, None, proprio, 4, noise=noise)
        model.use_cuda_graphs()
        graphed = decoder.flow(prompt, None, proprio, 4, noise=noise)
        whole = decoder.flow(prompt, None, proprio, 4, noise=noise, use_cache=False)
    assert (cached - whole).abs().max() < 1e-4
    assert (graphed - cached).abs().max() < 1e-5
