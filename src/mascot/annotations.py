"""The normalized annotation table shared by every dataset, and the annotations stage.

One row per caption (for paragraph datasets: one row per video, the joined paragraph in `caption`).
`start`/`end` are seconds within the video; NaN means the start or the end of the whole video.
`video_path` is relative to the dataset's video root.

Beside it the stage writes the foreground table (FOREGROUND_COLUMNS): one row a frame of a video
whose source knows where its foreground is (the synthetic generator's boxes, pixels, x1/y1
exclusive, NaN for a frame without foreground), empty for real datasets (foreground.py uses it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_file
from .errors import MascotError

COLUMNS = ("video_id", "split", "caption_id", "caption", "start", "end", "video_path")
SPLITS = ("train", "val", "test")
FOREGROUND_COLUMNS = ("video_id", "frame", "frames", "fps", "width", "height", "x0", "y0", "x1", "y1")


def normalize(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a parsed table against the schema and return it with canonical dtypes and order."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise MascotError(f"{source}: the parsed annotations lack columns {missing}; the schema is {list(COLUMNS)}.")
    df = df.loc[:, list(COLUMNS)].copy()
    for col in ("video_id", "split", "caption_id", "caption", "video_path"):
        df[col] = df[col].astype(str)
    df["caption"] = df["caption"].str.strip()
    for col in ("start", "end"):
        df[col] = pd.to_numeric(df[col], errors="raise").astype("float64")
    problems = []
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        problems.append(f"unknown splits {bad_split} (expected {list(SPLITS)})")
    dup = df["caption_id"][df["caption_id"].duplicated()].unique()[:5].tolist()
    if dup:
        problems.append(f"duplicate caption_id values, e.g. {dup}")
    empty = df.loc[df["caption"] == "", "caption_id"].head(5).tolist()
    if empty:
        problems.append(f"empty captions, e.g. caption_id {empty}")
    inverted = df.loc[df["start"] > df["end"], "caption_id"].head(5).tolist()
    if inverted:
        problems.append(f"segments with start > end, e.g. caption_id {inverted}")
    multi_split = df.groupby("video_id")["split"].nunique()
    leaked = multi_split[multi_split > 1].index[:5].tolist()
    if leaked:
        problems.append(f"videos in more than one split, e.g. {leaked}")
    if problems:
        raise MascotError(f"{source}: invalid annotations: " + "; ".join(problems) + ". Fix the parser or the file.")
    order = df["split"].map({s: i for i, s in enumerate(SPLITS)})
    return (
        df.assign(_o=order).sort_values(["_o", "video_id", "caption_id"], kind="stable").drop(columns="_o").reset_index(drop=True)
    )


def write_table(df: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)


def foreground_table(rows: list[dict]) -> pd.DataFrame:
    """The foreground table of rows with FOREGROUND_COLUMNS (none: the empty table of a real dataset)."""
    return pd.DataFrame(rows, columns=list(FOREGROUND_COLUMNS)).astype(
        {"video_id": str, "frame": "int64", "frames": "int64", "fps": float, "width": "int64", "height": "int64"}
        | {c: float for c in ("x0", "y0", "x1", "y1")}
    )


def read_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise MascotError(f"{path}: annotation table not found; run the annotations stage first.") from None
    return normalize(df, source=str(path))


def summary(df: pd.DataFrame) -> str:
    counts = df.groupby("split").agg(videos=("video_id", "nunique"), captions=("caption_id", "size"))
    return ", ".join(f"{s}: {r.videos} videos / {r.captions} captions" for s, r in counts.iterrows())


def segment_bounds(start: float, end: float) -> tuple[float | None, float | None]:
    """NaN → None (the video's own start or end)."""
    return (None if np.isnan(start) else float(start), None if np.isnan(end) else float(end))
