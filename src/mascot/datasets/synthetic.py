"""The embedded default: a synthetic video-caption dataset generated offline, deterministically.

Each video shows one foreground shape (colour, shape, size, direction of motion) moving over a
distracting textured background that reuses the same palette, so a model has to find the
discriminative region rather than match global colour statistics. Captions describe only the
foreground. Videos are real H.264 mp4 files (libx264 via the ffmpeg binary that imageio-ffmpeg
ships) with varying length, some shorter than the sampled frame count, so the same decoding,
masking and failure paths run as on real data.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from ..annotations import SPLITS, foreground_table, normalize
from ..metrics import ceiling_metrics
from . import DatasetConfig, DatasetSource, register

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = {"small": 0.14, "large": 0.26}  # radius as a fraction of the frame height
MOTIONS = {
    "left": ((-1, 0), "to the left"),
    "right": ((1, 0), "to the right"),
    "up": ((0, -1), "upwards"),
    "down": ((0, 1), "downwards"),
}
TEMPLATES = (
    "a {size} {colour} {shape} moving {motion}",
    "the {colour} {shape} slides {motion} over a busy background",
    "a {shape} coloured {colour} travels {motion}",
)


class SplitSizes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    train: int = Field(800, ge=1)
    val: int = Field(100, ge=1)
    test: int = Field(100, ge=1)


class SyntheticConfig(DatasetConfig):
    seed: int = Field(0, description="generation seed: same seed, same videos and captions")
    videos: SplitSizes = SplitSizes()
    captions_per_video: int = Field(2, ge=1, le=len(TEMPLATES))
    width: int = Field(128, ge=32, multiple_of=16)
    height: int = Field(96, ge=32, multiple_of=16)
    fps: int = Field(10, ge=1)
    min_seconds: float = Field(0.6, gt=0)
    max_seconds: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> SyntheticConfig:
        if self.max_seconds < self.min_seconds:
            raise ValueError("max_seconds must be >= min_seconds")
        return self


def _background(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """A drifting texture: a smooth colour field, palette-coloured stripes and static blobs."""
    colours = np.array(list(PALETTE.values()), dtype=np.float32)
    coarse = colours[rng.integers(len(colours), size=(3, 4))] * 0.5
    field = np.kron(coarse, np.ones((h // 3 + 1, w // 4 + 1, 1)))[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 14)
    stripe_colour = colours[rng.integers(len(colours))]
    blobs = np.zeros((h, w, 3), np.float32)
    blob_alpha = np.zeros((h, w, 1), np.float32)
    for _ in range(rng.integers(3, 7)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, h / 8)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
        blobs = np.where(inside, colours[rng.integers(len(colours))], blobs)
        blob_alpha = np.maximum(blob_alpha, inside * 0.8)
    speed = rng.uniform(0.3, 1.2)
    frames = np.empty((n, h, w, 3), np.float32)
    for t in range(n):
        phase = (xx * math.cos(angle) + yy * math.sin(angle) + speed * t) * 2 * math.pi / period
        stripes = (0.5 + 0.5 * np.sin(phase))[..., None] * 0.6
        frame = field * (1 - stripes) + stripe_colour * stripes
        frames[t] = frame * (1 - blob_alpha) + blobs * blob_alpha
    return frames


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r * r
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "cross":
        arm = r * 0.33
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(f"unknown shape {shape}")


def foreground_masks(rng: np.random.Generator, cfg: SyntheticConfig, attrs: dict, progress: list[float]) -> np.ndarray:
    """Where the shape is in each frame, (n, H, W) bool: it travels across most of the frame along its
    motion axis, at a random offset (drawn from `rng`) on the other axis; `progress` (0 → 1) says
    how far along its path it is in each frame."""
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = SIZES[attrs["size"]] * h
    (ux, uy), _ = MOTIONS[attrs["motion"]]
    travel_x, travel_y = (w - 2 * r) * 0.8, (h - 2 * r) * 0.8
    cx0 = w / 2 - ux * travel_x / 2 + (0 if ux else rng.uniform(-0.25, 0.25) * w)
    cy0 = h / 2 - uy * travel_y / 2 + (0 if uy else rng.uniform(-0.2, 0.2) * h)
    return np.stack([_shape_mask(attrs["shape"], yy, xx, cy0 + uy * travel_y * f, cx0 + ux * travel_x * f, r) for f in progress])


def render_video(rng: np.random.Generator, cfg: SyntheticConfig, attrs: dict, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, H, W, 3) uint8 of one foreground shape crossing a textured background, and the
    shape's masks (n, H, W) (where it was painted, in its palette colour)."""
    frames = _background(rng, cfg.height, cfg.width, n_frames)
    masks = foreground_masks(rng, cfg, attrs, [t / max(n_frames - 1, 1) for t in range(n_frames)])
    frames[masks] = np.array(PALETTE[attrs["colour"]], np.float32)
    return np.clip(frames, 0, 255).astype(np.uint8), masks


def render_still(rng: np.random.Generator, cfg: SyntheticConfig, attrs: dict) -> np.ndarray:
    """One image (H, W, 3) uint8 of the same world: the shape at a random point of its path over a
    background of its own (the pretraining pool, pretrain.py)."""
    frame = _background(rng, cfg.height, cfg.width, 1)[0]
    mask = foreground_masks(rng, cfg, attrs, [float(rng.uniform())])[0]
    frame[mask] = np.array(PALETTE[attrs["colour"]], np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def draw_attributes(rng: np.random.Generator) -> dict:
    return {
        "colour": str(rng.choice(list(PALETTE))),
        "shape": str(rng.choice(SHAPES)),
        "size": str(rng.choice(list(SIZES))),
        "motion": str(rng.choice(list(MOTIONS))),
    }


def bounding_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] in pixels (x1, y1 exclusive) of a (H, W) mask; None when it is empty (the
    shape outside the frame)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def encode_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode uint8 RGB frames as H.264/yuv420p mp4, byte-reproducibly."""
    n, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=16,
        ffmpeg_log_level="error",
        output_params=["-crf", "18", "-preset", "veryfast", "-threads", "1", "-fflags", "+bitexact", "-map_metadata", "-1"],
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def caption(template: str, attrs: dict) -> str:
    return template.format(size=attrs["size"], colour=attrs["colour"], shape=attrs["shape"], motion=MOTIONS[attrs["motion"]][1])


def draw_video(cfg: SyntheticConfig, index: int) -> tuple[np.random.Generator, dict, int]:
    """Video number `index`'s own generator, its attributes and its frame count (the generator then
    renders it: `render_video`)."""
    rng = np.random.default_rng([cfg.seed, index])
    attrs = draw_attributes(rng)
    return rng, attrs, max(2, round(rng.uniform(cfg.min_seconds, cfg.max_seconds) * cfg.fps))


def _make_video(job: tuple[SyntheticConfig, int, str, Path]) -> dict:
    """Render and encode video number `index`; return its annotation entry."""
    cfg, index, split, video_dir = job
    rng, attrs, n_frames = draw_video(cfg, index)
    video_id = f"synth{index:05d}"
    frames, masks = render_video(rng, cfg, attrs, n_frames)
    encode_mp4(frames, video_dir / f"{video_id}.mp4", cfg.fps)
    first = int(rng.integers(len(TEMPLATES)))
    captions = [caption(TEMPLATES[(first + k) % len(TEMPLATES)], attrs) for k in range(cfg.captions_per_video)]
    boxes = [bounding_box(m) for m in masks]  # the foreground of every frame (foreground.py's diagnostic)
    return {
        "video_id": video_id,
        "split": split,
        "num_frames": n_frames,
        "attributes": attrs,
        "captions": captions,
        "boxes": boxes,
    }


@register
class SyntheticDataset(DatasetSource):
    name = "synthetic"
    Config = SyntheticConfig
    ANNOTATION_FILE = "annotations.json"

    def download(self, raw_dir: Path, cache_dir: Path) -> None:
        cfg = self.config
        video_dir = self.video_root(raw_dir)
        video_dir.mkdir(parents=True)
        splits = [split for split in SPLITS for _ in range(getattr(cfg.videos, split))]
        jobs = [(cfg, index, split, video_dir) for index, split in enumerate(splits)]
        # Each video has its own generator, so the result does not depend on the number of workers.
        with ProcessPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            entries = list(
                tqdm(pool.map(_make_video, jobs, chunksize=16), total=len(jobs), desc="synthetic", unit="video", disable=None)
            )
        meta = {"fps": cfg.fps, "width": cfg.width, "height": cfg.height, "videos": entries}
        (Path(raw_dir) / self.ANNOTATION_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

    def ceiling(self, raw_dir: Path, split: str = "test") -> dict:
        """A caption fits a video when the generator could have written it for that video (some
        template filled with the video's attributes): several test videos can share what a caption
        says (e.g. its colour, shape and motion, when the template leaves out the size), and a model
        that only knows what captions say cannot order them (metrics.ceiling_metrics)."""
        videos = [v for v in json.loads((Path(raw_dir) / self.ANNOTATION_FILE).read_text())["videos"] if v["split"] == split]
        writable = [{caption(t, v["attributes"]) for t in TEMPLATES} for v in videos]
        caption_fits = [sum(text in w for w in writable) for v in videos for text in v["captions"]]
        copies = Counter(text for v in videos for text in v["captions"])
        video_fits = [
            ([n for text, n in copies.items() if text in w and text not in v["captions"]], len(set(v["captions"])))
            for v, w in zip(videos, writable, strict=True)
        ]
        return ceiling_metrics(caption_fits, video_fits)

    def foreground(self, raw_dir: Path) -> pd.DataFrame:
        """The shape's bounding box in every frame, as the generator drew it."""
        meta = json.loads((Path(raw_dir) / self.ANNOTATION_FILE).read_text())
        size = {"fps": float(meta["fps"]), "width": meta["width"], "height": meta["height"]}
        nothing = [math.nan] * 4
        return foreground_table(
            [
                {"video_id": v["video_id"], "frame": t, "frames": len(v["boxes"]), **size}
                | dict(zip(("x0", "y0", "x1", "y1"), box or nothing, strict=True))
                for v in meta["videos"]
                for t, box in enumerate(v["boxes"])
            ]
        )

    def read_annotations(self, raw_dir: Path) -> pd.DataFrame:
        path = Path(raw_dir) / self.ANNOTATION_FILE
        meta = json.loads(path.read_text())
        rows = [
            {
                "video_id": v["video_id"],
                "split": v["split"],
                "caption_id": f"{v['video_id']}#{k}",
                "caption": text,
                "start": float("nan"),
                "end": float("nan"),
                "video_path": f"{v['video_id']}.mp4",
            }
            for v in meta["videos"]
            for k, text in enumerate(v["captions"])
        ]
        return normalize(pd.DataFrame(rows), source=str(path))
