"""The frames stage: decode every video once into memory-mappable uint8 shards.

Output folder layout (one artifact, replaced atomically):
  {split}-{k:05d}.npy   uint8 (videos, num_frames, size, size, 3), memory-mappable
  index.parquet         video_id, split, shard, row, num_valid (frames past num_valid are padding)
  failures.json         videos that could not be decoded, with the reason
  meta.json             num_frames, image_size
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .annotations import SPLITS, read_table, segment_bounds
from .atomic import atomic_dir, write_json
from .clip_model import image_size
from .config import Params
from .errors import MascotError
from .video import VideoReadError, read_clip

log = logging.getLogger(__name__)
INDEX = "index.parquet"
FAILURES = "failures.json"
META = "meta.json"


def video_table(annotations: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per video with its time span; all captions of a video must share the span."""
    spans = annotations.groupby("video_id")[["start", "end", "video_path", "split"]].nunique(dropna=False)
    conflicting = spans.index[(spans > 1).any(axis=1)].tolist()
    if conflicting:
        raise MascotError(
            f"{source}: captions of the same video disagree on start/end/video_path/split (e.g. {conflicting[:5]}). "
            "Frames are extracted per video; give each clip its own video_id (as LSMDC does) or use paragraph mode."
        )
    return annotations.drop_duplicates("video_id")[["video_id", "split", "start", "end", "video_path"]].reset_index(drop=True)


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.npy"


def extract(videos: pd.DataFrame, video_root: Path, out: Path, num_frames: int, size: int, shard_size: int) -> tuple[pd.DataFrame, list[dict]]:
    """Decode `videos` into shards under `out`; return the index and the failures."""
    index, failures = [], []
    progress = tqdm(total=len(videos), desc="frames", unit="video", disable=None)
    for split in SPLITS:
        rows = videos[videos["split"] == split]
        for k, start in enumerate(range(0, len(rows), shard_size)):
            chunk = rows.iloc[start : start + shard_size]
            name = shard_name(split, k)
            shard = np.lib.format.open_memmap(out / name, mode="w+", dtype=np.uint8, shape=(len(chunk), num_frames, size, size, 3))
            for row, video in enumerate(chunk.itertuples(index=False)):
                path = video_root / video.video_path
                try:
                    clip = read_clip(path, *segment_bounds(video.start, video.end), num_frames, size)
                except VideoReadError as exc:
                    failures.append({"video_id": video.video_id, "video_path": str(video.video_path), "error": str(exc)})
                else:
                    shard[row] = clip.frames
                    index.append({"video_id": video.video_id, "split": split, "shard": name, "row": row, "num_valid": clip.num_valid})
                progress.update()
            shard.flush()
            del shard
    progress.close()
    return pd.DataFrame(index, columns=["video_id", "split", "shard", "row", "num_valid"]), failures


def failure_message(failures: list[dict], total: int, threshold: float, manifest: Path) -> str:
    listed = "; ".join(f"{f['video_path']} ({f['error']})" for f in failures[:20])
    more = f"; and {len(failures) - 20} more" if len(failures) > 20 else ""
    return (
        f"{len(failures)} of {total} videos ({len(failures) / total:.1%}) could not be decoded, more than "
        f"frames.max_failed_fraction = {threshold:.1%}: {listed}{more}. The full list is in {manifest}. "
        "Replace or re-download these files, or raise frames.max_failed_fraction to train without them."
    )


def run(params: Params, annotations_path: Path, video_root: Path, out: Path) -> None:
    cfg = params.frames
    size = image_size(params.clip.model)
    videos = video_table(read_table(annotations_path), str(annotations_path))
    manifest = out.with_name(out.name + ".failures.json")
    manifest.unlink(missing_ok=True)
    with atomic_dir(out) as tmp:
        index, failures = extract(videos, video_root, tmp, cfg.num_frames, size, cfg.shard_size)
        if failures:
            log.warning("%d videos could not be decoded, e.g. %s", len(failures), failures[0])
        if len(failures) > cfg.max_failed_fraction * len(videos):
            write_json(manifest, failures)
            raise MascotError(failure_message(failures, len(videos), cfg.max_failed_fraction, manifest))
        index.to_parquet(tmp / INDEX, index=False)
        (tmp / FAILURES).write_text(json.dumps(failures, indent=1) + "\n")
        (tmp / META).write_text(json.dumps({"num_frames": cfg.num_frames, "image_size": size}, indent=1) + "\n")
    log.info("frames: %d videos in %s, %d failed", len(index), out, len(failures))


def open_frames(frames_dir: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The index and the memory-mapped shards of a frames folder."""
    frames_dir = Path(frames_dir)
    try:
        index = pd.read_parquet(frames_dir / INDEX)
    except FileNotFoundError:
        raise MascotError(f"{frames_dir}: no {INDEX}; run the frames stage first.") from None
    shards = {name: np.load(frames_dir / name, mmap_mode="r") for name in index["shard"].unique()}
    return index, shards
