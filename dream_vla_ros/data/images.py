"""Camera payloads -> HxWx3 uint8 RGB arrays (no ROS imports, no cv_bridge).

`decode_raw` takes the fields of a sensor_msgs/Image, `decode_compressed` those
of a sensor_msgs/CompressedImage. Both raise ImageDecodeError with a sentence
that names the problem; nothing here guesses.
"""

from __future__ import annotations

import io

import numpy as np

# encoding -> (channels, index of R, G, B within a pixel)
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
    "8UC3": (3, (2, 1, 0)),  # OpenCV's default channel order is BGR
    "8UC1": (1, (0, 0, 0)),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


class ImageDecodeError(ValueError):
    """A camera message that cannot become an RGB image; the message says why."""


def check_raw(height: int, width: int, encoding: str, step: int, nbytes: int) -> None:
    """The header of a sensor_msgs/Image against its data size (no pixel is read);
    ImageDecodeError names what does not fit."""
    if encoding not in RAW_ENCODINGS:
        raise ImageDecodeError(
            f"unsupported encoding '{encoding}' (supported: {', '.join(RAW_ENCODINGS)})"
        )
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image size {width}x{height} is empty")
    channels, _rgb = RAW_ENCODINGS[encoding]
    if step < width * channels:
        raise ImageDecodeError(
            f"step {step} is smaller than width {width} x {channels} bytes per pixel"
        )
    if nbytes != height * step:
        raise ImageDecodeError(
            f"data has {nbytes} bytes, expected height {height} x step {step} = {height * step}"
        )


def decode_raw(height: int, width: int, encoding: str, step: int, data) -> np.ndarray:
    """sensor_msgs/Image fields -> (height, width, 3) uint8 RGB (a view when possible)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    check_raw(height, width, encoding, step, buffer.size)
    channels, rgb = RAW_ENCODINGS[encoding]
    pixels = buffer.reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if rgb == (0, 1, 2) and channels == 3:
        return pixels
    return pixels[:, :, list(rgb)]


def decode_compressed(fmt: str, data) -> np.ndarray:
    """sensor_msgs/CompressedImage fields -> (H, W, 3) uint8 RGB (JPEG or PNG)."""
    from PIL import Image, UnidentifiedImageError  # Pillow: libjpeg-turbo and libpng

    # image_transport writes e.g. "rgb8; jpeg compressed bgr8"; plain "jpeg"/"png" too.
    # The payload itself is self-describing, so the format string is only checked.
    words = fmt.lower().replace(";", " ").split()
    if words and not any(w in COMPRESSED_FORMATS for w in words):
        raise ImageDecodeError(f"unsupported compressed format '{fmt}' (supported: jpeg, png)")
    payload = bytes(data)
    if not payload:
        raise ImageDecodeError("compressed image has no data")
    try:
        with Image.open(io.BytesIO(payload)) as img:
            if img.format not in ("JPEG", "PNG"):
                raise ImageDecodeError(f"compressed payload is {img.format}, not JPEG or PNG")
            rgb = img.convert("RGB")
            return np.asarray(rgb)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(f"cannot decode the compressed image: {exc}") from None


def encode_raw(image: np.ndarray) -> tuple[int, int, str, int, bytes]:
    """(height, width, 'rgb8', step, data) of an HxWx3 uint8 RGB array."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageDecodeError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w, _ = image.shape
    return h, w, "rgb8", w * 3, image.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()
