import numpy as np
import pytest

from mascot.video import VideoReadError, read_clip, resize_center_crop, sample_indices

from .conftest import SHARED_DATA


def test_sample_indices_are_bin_centres():
    assert sample_indices(100, 10.0, None, None, 4) == [12, 37, 62, 87]


def test_sample_indices_respect_the_span():
    idx = sample_indices(100, 10.0, 2.0, 4.0, 4)  # frames 20..39
    assert idx[0] >= 20 and idx[-1] <= 39 and idx == sorted(idx)


def test_short_span_returns_every_frame_once():
    assert sample_indices(5, 10.0, None, None, 8) == [0, 1, 2, 3, 4]
    assert sample_indices(100, 10.0, 1.0, 1.25, 8) == [10, 11, 12]


def test_empty_video_is_an_error():
    with pytest.raises(VideoReadError):
        sample_indices(0, 10.0, None, None, 4)


def test_resize_center_crop_shape_and_centre():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # a white centre band that fills the centre crop
    out = resize_center_crop(frames, 16)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    assert out[:, :, 2:14].min() > 200


def test_read_clip_pads_short_videos_with_a_mask(tiny_raw, tiny_annotations):
    import pandas as pd

    table = pd.read_parquet(tiny_annotations).drop_duplicates("video_id")
    clip = read_clip(tiny_raw / "videos" / table.iloc[0]["video_path"], None, None, 64, 32)
    assert clip.frames.shape == (64, 32, 32, 3)
    assert 1 <= clip.num_valid < 64  # the tiny videos are ≤ 1.5 s at 10 fps
    assert clip.frames[: clip.num_valid].any()
    assert not clip.frames[clip.num_valid :].any()


@pytest.mark.parametrize("content", [b"", b"this is not a video\n", "truncated"])
def test_unreadable_files_raise(tmp_path, tiny_raw, content):
    path = tmp_path / "bad.mp4"
    if content == "truncated":
        good = sorted((tiny_raw / "videos").glob("*.mp4"))[0].read_bytes()
        content = good[: len(good) // 3]
    path.write_bytes(content)
    with pytest.raises(VideoReadError):
        read_clip(path, None, None, 4, 32)


@pytest.mark.skipif(not (SHARED_DATA / "videos").is_dir(), reason="shared sample videos not present")
@pytest.mark.parametrize("name", ["carphone_distorted.mp4", "flipping_a_pancake.mkv", "mmaction2_test.avi", "big_buck_bunny_432_433.webm"])
def test_real_sample_videos_decode(name):
    clip = read_clip(SHARED_DATA / "videos" / name, None, None, 12, 64)
    assert clip.num_valid == 12
    assert clip.frames.std() > 5  # real content, not blank frames
