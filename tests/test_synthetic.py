import json

import decord
import numpy as np
import pytest

from mascot.datasets import get_dataset
from mascot.datasets.synthetic import MOTIONS, PALETTE, SyntheticConfig, draw_video, render_video


@pytest.mark.heavy
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


def _interior(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """The mask without a `margin`-pixel rim (H.264 and 4:2:0 chroma blur the shape's edges)."""
    inner = mask.copy()
    for axis in (0, 1):
        for shift in (-margin, margin):
            inner &= np.roll(mask, shift, axis=axis)
    return inner


@pytest.mark.heavy
def test_the_foreground_shape_is_where_the_generator_drew_it(tmp_path):
    cfg = SyntheticConfig(videos={"train": 3, "val": 1, "test": 1})
    get_dataset("synthetic", cfg).download(tmp_path, tmp_path / "cache")
    meta = json.loads((tmp_path / "annotations.json").read_text())
    for index, entry in enumerate(meta["videos"]):
        rng, attrs, n = draw_video(cfg, index)
        assert (attrs, n) == (entry["attributes"], entry["num_frames"])
        _, masks = render_video(rng, cfg, attrs, n)
        reader = decord.VideoReader(str(tmp_path / "videos" / f"{entry['video_id']}.mp4"))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy().astype(float)
        assert len(frames) == n
        colour = np.array(PALETTE[attrs["colour"]], float)
        first, last = _interior(masks[0]), _interior(masks[-1])
        ahead = _interior(masks[-1] & ~masks[0])  # where the shape goes, clear of where it starts
        assert first.sum() > 20 and last.sum() > 20 and ahead.sum() > 20
        # the decoded frames show the shape's colour where the generator put it, and not where it goes later
        assert np.abs(frames[0][first] - colour).mean() < 15 and np.abs(frames[-1][last] - colour).mean() < 15
        assert np.abs(frames[0][ahead] - colour).mean() > 2 * np.abs(frames[0][first] - colour).mean() + 10
        # and it moves the way the captions say
        (ux, uy), _ = MOTIONS[attrs["motion"]]
        start, end = (np.argwhere(m).mean(axis=0) for m in (masks[0], masks[-1]))  # (row, column) centroids
        assert np.sign(np.round(end - start)).tolist() == [uy, ux]


def test_ceiling_counts_the_videos_a_caption_fits(tmp_path):
    """Two test videos differ only in size: the template that leaves size out fits both, so a model
    that knows what captions say ranks the right one first half the time for those captions."""
    from mascot.datasets.synthetic import TEMPLATES, caption

    red_small = {"colour": "red", "shape": "circle", "size": "small", "motion": "up"}
    red_large = red_small | {"size": "large"}
    blue = {"colour": "blue", "shape": "square", "size": "small", "motion": "left"}
    videos = [
        {"video_id": f"v{i}", "split": "test", "attributes": a, "captions": [caption(TEMPLATES[0], a), caption(TEMPLATES[1], a)]}
        for i, a in enumerate((red_small, red_large, blue))
    ] + [{"video_id": "t", "split": "train", "attributes": red_small, "captions": [caption(TEMPLATES[1], red_small)]}]
    (tmp_path / "annotations.json").write_text(json.dumps({"videos": videos}))
    ceiling = get_dataset("synthetic", SyntheticConfig()).ceiling(tmp_path)
    # t2v: template 0 names the size (fits 1 video), template 1 does not (fits both red circles; blue: 1)
    assert ceiling["t2v"]["R1"] == pytest.approx(100 * (1 + 0.5 + 1 + 0.5 + 1 + 1) / 6)
    # v2t: the two red circles share the template-1 text, which is then one of each one's own texts (its
    # copies tie); no wrong text fits either of them: every video finds an own caption first
    assert ceiling["v2t"]["R1"] == 100.0
    assert ceiling["t2v"]["R5"] == ceiling["v2t"]["R5"] == 100.0
