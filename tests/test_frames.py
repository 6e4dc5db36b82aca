import json
import shutil

import pandas as pd
import pytest

from mascot import frames
from mascot.errors import MascotError
from mascot.frames import open_frames


def test_frames_layout(tiny_frames, tiny_annotations, tiny_params):
    index, shards = open_frames(tiny_frames)
    table = pd.read_parquet(tiny_annotations)
    assert sorted(index["video_id"]) == sorted(table["video_id"].unique())
    assert json.loads((tiny_frames / "failures.json").read_text()) == []
    size = json.loads((tiny_frames / "meta.json").read_text())["image_size"]
    for row in index.itertuples():
        clip = shards[row.shard][row.row]
        assert clip.shape == (tiny_params.frames.num_frames, size, size, 3)
        assert clip[: row.num_valid].any() and not clip[row.num_valid :].any()
    # shard_size 10 splits the 16 training videos over two shards
    assert {"train-00000.npy", "train-00001.npy"} <= set(index["shard"])


def _corrupt_copy(tmp_path, tiny_raw, tiny_annotations):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    table = pd.read_parquet(tiny_annotations)
    victims = table.drop_duplicates("video_id")["video_path"].tolist()[:3]
    good = (raw / "videos" / victims[0]).read_bytes()
    (raw / "videos" / victims[0]).write_bytes(good[: len(good) // 3])  # truncated mp4
    (raw / "videos" / victims[1]).write_bytes(b"")  # zero bytes
    (raw / "videos" / victims[2]).write_text("not a video at all\n")  # text named .mp4
    return raw, victims


def test_corrupt_videos_fail_the_stage_above_threshold(tmp_path, tiny_raw, tiny_annotations, tiny_params):
    raw, victims = _corrupt_copy(tmp_path, tiny_raw, tiny_annotations)
    out = tmp_path / "frames"
    with pytest.raises(MascotError) as info:
        frames.run(tiny_params, tiny_annotations, raw / "videos", out)
    msg = str(info.value)
    for name in victims:
        assert name in msg
    assert "frames.max_failed_fraction" in msg
    assert not out.exists()  # nothing a later stage could trust
    assert not list(tmp_path.glob(".frames.tmp-*"))
    manifest = json.loads((tmp_path / "frames.failures.json").read_text())
    assert sorted(f["video_path"] for f in manifest) == sorted(victims)


def test_corrupt_videos_below_threshold_go_to_the_manifest(tmp_path, tiny_raw, tiny_annotations, tiny_params):
    raw, victims = _corrupt_copy(tmp_path, tiny_raw, tiny_annotations)
    params = tiny_params.model_copy(update={"frames": tiny_params.frames.model_copy(update={"max_failed_fraction": 0.5})})
    out = tmp_path / "frames"
    frames.run(params, tiny_annotations, raw / "videos", out)
    failures = json.loads((out / "failures.json").read_text())
    assert sorted(f["video_path"] for f in failures) == sorted(victims)
    index, _ = open_frames(out)
    assert not set(index["video_id"]) & {v.removesuffix(".mp4") for v in victims}


def test_conflicting_spans_are_rejected():
    table = pd.DataFrame(
        {"video_id": ["a", "a"], "split": ["train"] * 2, "start": [0.0, 1.0], "end": [1.0, 2.0], "video_path": ["a.mp4"] * 2}
    )
    with pytest.raises(MascotError, match="disagree"):
        frames.video_table(table, "x")
