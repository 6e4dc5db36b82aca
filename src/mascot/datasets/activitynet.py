"""ActivityNet Captions: paragraph → video retrieval on `val_1` (the reported split).

Train: train.json (10,009 videos); test: val_1.json (4,917). No validation split exists in this
protocol; ours is carved from the training videos (`val_videos`, fixed seed). Videos come from
YouTube and are placed by hand as videos/<id>.<ext> (ids keep their `v_` prefix).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from ..annotations import normalize
from ..errors import MascotError
from . import register
from .remote import ANNOTATIONS, CarvedValConfig, ParagraphConfig, RemoteDataset, annotation, carve_val, segment_rows

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")


class ActivityNetConfig(CarvedValConfig, ParagraphConfig):
    max_missing_fraction: float = Field(
        0.05, ge=0, le=1, description="fail when more than this fraction is missing (YouTube videos disappear)"
    )

    DEFAULT_FILES: ClassVar[dict[str, dict]] = {
        "annotations": {
            "url": "http://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip",
            "archive": True,
            "members": {
                "train": {"file": "train.json", "checksum": "gitblob:a9397f6e503c25d9bbe4908df55ed0cacbf6b0b5"},
                "val_1": {"file": "val_1.json", "checksum": "gitblob:71006d3f4fbadf8221d0713511d0469391604430"},
            },
        },
        "videos": {"url": None, "dest": "videos"},
    }


def read_captions(path: Path) -> pd.DataFrame:
    """{video: {duration, timestamps, sentences}} → one row per timed sentence."""
    try:
        data = json.loads(annotation(path).read_text())
        rows = [
            (vid, k, float(entry["duration"]), float(ts[0]), float(ts[1]), sentence)
            for vid, entry in data.items()
            for k, (ts, sentence) in enumerate(zip(entry["timestamps"], entry["sentences"], strict=True))
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MascotError(
            f"{path}: not an ActivityNet Captions file ({{video: {{duration, timestamps, sentences}}}}): {exc}."
        ) from None
    return pd.DataFrame(rows, columns=["video_id", "k", "duration", "start", "end", "sentence"])


def repair_spans(df: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Swap inverted segments (2 in train.json, as PDVC's train_modified.json does) and clip to the duration."""
    inverted = df["start"] > df["end"]
    if inverted.any():
        log.warning(
            "%s: %d segments with start > end swapped, e.g. %s", source, int(inverted.sum()), df.loc[inverted, "video_id"].iloc[0]
        )
        df.loc[inverted, ["start", "end"]] = df.loc[inverted, ["end", "start"]].to_numpy()
    return df.assign(end=df[["end", "duration"]].min(axis=1), start=df[["start", "duration"]].min(axis=1))


@register
class ActivityNet(RemoteDataset):
    name = "activitynet"
    Config = ActivityNetConfig
    config: ActivityNetConfig

    def read_annotations(self, raw_dir: Path) -> pd.DataFrame:
        ann = Path(raw_dir) / ANNOTATIONS
        video_dir = self.video_root(raw_dir)
        train = read_captions(ann / "train.json")
        test = read_captions(ann / "val_1.json")
        val = carve_val(train["video_id"].tolist(), self.config.val_videos, self.config.val_seed, str(ann / "train.json"))
        train["split"] = train["video_id"].map(lambda v: "val" if v in val else "train")
        test["split"] = "test"
        segments = pd.concat([train, test], ignore_index=True)
        if not self.config.paragraph:
            segments = repair_spans(segments, ann)
        on_disk = {p.stem: p.name for p in video_dir.iterdir() if p.suffix in VIDEO_EXTENSIONS} if video_dir.is_dir() else {}
        segments["video_path"] = segments["video_id"].map(lambda v: on_disk.get(v, v + VIDEO_EXTENSIONS[0]))
        table = segment_rows(segments, self.config.paragraph, (float("nan"), float("nan")))
        return normalize(table, source=str(ann))
