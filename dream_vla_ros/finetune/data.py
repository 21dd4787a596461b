"""Training windows over a LeRobot dataset (v3.0 as `dream-vla dataset build` writes
it, or v2.1/v3.0 from other PiPER users).

One sample = the observation at frame t (1-2 camera frames, the joint state, the
episode's instruction) and the action chunk rows t + offset ... t + offset + H - 1
at the dataset's rate (offset 1 by default: the policy stamps a chunk with the
observation time and action k is for stamp + (k + 1) * period, docs/architecture.md
§2). Near the end of an episode the missing rows repeat the last action
(hold) and `pad` marks them False; the objectives leave padded rows out of the
loss, unless `hold_after_end` is set: then they are real rows that say "stay at
the last pose". Windows start at every frame that has at least one real action.

With `data.relative_dims` R > 0 the first R values of every chunk row are learnt
minus the joint state at frame t (the offset from where the arm was when the
chunk was planned; the policy adds the measured state back).

Actions and states are normalised to [-1, 1] with per-dimension q01/q99 of the
*training* episodes (for relative actions: of every training window's offsets),
computed once here and stored with every checkpoint (a resumed run reuses the
stored values). Splits are by episode, seeded, so no
frame of a validation episode is ever trained on.

Frames are decoded once, resized to the model's input (`image_size` of the base's
config, 224x224 by default) exactly as the policy does at run time
(`ImagePreprocessor.resize`, optional centre crop) and cached as uint8: in memory,
or with `data.frame_cache` on disk, memory-mapped and reused by later runs on the
same dataset (keyed by its path, its meta/info.json and the cameras, input size and
crop).
Augmentation (training only) is a random resized crop of that frame (area
fraction in `crop_scale`, square) and colour jitter (brightness, contrast,
saturation), drawn from a generator seeded per sample and epoch, so a resumed run
sees the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dream_vla_ros.data.lerobot import DatasetError, LeRobotDataset
from dream_vla_ros.finetune.augment import augment_frame, swap_colours
from dream_vla_ros.finetune.frame_cache import FrameCache
from dream_vla_ros.finetune.recipe import AugmentConfig, DataConfig
from dream_vla_ros.model.checkpoint import NormStats
from dream_vla_ros.policy.preprocess import ImagePreprocessor


def split_episodes(
    indices: list[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded split by episode: (train, val), both sorted; at least one of each when
    val_fraction > 0 and there are two or more episodes."""
    order = np.random.default_rng(seed).permutation(len(indices))
    n_val = 0
    if val_fraction > 0 and len(indices) > 1:
        n_val = min(len(indices) - 1, max(1, round(len(indices) * val_fraction)))
    val = sorted(indices[i] for i in order[:n_val])
    train = sorted(indices[i] for i in order[n_val:])
    return train, val


# Narrowest bounds a dimension gets, in its SI unit (0.57 deg; 1 cm of gripper).
# A joint the demonstrations never move still carries solver or sensor noise
# (joint4 of the touch expert: +-1.5e-4 rad); bounds at its quantiles would
# stretch that noise over [-1, 1] and train the model to predict it as signal.
MIN_SPAN = 1e-2


def quantile_stats(values: np.ndarray, q: float = 0.01, min_span: float = MIN_SPAN) -> NormStats:
    """Bounds at the q and 1 - q quantiles (stored as `q01`/`q99`, the official names),
    widened about their centre to at least `min_span` where the data barely moves."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.quantile(v, q, axis=0), np.quantile(v, 1.0 - q, axis=0)
    pad = np.maximum(0.0, min_span - (hi - lo)) / 2
    return NormStats(lo - pad, hi + pad)


@dataclass
class Episode:
    index: int
    task: str
    state: np.ndarray  # (n, P) SI
    action: np.ndarray  # (n, D) SI
    frames: torch.Tensor | np.ndarray  # (n, cameras, 3, S, S) uint8 (memory-mapped on disk)
    # (n, P') the model's proprio input: the state (data.proprio), then the episode
    # clock (data.clock: the episode clock, seconds since the episode's first frame
    # plus the dataset's `clock_start_s` for it)
    proprio: np.ndarray

    @property
    def length(self) -> int:
        return int(self.action.shape[0])


class DemoData:
    """Episodes of one dataset, split, normalised and windowed."""

    def __init__(
        self,
        cfg: DataConfig,
        image_size: int = 224,
        stats: tuple[NormStats, NormStats | None] | None = None,
    ) -> None:
        self.cfg = cfg
        path = Path(cfg.dataset)
        self.dataset = LeRobotDataset(path, cfg.action_key, cfg.state_key)
        ds = self.dataset
        missing = [c for c in cfg.cameras if c not in ds.camera_keys]
        if missing:
            raise DatasetError(
                f"{path}: no camera {missing[0]!r}; the dataset has {ds.camera_keys} "
                "(set data.cameras)"
            )
        if (cfg.proprio or cfg.relative_dims) and not ds.state_key:
            raise DatasetError(
                f"{path}: no joint-state column '{cfg.state_key}'; its columns are "
                f"{ds.numeric_keys} (name it with data.state_key, or set data.proprio: false)"
            )
        if not ds.episodes:
            raise DatasetError(f"{path}: the dataset has no episodes")
        self.fps = ds.fps
        self.names = ds.names
        frames_total = sum(e.length for e in ds.episodes) * len(cfg.cameras)
        cache_gb = frames_total * 3 * image_size * image_size / 1e9
        self.frame_cache = (
            FrameCache(cfg.frame_cache, path, [list(cfg.cameras), image_size, cfg.center_crop])
            if cfg.frame_cache
            else None
        )
        if self.frame_cache is not None:
            self.frame_cache.check_room(
                f"{path}: caching {frames_total} frames at {image_size}x{image_size}", cache_gb
            )
        elif cache_gb > cfg.max_cache_gb:
            raise DatasetError(
                f"{path}: caching {frames_total} frames at {image_size}x{image_size} needs "
                f"{cache_gb:.1f} GB, above data.max_cache_gb = {cfg.max_cache_gb} (raise it, "
                "or keep them on disk with data.frame_cache)"
            )
        self.preprocessor = ImagePreprocessor(size=image_size, center_crop=cfg.center_crop)
        self.episodes: dict[int, Episode] = {}
        for info in ds.episodes:
            cols = ds.frames(info)
            action = np.asarray(cols["action"], dtype=np.float64)
            if action.ndim != 2 or not np.all(np.isfinite(action)):
                raise DatasetError(f"{path}: episode {info.index} has non-finite actions")
            state = np.asarray(cols.get("state", np.zeros((len(action), 0))), dtype=np.float64)
            if (cfg.proprio or cfg.relative_dims) and not np.all(np.isfinite(state)):
                raise DatasetError(f"{path}: episode {info.index} has non-finite states")
            if cfg.relative_dims > min(action.shape[1], state.shape[1]):
                raise DatasetError(
                    f"{path}: data.relative_dims {cfg.relative_dims} is more than the "
                    f"{action.shape[1]} action and {state.shape[1]} state values an episode "
                    "has (6 on the PiPER: the joints)"
                )
            inputs = [state] if cfg.proprio else []
            if cfg.clock:
                stamps = np.asarray(cols["timestamp"], dtype=np.float64)
                inputs.append((stamps - stamps[0] + info.clock_start_s)[:, None])
            proprio = np.concatenate(inputs, axis=1) if inputs else np.zeros((len(action), 0))
            self.episodes[info.index] = Episode(
                info.index, info.task, state, action, self._frames(info), proprio
            )
        self.action_dim = int(next(iter(self.episodes.values())).action.shape[1])
        self.proprio_dim = int(next(iter(self.episodes.values())).proprio.shape[1])
        self.train_episodes, self.val_episodes = split_episodes(
            sorted(self.episodes), cfg.val_fraction, cfg.split_seed
        )
        if stats is None:
            train = [self.episodes[i] for i in self.train_episodes]
            q = cfg.norm_quantile
            if cfg.relative_dims:
                off = cfg.action_offset
                windows = [self._targets(e, np.arange(max(0, e.length - off))) for e in train]
                targets = np.concatenate(windows).reshape(-1, self.action_dim)
            else:
                targets = np.concatenate([e.action for e in train])
            action_stats = quantile_stats(targets, q)
            proprio_stats = (
                quantile_stats(np.concatenate([e.proprio for e in train]), q)
                if self.proprio_dim
                else None
            )
            stats = (action_stats, proprio_stats)
        self.action_stats, self.proprio_stats = stats
        if self.action_stats.q01.shape[0] != self.action_dim:
            raise DatasetError(
                f"{path}: the stored action stats have {self.action_stats.q01.shape[0]} "
                f"dimensions, the dataset's actions {self.action_dim}"
            )
        self.oversampled = self._oversampled(path)
        self.windows = {
            "train": self._windows(self.train_episodes, cfg.start_frames, cfg.start_repeat),
            "val": self._windows(self.val_episodes),
        }

    def _targets(self, ep: Episode, starts: np.ndarray) -> np.ndarray:
        """(len(starts), H, D) SI: the chunk rows of the windows starting at `starts`
        (past the end: the last row), the first relative_dims values minus the state
        at each start."""
        rows = starts[:, None] + self.cfg.action_offset + np.arange(self.cfg.chunk)
        chunks = ep.action[np.minimum(rows, ep.length - 1)]
        r = self.cfg.relative_dims
        if r:
            chunks = chunks.copy()
            chunks[..., :r] -= ep.state[starts, None, :r]
        return chunks

    def _oversampled(self, path: Path) -> set[int]:
        """Training episodes whose last action reaches |action[oversample_dim]| >=
        oversample_min_abs (none when data.oversample_repeat is 1)."""
        cfg = self.cfg
        if cfg.oversample_repeat <= 1:
            return set()
        if not 0 <= cfg.oversample_dim < self.action_dim:
            raise DatasetError(
                f"{path}: data.oversample_dim {cfg.oversample_dim} is not an action dimension "
                f"(the actions have {self.action_dim}: {self.names})"
            )
        return {
            e
            for e in self.train_episodes
            if abs(self.episodes[e].action[-1, cfg.oversample_dim]) >= cfg.oversample_min_abs
        }

    def _frames(self, info) -> torch.Tensor | np.ndarray:
        """(n, cameras, 3, S, S) uint8: decoded and resized, or memory-mapped from the
        frame cache."""

        def decode() -> torch.Tensor:
            cams = [self._resized(self.dataset.images(info, key)) for key in self.cfg.cameras]
            return torch.stack(cams, dim=1)

        if self.frame_cache is None:
            return decode()
        size = self.preprocessor.size
        shape = (info.length, len(self.cfg.cameras), 3, size, size)
        return self.frame_cache.frames(info.index, shape, lambda: decode().numpy())

    def _resized(self, frames: np.ndarray) -> torch.Tensor:
        out = [self.preprocessor.resized(frames[i : i + 64]) for i in range(0, len(frames), 64)]
        return torch.cat(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)

    def _windows(
        self, episodes: list[int], start_frames: int = 0, start_repeat: int = 1
    ) -> list[tuple[int, int]]:
        """(episode, first frame) of every window; those starting before `start_frames`
        `start_repeat` times, and every window of an oversampled episode
        `data.oversample_repeat` times (the two multiply)."""
        off = self.cfg.action_offset
        return [
            (e, t)
            for e in episodes
            for t in range(max(0, self.episodes[e].length - off))
            for _ in range(
                (start_repeat if t < start_frames else 1)
                * (self.cfg.oversample_repeat if e in self.oversampled else 1)
            )
        ]

    def sample(
        self, split: str, i: int, augment: AugmentConfig | None = None, seed: int = 0
    ) -> dict[str, Any]:
        episode_index, t = self.windows[split][i]
        ep = self.episodes[episode_index]
        rows = t + self.cfg.action_offset + np.arange(self.cfg.chunk)
        pad = np.ones(len(rows), bool) if self.cfg.hold_after_end else rows < ep.length
        actions = self._targets(ep, np.array([t]))[0]
        images = ep.frames[t]
        if isinstance(images, np.ndarray):  # memory-mapped: a copy in memory
            images = torch.from_numpy(np.array(images))
        task = ep.task
        drop = False
        if augment is not None:
            g = torch.Generator().manual_seed(seed)
            images = torch.stack([augment_frame(f, augment, g) for f in images])
            if augment.colour_words:
                images, task = swap_colours(images, task, augment.colour_words, g)
            if augment.instruction_dropout > 0:
                g_drop = torch.Generator().manual_seed(seed + 2)
                drop = float(torch.rand((), generator=g_drop)) < augment.instruction_dropout
        out: dict[str, Any] = {
            "images": images,
            "actions": torch.from_numpy(self.action_stats.normalise(actions)).float(),
            "raw_actions": torch.from_numpy(actions).float(),
            "pad": torch.from_numpy(pad),
            "task": task,
            "drop_instruction": drop,
            "episode": episode_index,
            "t": t,
        }
        if self.proprio_stats is not None:
            # normalise() clips: a clock past the stats' bound reads as the bound, as
            # the policy reads it (Policy.infer)
            state = torch.from_numpy(self.proprio_stats.normalise(ep.proprio[t])).float()
            if augment is not None and augment.proprio_noise > 0:
                g = torch.Generator().manual_seed(seed + 1)
                state = state + augment.proprio_noise * torch.randn(state.shape, generator=g)
            out["state"] = state
        return out


class WindowDataset(torch.utils.data.Dataset):
    """torch Dataset over one split; keys are (window, augmentation seed) pairs from
    `StepBatchSampler` (training) or plain window indices (validation)."""

    def __init__(self, data: DemoData, split: str, augment: AugmentConfig | None) -> None:
        self.data = data
        self.split = split
        self.augment = augment

    def __len__(self) -> int:
        return len(self.data.windows[self.split])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        return self.data.sample(self.split, i, self.augment, seed)


class StepBatchSampler:
    """Batches as a pure function of their position in the run: the stream of
    windows is epoch after epoch of seeded permutations, and batch b is stream
    positions [b * size, (b + 1) * size). Each key carries an augmentation seed
    derived from (seed, position). Resuming at optimizer step s starts at batch
    s * grad_accum and reproduces the uninterrupted run exactly."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start_batch: int, num_batches: int
    ) -> None:
        if n < 1:
            raise DatasetError("the training split has no windows (episodes too short?)")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.start = start_batch
        self.num_batches = num_batches
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.n)
        return self._perms[epoch]

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for b in range(self.start, self.start + self.num_batches):
            keys = []
            for p in range(b * self.batch_size, (b + 1) * self.batch_size):
                epoch, pos = divmod(p, self.n)
                keys.append((int(self._perm(epoch)[pos]), self.seed * 1_000_003 + p))
            yield keys
