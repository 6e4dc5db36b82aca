"""LSMDC (LSMDC16 challenge files): one clip, one sentence; the 1,000-clip public test.

The files and the videos are licence-gated (MPII access agreement): both are placed by hand under
`source_dir` (annotations/ and videos/<movie>/<clip_id>.avi, the layout MPII distributes).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import pandas as pd

from ..annotations import normalize
from ..errors import MascotError
from . import register
from .remote import ANNOTATIONS, RemoteDataset, RemoteDatasetConfig, annotation

SPLIT_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
COLUMNS = ["clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence"]


class LsmdcConfig(RemoteDatasetConfig):
    DEFAULT_FILES: ClassVar[dict[str, dict]] = {
        "annotations": {"url": None, "members": {split: {"file": name} for split, name in SPLIT_FILES.items()}},
        "videos": {"url": None, "dest": "videos"},
    }


def read_split(path: Path) -> pd.DataFrame:
    """One tab-separated file: 6 fields, no header, no quoting (sentences contain commas and quotes)."""
    rows = []
    with open(annotation(path), newline="", encoding="utf-8") as f:
        for line_no, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(fields) != len(COLUMNS):
                raise MascotError(
                    f"{path}, line {line_no}: expected {len(COLUMNS)} tab-separated fields ({', '.join(COLUMNS)}), "
                    f"found {len(fields)}. The LSMDC files are tab-separated despite the .csv name."
                )
            rows.append(fields)
    return pd.DataFrame(rows, columns=COLUMNS)


def movie_of(clip_id: str) -> str:
    """`0001_American_Beauty_00.00.51.926-00.00.54.129` → `0001_American_Beauty` (titles contain `_`)."""
    return clip_id.rsplit("_", 1)[0]


@register
class Lsmdc(RemoteDataset):
    name = "lsmdc"
    Config = LsmdcConfig
    VIDEO_EXT: ClassVar[str] = ".avi"

    def read_annotations(self, raw_dir: Path) -> pd.DataFrame:
        ann = Path(raw_dir) / ANNOTATIONS
        parts = []
        for split, filename in SPLIT_FILES.items():
            df = read_split(ann / filename)
            parts.append(
                pd.DataFrame(
                    {
                        "video_id": df["clip_id"],
                        "split": split,
                        "caption_id": [f"{split}-{i}" for i in range(len(df))],
                        "caption": df["sentence"],
                        "video_path": [f"{movie_of(c)}/{c}{self.VIDEO_EXT}" for c in df["clip_id"]],
                    }
                )
            )
        table = pd.concat(parts, ignore_index=True).assign(start=float("nan"), end=float("nan"))
        return normalize(table, source=str(ann))
