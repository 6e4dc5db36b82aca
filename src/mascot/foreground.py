"""Does the attention that picks MASCOT's masks find the foreground? (docs/model.md, "Foreground diagnostic")

Where a dataset knows where its foreground is in every frame, the annotations stage writes it as
foreground.parquet (one row a video frame: its box in pixels); the synthetic generator records the
bounding box of its shape, real datasets know nothing of the kind and write an empty table, and the
diagnostic is skipped for them. The train stage measures, for the model it starts from (epoch 0) and
after every epoch, on the validation split, which share of the patches each of a masked variant's
masks drops lies on the foreground:

  fg_high    share of the high-informed mask's patches that are foreground patches
  fg_low     the same share for the low-informed mask
  fg_chance  share of all patches that are foreground: what a uniformly random mask scores on average
  fg_best    min(1, foreground patches / masked patches): the most any mask of that size can score

A patch is a foreground patch when the box, mapped through the frames stage's resize and centre crop
(video.crop_geometry), overlaps it with positive area. Frames without a foreground patch (the shape
outside the crop) are left out of every mean. Each share is a mean over frames.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .config import EvaluateConfig, MaskConfig
from .devices import autocast, on_device
from .errors import MascotError
from .evaluate import split_rows
from .features import FeatureStore
from .frame_store import EncodedFrames
from .masking import InformedMasks
from .model import RetrievalModel
from .objective import view_masks
from .video import crop_geometry, sample_indices

SHARES = ("fg_high", "fg_low", "fg_chance", "fg_best")


def crop_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Boxes (k, 4) [x0, y0, x1, y1] in an (height, width) frame → the same boxes in the size × size
    crop the frames stage stores, clipped to it (NaN rows stay NaN)."""
    nh, nw, top, left = crop_geometry(height, width, size)
    scale = np.array([nw / width, nh / height, nw / width, nh / height])
    shift = np.array([left, top, left, top])
    return np.clip(np.asarray(boxes, float) * scale - shift, 0, size)


def patch_cover(boxes: np.ndarray, size: int, grid: int) -> np.ndarray:
    """(k, grid²) bool, row-major as the tower orders patches: which patches each box (k, 4) in
    crop coordinates overlaps with positive area; no patch for a NaN box."""
    edges = np.arange(grid + 1) * (size / grid)
    boxes = np.nan_to_num(np.asarray(boxes, float), nan=0.0)  # a NaN box becomes an empty one
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    cols = (np.minimum(x1, edges[1:]) - np.maximum(x0, edges[:-1])) > 0
    rows = (np.minimum(y1, edges[1:]) - np.maximum(y0, edges[:-1])) > 0
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(boxes), grid * grid)


def mask_shares(masked: np.ndarray, foreground: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame (frames with a foreground patch only): the share of the masked patch indices
    (n, m) on foreground patches (n, N), the share of all patches that are foreground, the best share."""
    keep = foreground.any(axis=1)
    masked, foreground = masked[keep], foreground[keep]
    on = np.take_along_axis(foreground, masked, axis=1).mean(axis=1)
    count = foreground.sum(axis=1)
    return {"share": on, "chance": count / foreground.shape[1], "best": np.minimum(1.0, count / masked.shape[1])}


def frame_patches(fg: pd.DataFrame, store: FeatureStore, positions: np.ndarray, size: int, grid: int) -> np.ndarray:
    """Foreground patches (videos, T, N) of the stored frames of the videos at `positions`, False on
    padding: each video's boxes taken at the frames the frames stage sampled (video.sample_indices
    over the whole video, as it samples a video without a time span)."""
    groups = dict(tuple(fg.groupby("video_id", sort=False)))
    t = int(store.meta["num_frames"])
    out = np.zeros((len(positions), t, grid * grid), bool)
    for i, position in enumerate(positions):
        video_id, num_valid = store.index["video_id"].iloc[position], int(store.index["num_valid"].iloc[position])
        rows = groups.get(video_id)
        if rows is None:
            raise MascotError(
                f"foreground.parquet has no boxes for video {video_id} of the features folder {store.root}; rerun the "
                "annotations stage (dvc repro), which writes both from the same raw folder."
            )
        rows = rows.sort_values("frame")
        first = rows.iloc[0]
        picks = sample_indices(int(first["frames"]), float(first["fps"]), None, None, t)
        if len(picks) != num_valid or len(rows) != int(first["frames"]):
            raise MascotError(
                f"video {video_id}: foreground.parquet describes {int(first['frames'])} frames ({len(rows)} rows), which "
                f"sample to {len(picks)} frames, but the frames stage stored {num_valid}; the boxes do not belong to these "
                "frames. Rerun the annotations and frames stages (dvc repro)."
            )
        boxes = rows[["x0", "y0", "x1", "y1"]].to_numpy(float)[picks]
        out[i, :num_valid] = patch_cover(crop_boxes(boxes, int(first["height"]), int(first["width"]), size), size, grid)
    return out


@torch.no_grad()
def video_masks(
    model: RetrievalModel,
    mask: MaskConfig,
    frames: torch.Tensor | EncodedFrames,
    frame_mask: torch.Tensor,
    text_tokens: torch.Tensor,
) -> InformedMasks:
    """The masks training draws for these videos (Objective.encode's steps: the unmasked pass, then
    objective.view_masks with each frame's caption feature), one caption per video."""
    device = next(model.parameters()).device
    valid = model.frame_tokens(on_device(frames, device)[on_device(frame_mask, device)])
    full = model.vision.run(valid, attention=mask.score == "cls_attn")
    text = model.encode_text(on_device(text_tokens, device))
    return view_masks(model, mask, full, text[on_device(frame_mask, device).nonzero()[:, 0]])


@torch.no_grad()
def diagnose(
    model: RetrievalModel, mask: MaskConfig, store: FeatureStore, fg: pd.DataFrame, split: str, cfg: EvaluateConfig
) -> dict[str, float] | None:
    """SHARES (in %) of `model`'s masks (video_masks, with each video's first caption) on the videos
    of `split`, computed at `evaluate.precision` as validation is (the same as training's on the
    CPU; on a GPU near-tied scores may order differently than under `train.precision`); None when
    the foreground table is empty (a real dataset). Random-score masks are drawn from a fixed seed
    without touching the caller's random state."""
    if fg.empty:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    positions = split_rows(store, split, cfg)[0]
    first_caption = store.captions.reset_index(drop=True).groupby("video_index").head(1)
    caption_of = dict(zip(first_caption["video_index"], first_caption.index, strict=True))
    grid = math.isqrt(int(store.meta["tokens_per_frame"]) - 1)
    shares: dict[str, list[np.ndarray]] = {name: [] for name in ("high", "low", "chance", "best")}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for start in range(0, len(positions), cfg.batch_size):
            chunk = positions[start : start + cfg.batch_size]
            frames, frame_mask = store.video_batch(chunk, store.decodes_on(cfg.decode_on, "evaluate.decode_on"))  # as validation
            foreground = frame_patches(fg, store, chunk, frames.shape[2], grid)[frame_mask.numpy()]
            with autocast(device, cfg.precision):
                masks = video_masks(model, mask, frames, frame_mask, store.text_batch(np.array([caption_of[p] for p in chunk])))
            for name in ("high", "low"):
                view = mask_shares(masks.view(name).masked.cpu().numpy(), foreground)
                shares[name].append(view["share"])
            shares["chance"].append(view["chance"])
            shares["best"].append(view["best"])
    model.train(was_training)
    means = {name: np.concatenate(values) for name, values in shares.items()}
    return {f"fg_{name}": round(float(v.mean()) * 100, 4) if v.size else math.nan for name, v in means.items()}
