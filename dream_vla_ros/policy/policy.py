"""`Policy.infer(observation) -> ActionChunk`: images + state + instruction to an
un-normalised action chunk in SI units (rad, gripper opening in m), stamped with
the observation's time. No ROS here; the policy node (ros/policy_node.py) wraps it.

Everything one inference does to a chunk (views, start noise, prefix inpainting,
the fit, the temporal ensemble) is in this one module (longer than most), in the
order it happens, so the settings' interplay can be read in one place."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from dream_vla_ros.model.actions import ActionDecoder, DecodeSettings
from dream_vla_ros.model.checkpoint import LoadedCheckpoint, NormStats, load_checkpoint
from dream_vla_ros.model.quantize import WEIGHTS, quantize_backbone
from dream_vla_ros.policy.preprocess import ImageError, ImagePreprocessor
from dream_vla_ros.policy.prompt import PromptBuilder

# the views' crops (PolicySettings.views): the smallest area of the simulated tasks'
# training crop (config/finetune/{touch,place}_tiny_cpu.yaml data.augment.crop_scale)
VIEW_CROP_AREA = 0.95


class ObservationError(ValueError):
    """An observation the policy refuses; the message names the field and the problem."""


@dataclass
class Observation:
    images: list[np.ndarray]  # HxWx3 uint8 RGB: third-person first, then wrist
    instruction: str
    state: np.ndarray | None = None  # (state_dim,) joint positions + gripper, SI
    stamp_s: float = 0.0  # time the images were taken (ROS clock)


@dataclass
class ActionChunk:
    actions: np.ndarray  # (chunk, action_dim) absolute targets, SI units
    stamp_s: float  # the observation's stamp: actions[k] is for stamp + (k + 1) * period
    period_s: float
    normalised: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    latency_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # preprocess_s, model_s
    clock_s: float | None = None  # the episode clock the model read (clock checkpoints)


@dataclass(frozen=True)
class PolicySettings:
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    flow_steps: int | None = None  # None = the checkpoint's action_config.flow_steps
    center_crop: bool = False
    seed: int = 0
    cuda_graphs: bool = True  # on a GPU: replay captured graphs (dream_vla_ros/model/graphs.py)
    # the backbone's linear layers: plain (the checkpoint's dtype), int8 or fp8
    # (dream_vla_ros/model/quantize.py; a speed setting with its accuracy measured)
    weights: str = "plain"
    # Flow head: inpaint a new chunk's first `prefix_actions` actions from what the
    # previous chunk planned for those instants (weights fall linearly from 1 to
    # `prefix_min_weight`), so re-planning continues the motion it is in. 0: off.
    prefix_actions: int = 0
    prefix_min_weight: float = 1.0
    # Flow head: share of the start noise that all actions of a chunk have in common
    # (each row stays N(0, 1); 0: independent rows, as trained).
    noise_correlation: float = 0.0
    # Flow head: the start noise is scaled by this (a sampling temperature): below 1
    # the draws lean towards the centre of what the model learnt, so successive
    # re-plans pick the same cube more often (docs/sim.md, "What was tried"). 1: as trained.
    noise_scale: float = 1.0
    # Flow head: classifier-free guidance weight w. Each Euler step follows
    # v_masked + w * (v - v_masked), v_masked being the velocity with the instruction
    # masked: w > 1 leans further towards what the instruction changes. Needs a
    # checkpoint trained with data.augment.instruction_dropout > 0; costs a second
    # batch row per step. 1: off (one row, as trained). `guidance_until`: guide only
    # the Euler steps that start before this flow time (0 = noise, 1 = the chunk),
    # where the coarse plan forms; later steps follow the instruction's velocity.
    guidance_scale: float = 1.0
    guidance_until: float = 1.0
    # Fit each chunk with a polynomial of this degree in time, per joint, and publish
    # the fit (any head; 0: off, the actions as sampled). A sampled chunk carries
    # independent noise per action that asks the arm for more acceleration than its
    # limits allow; the fit keeps the plan's course and drops the jitter.
    smooth_degree: int = 0
    # Average each action with what the last `ensemble_chunks` chunks of the episode
    # sampled for the same instant (temporal ensembling, uniform weights; interpolated
    # on their stamps; 0: off). Successive re-plans are independent draws: averaged,
    # their noise shrinks and the plan changes less from one chunk to the next.
    ensemble_chunks: int = 0
    # Average each chunk over this many views of the frames (test-time augmentation):
    # the frames as they are and `views - 1` crops of 95 % of their area (the training
    # crop's smallest scale) at the corners, resized back; one batch row each, the flow
    # head's rows from the same start noise. 1: off. Not with the discrete head,
    # guidance or prefix inpainting.
    views: int = 1

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got '{self.weights}'")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0.0):
            raise ValueError(f"guidance_scale must be finite and >= 0, got {self.guidance_scale}")
        if not 0.0 <= self.guidance_until <= 1.0:
            raise ValueError(f"guidance_until must be in [0, 1], got {self.guidance_until}")
        if not 1 <= self.views <= 5:
            raise ValueError(f"views must be in 1..5, got {self.views}")
        if self.ensemble_chunks < 0:
            raise ValueError(f"ensemble_chunks must be >= 0, got {self.ensemble_chunks}")
        if self.smooth_degree < 0:
            raise ValueError(f"smooth_degree must be >= 0, got {self.smooth_degree}")
        if self.prefix_actions < 0:
            raise ValueError(f"prefix_actions must be >= 0, got {self.prefix_actions}")
        if not 0.0 <= self.prefix_min_weight <= 1.0:
            raise ValueError(f"prefix_min_weight must be in [0, 1], got {self.prefix_min_weight}")
        if not 0.0 <= self.noise_correlation <= 1.0:
            raise ValueError(f"noise_correlation must be in [0, 1], got {self.noise_correlation}")
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0.0):
            raise ValueError(f"noise_scale must be finite and >= 0, got {self.noise_scale}")


class Policy:
    def __init__(self, ckpt: LoadedCheckpoint, settings: PolicySettings | None = None) -> None:
        self.ckpt = ckpt
        self.model = ckpt.model
        self.cfg = ckpt.config
        self.settings = settings or PolicySettings()
        self.device = self.model.device
        if self.settings.weights == "fp8" and self.device.type != "cuda":
            raise ValueError("weights fp8 needs a CUDA device (use int8 on a CPU)")
        quantize_backbone(self.model, self.settings.weights)
        if self.device.type == "cuda":
            self.model.use_cuda_graphs(self.settings.cuda_graphs)
        self.images = ImagePreprocessor(
            size=self.cfg.image_size,
            center_crop=self.settings.center_crop,
            patch_size=self.cfg.vision.patch_size,
            merge_size=self.cfg.vision.spatial_merge_size,
            temporal_patch_size=self.cfg.vision.temporal_patch_size,
            device=self.device,
            resize=self.cfg.image_resize,
        )
        self.prompts = PromptBuilder.from_dir(ckpt.path, self.cfg)
        self.decoder = ActionDecoder(self.model)
        self.generator = torch.Generator(device=self.device)
        self._guided = self.settings.guidance_scale != 1.0
        if self._guided:
            _check_guidance(ckpt)
        if self.settings.views > 1 and (
            self.cfg.action.head == "discrete" or self._guided or self.settings.prefix_actions
        ):
            raise ValueError(
                "views > 1 averages the continuous heads' chunks without guidance or prefix "
                "inpainting: set views to 1 or turn those off"
            )
        self._previous: ActionChunk | None = None
        # (action instants (K,), drawn targets SI (K, D)) of the episode's last chunks
        self._draws: list[tuple[np.ndarray, np.ndarray]] = []
        self._episode = 0  # bumped by reset(): a chunk inferred across it is not kept
        self.reset()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        dtype: str = "fp32",
        device: str = "cpu",
        settings: PolicySettings | None = None,
        unnorm_key: str = "",
    ) -> Policy:
        """`unnorm_key`: the dataset statistics of an official checkpoint that holds
        several (docs/model.md, "Using the published weights")."""
        ckpt = load_checkpoint(path, dtype=dtype, device=device, unnorm_key=unnorm_key)
        return cls(ckpt, settings)

    @property
    def action_stats(self) -> NormStats:
        return self.ckpt.action_stats

    def reset(self) -> None:
        """Forget episode state: the sampler restarts from the configured seed and the
        next chunk is not tied to the previous one."""
        self.generator.manual_seed(self.settings.seed)
        self._previous = None
        self._draws = []
        self._episode += 1
        self._clock_origin: float | None = None  # the first observation's stamp after this

    def clock(self, stamp_s: float, episode: int | None = None) -> float:
        """The episode clock at `stamp_s` [s]: the time since the first observation
        after `reset()` (0 for that one; never negative). `episode`: the episode the
        caller's inference began in; after a reset since then (its chunk is not
        kept) the observation reads 0 and does not start the new episode's clock."""
        if episode is not None and episode != self._episode:
            return 0.0
        if self._clock_origin is None:
            self._clock_origin = float(stamp_s)
        return max(0.0, float(stamp_s) - self._clock_origin)

    def _prefix(
        self, stamp_s: float, state: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The previous chunk's plan at this chunk's first action times, in the model's
        space for this observation (normalised; offsets from `state` where relative)."""
        prev, m = self._previous, self.settings.prefix_actions
        if prev is None or m == 0 or not stamp_s > prev.stamp_s:
            return None
        period = self.cfg.action.action_period_s
        times = stamp_s + period * np.arange(1, m + 1)
        planned = prev.stamp_s + prev.period_s * np.arange(1, len(prev.actions) + 1)
        times = times[times <= planned[-1] + 1e-9]  # only what the previous chunk covers
        if times.size == 0:
            return None
        rows = np.stack(
            [np.interp(times, planned, prev.actions[:, j]) for j in range(prev.actions.shape[1])],
            -1,
        )
        weights = np.linspace(1.0, self.settings.prefix_min_weight, m)[: len(times)]
        return (
            torch.tensor(
                self._to_model(rows, state)[None], dtype=torch.float32, device=self.device
            ),
            torch.tensor(weights, dtype=torch.float32, device=self.device),
        )

    def _to_model(self, actions: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """Targets (K, D) SI -> the model's normalised values (relative: minus `state`)."""
        r = self.cfg.action.relative_dims
        if r:
            actions = actions.copy()
            actions[:, :r] -= np.asarray(state, dtype=np.float64)[:r]
        return self.action_stats.normalise(actions)

    def _from_model(self, normalised: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """The model's normalised values (K, D) -> targets SI (relative: plus `state`)."""
        actions = self.action_stats.unnormalise(normalised)
        r = self.cfg.action.relative_dims
        if r:
            actions[:, :r] += np.asarray(state, dtype=np.float64)[:r]
        return actions

    def _pixels(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's pixel values and grid for `images`: with `views` > 1 every frame
        as it is, then cropped to 95 % of its area at the top-left, bottom-right,
        top-right and bottom-left corners and resized back (the training crop's
        smallest scale), one prompt row's images after the other."""
        views = self.settings.views
        if views == 1:
            return self.images(images)
        frames = self.images.resized(images)  # (N, 3, S, S) uint8
        s = frames.shape[-1]
        side = round(s * VIEW_CROP_AREA**0.5)
        corners = ((0, 0), (s - side, s - side), (0, s - side), (s - side, 0))
        rows = [frames]
        for top, left in corners[: views - 1]:
            crops = frames[:, :, top : top + side, left : left + side]
            rows.append(torch.stack([self.images.resize(c) for c in crops]))
        return self.images.patchify(torch.cat(rows))

    def _ensemble(self, stamp_s: float, draw: np.ndarray, episode: int) -> np.ndarray:
        """`draw` (K, D) targets SI averaged, per instant, with the episode's earlier
        draws that cover it; this draw joins them (at most `ensemble_chunks` are kept)."""
        times = stamp_s + self.cfg.action.action_period_s * np.arange(1, len(draw) + 1)
        total, count = draw.copy(), np.ones((len(draw), 1))
        for planned, old in self._draws:
            cover = (times >= planned[0] - 1e-9) & (times <= planned[-1] + 1e-9)
            if not cover.any() or not stamp_s > planned[0] - self.cfg.action.action_period_s:
                continue
            for j in range(draw.shape[1]):
                total[cover, j] += np.interp(times[cover], planned, old[:, j])
            count[cover] += 1.0
        if episode == self._episode:
            self._draws = [*self._draws, (times, draw)][-self.settings.ensemble_chunks :]
        return total / count

    def _start_noise(self) -> torch.Tensor | None:
        """Start noise whose rows share `noise_correlation` of their variance, the same
        for every view (None: the decoder draws independent rows)."""
        rho, scale = self.settings.noise_correlation, self.settings.noise_scale
        views = self.settings.views
        if rho == 0.0 and scale == 1.0 and views == 1:
            return None
        shape = (1, self.cfg.action.chunk, self.cfg.action.action_dim)
        kw = {"generator": self.generator, "device": self.device, "dtype": torch.float32}
        if rho == 0.0:
            noise = scale * torch.randn(shape, **kw)
        else:
            shared = torch.randn((1, 1, shape[2]), **kw)
            own = torch.randn(shape, **kw)
            noise = scale * (rho**0.5 * shared + (1.0 - rho) ** 0.5 * own)
        return noise.expand(views, -1, -1)  # every view starts from the same draw

    def _check(self, obs: Observation) -> None:
        if not isinstance(obs.instruction, str) or not obs.instruction.strip():
            raise ObservationError("instruction: empty")
        if not obs.images:
            raise ObservationError("images: none given")
        state_dim, relative = self.cfg.action.state_dim, self.cfg.action.relative_dims
        if state_dim > 0 or relative > 0:
            need = state_dim or relative
            if obs.state is None:
                raise ObservationError(
                    f"state: this checkpoint needs the robot state ({need} values)"
                )
            state = np.asarray(obs.state, dtype=np.float64)
            if state_dim > 0 and state.shape != (state_dim,):
                raise ObservationError(
                    f"state: expected {state_dim} values, got shape {state.shape}"
                )
            if state.ndim != 1 or state.shape[0] < relative:
                raise ObservationError(
                    f"state: its targets are offsets from the first {relative} joint values; "
                    f"got shape {state.shape}"
                )
            if not np.all(np.isfinite(state)):
                raise ObservationError("state: contains NaN or Inf")
        if not np.isfinite(obs.stamp_s):
            raise ObservationError("stamp_s: not finite")

    @torch.no_grad()
    def infer(self, obs: Observation) -> ActionChunk:
        start = time.perf_counter()
        episode = self._episode
        self._check(obs)
        try:
            pixel_values, grid = self._pixels(obs.images)
        except ImageError as exc:
            raise ObservationError(f"images: {exc}") from exc
        t_model = time.perf_counter()
        n, per_image = len(obs.images), self.images.tokens_per_image
        rows = [self.prompts.ids(obs.instruction, n, per_image)] * self.settings.views
        if self._guided:
            rows.append(self.prompts.ids(obs.instruction, n, per_image, drop_instruction=True))
        input_ids = torch.tensor(rows, device=self.device)
        prompt = self.model.embed_prompt(
            input_ids, pixel_values, grid, shared_images=self.settings.views == 1
        )
        proprio, clock = None, None
        if self.cfg.action.proprio_dim > 0 and self.ckpt.proprio_stats is not None:
            values = []
            if self.cfg.action.state_dim > 0:
                values.append(np.asarray(obs.state, dtype=np.float64))
            if self.cfg.action.clock_input:
                # normalise() clips it to the training range: past the longest
                # demonstration the model reads the clock at its end
                clock = self.clock(float(obs.stamp_s), episode)
                values.append(np.array([clock]))
            state = self.ckpt.proprio_stats.normalise(np.concatenate(values))
            proprio = torch.tensor(state[None], dtype=prompt.dtype, device=self.device)
            proprio = proprio.expand(self.settings.views, -1)
        head = self.cfg.action.head
        if head == "discrete":
            normed = self.decoder.discrete(
                prompt, None, proprio, self.settings.decode, self.generator
            )
        elif head == "flow":
            steps = self.settings.flow_steps or self.cfg.action.flow_steps
            prefix = self._prefix(float(obs.stamp_s), obs.state)
            normed = self.decoder.flow(
                prompt,
                None,
                proprio,
                steps,
                self.generator,
                noise=self._start_noise(),
                prefix=None if prefix is None else prefix[0],
                prefix_weights=None if prefix is None else prefix[1],
                guidance=self.settings.guidance_scale,
                guidance_until=self.settings.guidance_until,
            )
        else:
            normed = self.decoder.regression(prompt, None, proprio)
        # Continuous heads can leave [-1, 1]; the training data's q01..q99 range is
        # where the policy is trusted, so clip there (the controller still applies
        # the arm's limits). Discrete bins are inside by construction.
        normalised = normed.float().mean(0).cpu().numpy().astype(np.float64)
        if self.settings.smooth_degree > 0:
            normalised = smooth_chunk(normalised, self.settings.smooth_degree)
        normalised = np.clip(normalised, -1.0, 1.0)
        actions = self._from_model(normalised, obs.state)
        if self.settings.ensemble_chunks > 0:
            actions = self._ensemble(float(obs.stamp_s), actions, episode)
            normalised = self._to_model(actions, obs.state)
        end = time.perf_counter()
        chunk = ActionChunk(
            actions=actions,
            stamp_s=float(obs.stamp_s),
            period_s=self.cfg.action.action_period_s,
            normalised=normalised,
            latency_s=end - start,
            timings={"preprocess_s": t_model - start, "model_s": end - t_model},
            clock_s=clock,
        )
        if episode == self._episode:
            self._previous = chunk
        return chunk


def smooth_chunk(actions: np.ndarray, degree: int) -> np.ndarray:
    """The least-squares polynomial of `degree` in time through each column of
    `actions` (K, J), evaluated at the K evenly spaced instants; a degree of K - 1 or
    more gives the actions back."""
    k = len(actions)
    if degree >= k - 1:
        return actions.copy()
    x = np.linspace(-1.0, 1.0, k)
    basis = np.polynomial.legendre.legvander(x, degree)  # (K, degree + 1), well conditioned
    coef, *_ = np.linalg.lstsq(basis, actions, rcond=None)
    return basis @ coef


def _check_guidance(ckpt: LoadedCheckpoint) -> None:
    """Guidance compares against the masked-instruction prompt, which only a flow
    checkpoint trained with instruction dropout has learnt (its recipe.yaml says)."""
    if ckpt.config.action.head != "flow":
        raise ValueError(
            f"guidance_scale needs a flow head; this checkpoint's head is "
            f"'{ckpt.config.action.head}'"
        )
    recipe_file = ckpt.path / "recipe.yaml"
    dropout = 0.0
    if recipe_file.exists():
        recipe = yaml.safe_load(recipe_file.read_text()) or {}
        augment = (recipe.get("data") or {}).get("augment") or {}
        dropout = float(augment.get("instruction_dropout", 0.0) or 0.0)
    if dropout <= 0.0:
        raise ValueError(
            f"guidance_scale needs a checkpoint trained with "
            f"data.augment.instruction_dropout > 0; {ckpt.path} was not "
            f"(its recipe.yaml: {'missing' if not recipe_file.exists() else 'dropout 0'})"
        )
