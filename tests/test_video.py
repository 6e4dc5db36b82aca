from pathlib import Path

import numpy as np
import pytest

from mascot.video import (
    VideoReadError,
    frames_decoded_seeking,
    read_clip,
    resize_center_crop,
    sample_indices,
    seeking_pays,
    stream_index,
)

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


# --- videos decord alone gets wrong: made here with FFmpeg, and the real samples when present ---


def _ffmpeg(*args: str, stdout=None) -> None:
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True, stdout=stdout)


def _testsrc(path, *codec: str) -> None:
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10:duration=2", *codec, str(path))


def _decoded(path) -> np.ndarray:
    """Every frame as FFmpeg itself decodes it (display rotation applied), the reference."""
    import subprocess

    import av
    import imageio_ffmpeg

    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        h, w = frame.height, frame.width
        if abs(frame.rotation) == 90:
            h, w = w, h
    raw = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(path),
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def test_container_without_duration_falls_back_to_sequential_decoding(tmp_path):
    import decord

    path = tmp_path / "streamed.webm"
    with open(path, "wb") as out:  # written to a pipe: no duration, no cues
        _ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10:duration=2", "-c:v", "libvpx-vp9", "-f", "webm", "-", stdout=out)
    with pytest.raises(Exception):  # noqa: B017 -- decord raises its own DECORDError, not importable stably
        decord.VideoReader(str(path))
    clip = read_clip(path, None, None, 40, 32, decoder="decord")
    assert clip.decoder == "pyav" and clip.fell_back and clip.num_valid == 20 and clip.substituted == ()
    assert np.array_equal(clip.frames[:20], resize_center_crop(_decoded(path), 32))
    auto = read_clip(path, None, None, 40, 32)  # one keyframe: the in-order route is taken straight away
    assert auto.decoder == "pyav" and not auto.fell_back and np.array_equal(auto.frames, clip.frames)


def test_one_undecodable_frame_is_replaced_by_its_neighbour(tmp_path):
    import av

    path = tmp_path / "intra.mp4"
    _testsrc(path, "-c:v", "libx264", "-g", "1", "-pix_fmt", "yuv420p")  # every frame decodes on its own
    good = read_clip(path, None, None, 20, 32)
    with av.open(str(path)) as c:
        packets = sorted((p.pts, p.pos) for p in c.demux(video=0) if p.size)
    with open(path, "r+b") as f:  # an impossible NAL unit size, FFmpeg's error on the real corrupted.mp4
        f.seek(packets[7][1])
        f.write(b"\xff\xff\xff\xff")
    clip = read_clip(path, None, None, 20, 32)
    assert clip.decoder == "pyav" and clip.num_valid == 20
    assert clip.substituted == ((7, 6),)
    assert np.array_equal(clip.frames[7], good.frames[6])
    keep = [i for i in range(20) if i != 7]
    assert np.array_equal(clip.frames[keep], good.frames[keep])  # only the unreadable frame is lost


@pytest.mark.parametrize("decoder", ["auto", "pyav"])
def test_display_rotation_is_applied(tmp_path, decoder):
    base, rotated = tmp_path / "base.mp4", tmp_path / "rotated.mp4"
    _testsrc(base, "-c:v", "libx264", "-pix_fmt", "yuv420p")
    _ffmpeg("-display_rotation", "90", "-i", str(base), "-c", "copy", str(rotated))
    reference = _decoded(rotated)
    assert reference.shape[1:3] == (96, 64)  # portrait once rotated
    clip = read_clip(rotated, None, None, 20, 32, decoder=decoder)
    assert np.array_equal(clip.frames, resize_center_crop(reference, 32))
    assert not np.array_equal(clip.frames, read_clip(base, None, None, 20, 32).frames)


SAMPLES = Path(SHARED_DATA / "videos")
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared sample videos not present")
# Decoded frame counts measured with ffprobe (SOURCES.md); corrupted.mp4 has 50 frames, 49 decodable.
FRAME_COUNTS = {
    "carphone_distorted.mp4": 120,
    "big_buck_bunny_432_433.webm": 24,
    "no_duration.webm": 74,
    "video_90.mov": 3,
    "flipping_a_pancake.mkv": 310,
    "mmaction2_test.avi": 164,
    "var_fps_video.mp4": 300,
    "corrupted.mp4": 50,
}


@needs_samples
@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(FRAME_COUNTS))
def test_real_samples_every_frame(name):
    clip = read_clip(SAMPLES / name, None, None, 400, 16, decoder="decord")
    assert clip.num_valid == FRAME_COUNTS[name]
    assert clip.fell_back == (name in ("no_duration.webm", "corrupted.mp4"))
    assert clip.substituted == (((30, 29),) if name == "corrupted.mp4" else ())


@needs_samples
@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(FRAME_COUNTS))
def test_real_samples_both_decoders_agree(name):
    clips = [read_clip(SAMPLES / name, None, None, 12, 32, decoder=d) for d in ("auto", "decord", "pyav")]
    assert all(c.num_valid == clips[2].num_valid and np.array_equal(c.frames, clips[2].frames) for c in clips)


@needs_samples
def test_real_rotated_sample_matches_ffmpeg():
    reference = _decoded(SAMPLES / "video_90.mov")
    assert reference.shape[1:3] == (568, 320)
    for decoder in ("auto", "pyav"):
        clip = read_clip(SAMPLES / "video_90.mov", None, None, 3, 32, decoder=decoder)
        assert np.array_equal(clip.frames, resize_center_crop(reference, 32))


@pytest.mark.skipif(not (SHARED_DATA / "videos").is_dir(), reason="shared sample videos not present")
@pytest.mark.parametrize(
    "name", ["carphone_distorted.mp4", "flipping_a_pancake.mkv", "mmaction2_test.avi", "big_buck_bunny_432_433.webm"]
)
def test_real_sample_videos_decode(name):
    clip = read_clip(SHARED_DATA / "videos" / name, None, None, 12, 64)
    assert clip.num_valid == 12
    assert clip.frames.std() > 5  # real content, not blank frames


def test_skipping_non_reference_frames_leaves_the_targets_unchanged(tmp_path):
    """FFmpeg's skip_frame=NONREF on B-frames that are not sampled: same pixels for the sampled ones."""
    import av

    from mascot.video import _decode

    path = tmp_path / "bframes.mp4"
    _testsrc(path, "-c:v", "libx264", "-bf", "3", "-pix_fmt", "yuv420p")
    with av.open(str(path)) as c:
        packets = list(c.demux(video=0))
        assert any(p.pts != p.dts for p in packets if p.size)  # reordered: there are B-frames to skip
        pts = sorted(p.pts for p in packets if p.size)
    rank = {p: i for i, p in enumerate(pts)}
    targets = {1, 6, 10, 13, 19}
    skipped, decoded = _decode(path, rank, targets, skip=True)
    full, every = _decode(path, rank, targets, skip=False)
    assert skipped.keys() == full.keys() == targets
    assert all(np.array_equal(skipped[i], full[i]) for i in targets)
    assert len(decoded) < len(every) == 20  # frames were actually skipped


def test_frames_decoded_seeking_known_answers():
    # keyframes at 0 and 10; targets 3, 5 (continues from 3), 12 (from keyframe 10), 14 (continues from 12)
    assert frames_decoded_seeking([3, 5, 12, 14], [0, 10]) == 4 + 2 + 3 + 2
    assert frames_decoded_seeking([5, 3, 5], [0]) == 6  # sorted, duplicates once: one pass up to 5
    assert frames_decoded_seeking([9], [0, 10]) == 10  # the keyframe after the target does not help
    assert frames_decoded_seeking([29], list(range(0, 30, 10))) == 10


@pytest.mark.parametrize(("gop", "route"), [(5, "decord"), (250, "pyav")])
def test_auto_takes_the_route_the_keyframe_index_favours(tmp_path, gop, route):
    """Short GOPs: seeking skips most frames, decord; one keyframe: every frame is needed, PyAV in
    order. Either way the frames are those of both forced routes."""
    path = tmp_path / f"gop{gop}.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=96x64:rate=25:duration=4",
        "-c:v",
        "libx264",
        "-g",
        str(gop),
        "-pix_fmt",
        "yuv420p",
        str(path),
    )
    index = stream_index(path)
    assert len(index.pts) == 100 and (len(index.keyframes) == 20 if gop == 5 else len(index.keyframes) <= 2)
    assert seeking_pays(index, sample_indices(100, index.fps, None, None, 6)) == (route == "decord")
    clip = read_clip(path, None, None, 6, 32)
    assert clip.decoder == route and not clip.fell_back
    for forced in ("decord", "pyav"):
        assert np.array_equal(clip.frames, read_clip(path, None, None, 6, 32, decoder=forced).frames)
