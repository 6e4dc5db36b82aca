import json

import decord
import numpy as np

from mascot.datasets import get_dataset
from mascot.datasets.synthetic import MOTIONS, SyntheticConfig


def test_deterministic_and_decodable(tmp_path):
    cfg = SyntheticConfig(videos={"train": 3, "val": 1, "test": 1})
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        get_dataset("synthetic", cfg).download(d, d / "cache")
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    for video in sorted((a / "videos").glob("*.mp4")):
        assert video.read_bytes() == (b / "videos" / video.name).read_bytes()
        reader = decord.VideoReader(str(video))
        assert reader[0].shape == (cfg.height, cfg.width, 3)


def test_captions_describe_the_foreground(tiny_raw):
    meta = json.loads((tiny_raw / "annotations.json").read_text())
    for video in meta["videos"]:
        attrs = video["attributes"]
        for caption in video["captions"]:
            assert attrs["colour"] in caption and attrs["shape"] in caption
            assert MOTIONS[attrs["motion"]][1] in caption


def test_splits_and_schema(tiny_raw, tiny_params):
    table = get_dataset("synthetic", tiny_params.dataset("synthetic")).read_annotations(tiny_raw)
    per_split = table.drop_duplicates("video_id")["split"].value_counts().to_dict()
    assert per_split == {"train": 16, "val": 6, "test": 6}
    assert (table.groupby("video_id").size() == 2).all()
    assert table["start"].isna().all() and table["end"].isna().all()
    assert all((tiny_raw / "videos" / p).is_file() for p in table["video_path"])


def test_foreground_differs_from_background_statistics(tmp_path):
    # The shape is drawn on top of a textured, palette-coloured background: frames are not flat.
    cfg = SyntheticConfig(videos={"train": 1, "val": 1, "test": 1})
    get_dataset("synthetic", cfg).download(tmp_path, tmp_path / "cache")
    frame = decord.VideoReader(str(sorted((tmp_path / "videos").glob("*.mp4"))[0]))[0].asnumpy()
    assert np.std(frame.astype(float)) > 20
