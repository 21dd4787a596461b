"""Robot images -> Qwen2-VL patches, with tensor ops only (no PIL round trips).

Matches transformers' Qwen2-VL image processor for 224x224 inputs: rescale by
1/255, normalise with the CLIP mean/std, repeat each frame to the temporal
patch size (2) and order the 14x14 patches merge-window by merge-window, giving
(num_images * 256, 3 * 2 * 14 * 14) rows and a (t, h, w) = (1, 16, 16) grid per
image (64 tokens after the 2x2 merge). Frames of any size are first resized to
224x224 (bicubic with antialiasing on uint8 pixels, as an image library
would; within a few levels of PIL's bicubic), optionally after a centre crop to a square.
Other sizes (`size`, the checkpoint's `image_size`) patchify the same way: 336 gives
a (1, 24, 24) grid and 144 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dream_vla_ros.model.config import RESIZES

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    """An image the policy cannot use; the message names which one and why."""


class ImagePreprocessor:
    def __init__(
        self,
        size: int = 224,
        center_crop: bool = False,
        patch_size: int = 14,
        merge_size: int = 2,
        temporal_patch_size: int = 2,
        device: str | torch.device = "cpu",
        resize: str = "torch",
    ) -> None:
        if size % (patch_size * merge_size):
            raise ValueError(f"image size {size} must be a multiple of {patch_size * merge_size}")
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got '{resize}'")
        self.resize_with = resize
        self.size = size
        self.center_crop = center_crop
        self.patch = patch_size
        self.merge = merge_size
        self.temporal = temporal_patch_size
        self.device = torch.device(device)
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        # x / 255 - mean) / std as one multiply-add
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    @property
    def tokens_per_image(self) -> int:
        return (self.size // self.patch // self.merge) ** 2

    def to_tensor(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """Validate HxWx3 uint8 frames -> (3, H, W) uint8 views on the device (any sizes)."""
        if len(images) == 0:
            raise ImageError("no images")
        frames = []
        for i, image in enumerate(images):
            t = torch.as_tensor(image)
            if t.dtype != torch.uint8:
                raise ImageError(f"image {i}: expected uint8 pixels, got {t.dtype}")
            if t.ndim != 3 or t.shape[2] != 3 or t.shape[0] < 2 or t.shape[1] < 2:
                raise ImageError(f"image {i}: expected an HxWx3 RGB array, got {tuple(t.shape)}")
            frames.append(t.to(self.device).permute(2, 0, 1))
        return frames

    def resize(self, frame: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, size, size) uint8."""
        if self.center_crop:
            _, h, w = frame.shape
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            frame = frame[:, top : top + side, left : left + side]
        if frame.shape[1:] == (self.size, self.size):
            return frame
        size = (self.size, self.size)
        if self.resize_with == "pil":
            # PIL's bicubic on the CPU, what the official image processor does
            # (transformers' resize through PIL): equal to it to float rounding
            from PIL import Image

            pixels = frame.permute(1, 2, 0).contiguous().cpu().numpy()
            out = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
            return torch.from_numpy(np.array(out)).permute(2, 0, 1).to(frame.device)
        if frame.device.type == "cpu":
            # uint8 in, uint8 out: PyTorch's vectorised uint8 antialias kernel, about 3x
            # faster than resizing floats; an HxWx3 frame viewed as (3, H, W) is
            # already channels-last, the layout that kernel wants
            return F.interpolate(frame[None], size=size, mode="bicubic", antialias=True)[0]
        # CUDA has no uint8 antialias kernel (NotImplementedError for 'Byte', torch
        # 2.11): resize floats, then round and clamp as the uint8 kernel does (within
        # two levels of the CPU's fixed-point result; test_gpu.py)
        out = F.interpolate(frame[None].float(), size=size, mode="bicubic", antialias=True)
        return out[0].round_().clamp_(0, 255).to(torch.uint8)

    def resized(self, images: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """(N, 3, size, size) uint8."""
        return torch.stack([self.resize(f) for f in self.to_tensor(images)])

    def patchify(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) uint8 -> pixel_values (N * g * g, 3*T*P*P) float32, grid (N, 3)."""
        n, c, s, _ = batch.shape
        p, m, t = self.patch, self.merge, self.temporal
        g = s // p
        scale, shift = self._scale, self._shift
        if scale.device != batch.device:  # frames on another device than built for
            scale, shift = scale.to(batch.device), shift.to(batch.device)
        x = batch.float() * scale + shift  # (N, C, S, S)
        x = x[:, None].expand(n, t, c, s, s)  # one frame repeated to the temporal patch
        x = x.reshape(n, t, c, g // m, m, p, g // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (N, gh/m, gw/m, m, m, C, T, P, P)
        pixel_values = x.reshape(n * g * g, c * t * p * p).contiguous()
        grid = torch.tensor([[1, g, g]] * n, dtype=torch.long, device=batch.device)
        return pixel_values, grid

    def __call__(
        self, images: Sequence[np.ndarray | torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.patchify(self.resized(images))
