"""MSR-VTT, 1k-A protocol (JSFusion test split), as in the CLIP4Clip lineage (docs/datasets.md).

Train: the 9k (or 7k) list with all ~20 captions of each video from MSRVTT_data.json. Test: the
1,000 video-sentence pairs of MSRVTT_JSFUSION_test.csv. 1k-A has no validation split; ours is
carved from the training videos (`val_videos`, fixed seed) so that the test set is used once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd
from pydantic import Field

from ..annotations import normalize
from ..errors import MascotError
from . import register
from .remote import ANNOTATIONS, CarvedValConfig, RemoteDataset, annotation, carve_val

TEST_CSV = "MSRVTT_JSFUSION_test.csv"


class MsrvttConfig(CarvedValConfig):
    train_list: Literal["9k", "7k"] = Field("9k", description="training list: 9k (1k-A, the paper's) or 7k")

    DEFAULT_FILES: ClassVar[dict[str, dict]] = {
        "annotations": {
            "url": "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip",
            "archive": True,
            "root": "msrvtt_data",
            "members": {
                "data_json": {"file": "MSRVTT_data.json"},
                "train_9k": {"file": "MSRVTT_train.9k.csv", "checksum": "gitblob:95b6bce7311658d5e32bbfac951aaa2877ecdbc1"},
                "train_7k": {"file": "MSRVTT_train.7k.csv", "checksum": "gitblob:8aeb88dcbf7999dbec719421dc5fafe40a0cca25"},
                "test": {"file": TEST_CSV, "checksum": "gitblob:0ba60f72f279e4d75965de75b37e3fdd2340cc59"},
            },
        },
        "videos": {
            "url": "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip",
            "archive": True,
            "root": "MSRVTT/videos/all",
            "dest": "videos",
        },
    }


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    df = pd.read_csv(annotation(path), dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MascotError(f"{path}: expected columns {columns}, found {list(df.columns)}; is this the CLIP4Clip release file?")
    return df


@register
class Msrvtt(RemoteDataset):
    name = "msrvtt"
    Config = MsrvttConfig
    config: MsrvttConfig

    def read_annotations(self, raw_dir: Path) -> pd.DataFrame:
        ann = Path(raw_dir) / ANNOTATIONS
        train_csv = ann / f"MSRVTT_train.{self.config.train_list}.csv"
        train_ids = _read_csv(train_csv, ["video_id"])["video_id"].tolist()
        test = _read_csv(ann / TEST_CSV, ["key", "video_id", "sentence"])
        data_json = annotation(ann / "MSRVTT_data.json")
        try:
            sentences = pd.DataFrame(json.loads(data_json.read_text())["sentences"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MascotError(f"{data_json}: not the MSR-VTT annotation JSON with a `sentences` list ({exc}).") from None
        train = sentences[sentences["video_id"].isin(set(train_ids))]
        uncaptioned = sorted(set(train_ids) - set(train["video_id"]))
        if uncaptioned:
            raise MascotError(
                f"{data_json}: {len(uncaptioned)} videos of {train_csv.name} have no caption (e.g. {uncaptioned[:5]}); "
                "the JSON and the list do not belong together."
            )
        val = carve_val(train_ids, self.config.val_videos, self.config.val_seed, str(train_csv))
        train = pd.DataFrame(
            {
                "video_id": train["video_id"],
                "split": train["video_id"].map(lambda v: "val" if v in val else "train"),
                "caption_id": "sen" + train["sen_id"].astype(str),
                "caption": train["caption"],
            }
        )
        test = pd.DataFrame(
            {"video_id": test["video_id"], "split": "test", "caption_id": test["key"], "caption": test["sentence"]}
        )
        table = pd.concat([train, test], ignore_index=True)
        table = table.assign(start=float("nan"), end=float("nan"), video_path=table["video_id"] + ".mp4")
        return normalize(table, source=str(ann))
