"""Decoding: a fixed number of frames sampled uniformly over a time span, at the model's input size.

Sampling takes the centre frame of `num_frames` equal bins over [start, end]. A span shorter than
`num_frames` decoded frames returns every frame it has and reports how many are valid; the caller
stores that count so that padded frames are masked, never mistaken for (black) content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class VideoReadError(Exception):
    """A video could not be decoded; the message says why."""


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # (num_frames, size, size, 3) uint8; rows >= num_valid are zero padding
    num_valid: int


def sample_indices(total: int, fps: float, start: float | None, end: float | None, num_frames: int) -> list[int]:
    """Indices of the frames to decode: the centres of `num_frames` equal bins over the span.

    Returns fewer than `num_frames` indices (every frame of the span) when the span is shorter.
    """
    if total <= 0:
        raise VideoReadError("the video has no frames")
    first = 0 if start is None else min(total - 1, max(0, math.floor(start * fps)))
    last = total - 1 if end is None else min(total - 1, max(first, math.ceil(end * fps) - 1))
    available = last - first + 1
    if available <= num_frames:
        return list(range(first, last + 1))
    return [first + math.floor((i + 0.5) * available / num_frames) for i in range(num_frames)]


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to `size` (bicubic, antialiased, as CLIP's preprocessing) and centre-crop."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_clip(path: str | Path, start: float | None, end: float | None, num_frames: int, size: int) -> Clip:
    """Decode `num_frames` uniformly sampled frames of `path` with decord, resized and cropped."""
    import decord

    path = Path(path)
    if not path.is_file():
        raise VideoReadError("file not found")
    if path.stat().st_size == 0:
        raise VideoReadError("empty file (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        indices = sample_indices(len(reader), reader.get_avg_fps(), start, end, num_frames)
        frames = reader.get_batch(indices).asnumpy()
    except VideoReadError:
        raise
    except Exception as exc:  # decord raises plain RuntimeError/DECORDError subclasses
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VideoReadError(f"decord cannot decode it: {reason[:300]}") from None
    out = np.zeros((num_frames, size, size, 3), np.uint8)
    out[: len(indices)] = resize_center_crop(frames, size)
    return Clip(out, len(indices))
