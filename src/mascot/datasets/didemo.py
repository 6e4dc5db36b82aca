"""DiDeMo (LocalizingMoments): paragraph → video retrieval over the first 30 s.

Splits: the train/val/test JSON filtered by the collaborative-experts lists (8,392 / 1,065 / 1,004
videos), the lists CLIP4Clip-style evaluations report. Videos come from the YFCC100M mirror, one URL
per video through yfcc100m_hash.txt, saved as `<video>.mp4` as LocalizingMoments' own script does;
13 are gone upstream (docs/datasets.md) and end up in missing_videos.txt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from ..annotations import SPLITS, normalize
from ..errors import MascotError
from . import register
from .remote import ANNOTATIONS, ParagraphConfig, RemoteDataset, annotation, read_text_lines, segment_rows

LM = "https://raw.githubusercontent.com/LisaAnne/LocalizingMoments/master/data"
CE = "https://raw.githubusercontent.com/albanie/collaborative-experts/master/misc/datasets/didemo"
SEGMENT_SECONDS = 5.0
HASH_FILE = "yfcc100m_hash.txt"
CHECKSUMS = {
    "val_data.json": "gitblob:1520194905980ca72a1d2351d5ba2a3e3bf5b5c4",
    "test_data.json": "gitblob:6cc62877fa5cd35fe323dd133f13a2595faa59ae",
    "train_list.txt": "gitblob:fc7f69b58beb03cafce8dc1138c24b758c32efc8",
    "val_list.txt": "gitblob:1a891e18649e93d0d3938f984f8717919842b4a7",
    "test_list.txt": "gitblob:68c7927a66d476fdfb3d663838f08824c87d561f",
}


def _file(url: str, name: str) -> dict:
    return {"url": url, "checksum": CHECKSUMS.get(name), "file": name}


class DidemoConfig(ParagraphConfig):
    use_lists: bool = Field(True, description="keep only the videos of the collaborative-experts split lists")
    video_url: str = Field(
        "https://multimedia-commons.s3-us-west-2.amazonaws.com/data/videos/mp4/{p1}/{p2}/{hash}.mp4",
        description="per-video URL; {hash} is the YFCC100M hash of the Flickr id, {p1}/{p2} its characters 0-3 / 3-6",
    )
    span: tuple[float, float] = Field((0.0, 30.0), description="seconds of each video used in paragraph mode")

    DEFAULT_FILES: ClassVar[dict[str, dict]] = {
        **{f"{s}_data": _file(f"{LM}/{s}_data.json", f"{s}_data.json") for s in SPLITS},
        **{f"{s}_list": _file(f"{CE}/{s}_list.txt", f"{s}_list.txt") for s in SPLITS},
        "yfcc100m_hash": _file(f"{LM}/{HASH_FILE}", HASH_FILE),
    }


def flickr_id(video: str) -> str:
    """`26292851@N04_4253489686_265c3c8051.m4v` → `4253489686`."""
    return video.split("_")[1]


@register
class Didemo(RemoteDataset):
    name = "didemo"
    Config = DidemoConfig
    config: DidemoConfig
    _hashes: dict[str, str] | None = None

    def read_annotations(self, raw_dir: Path) -> pd.DataFrame:
        ann = Path(raw_dir) / ANNOTATIONS
        parts = []
        for split in SPLITS:
            path = annotation(ann / f"{split}_data.json")
            try:
                entries = json.loads(path.read_text())
                df = pd.DataFrame(
                    [(e["video"], e["annotation_id"], e["description"], e["times"][0]) for e in entries],
                    columns=["video", "annotation_id", "sentence", "segment"],
                )
            except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
                raise MascotError(
                    f"{path}: not a LocalizingMoments annotation list (video, annotation_id, description, times): {exc}."
                ) from None
            if self.config.use_lists:
                df = df[df["video"].isin(set(read_text_lines(ann / f"{split}_list.txt")))]
            parts.append(df.assign(split=split))
        segments = pd.concat(parts, ignore_index=True)
        # The first annotator's segment (of 5 s units); sentence mode only.
        segments["start"] = segments["segment"].map(lambda t: t[0] * SEGMENT_SECONDS)
        segments["end"] = segments["segment"].map(lambda t: (t[1] + 1) * SEGMENT_SECONDS)
        segments = segments.assign(video_id=segments["video"], video_path=segments["video"] + ".mp4")
        table = segment_rows(segments, self.config.paragraph, self.config.span)
        return normalize(table, source=str(ann))

    def video_url(self, video_path: str, raw_dir: Path) -> str | None:
        if self._hashes is None:
            lines = read_text_lines(Path(raw_dir) / ANNOTATIONS / HASH_FILE)
            self._hashes = dict(line.split("\t")[:2] for line in lines if "\t" in line)
        h = self._hashes.get(flickr_id(video_path.removesuffix(".mp4")))
        return None if h is None else self.config.video_url.format(hash=h, p1=h[:3], p2=h[3:6])
