"""A full disk or too many workers: clear errors and sane settings in the frames and features stages."""

import errno
import logging
import os
import shutil

import pytest

from mascot import features, frames, storage
from mascot.errors import MascotError


def _params(tiny_params, **frames_cfg):
    return tiny_params.model_copy(update={"frames": tiny_params.frames.model_copy(update=frames_cfg)})


def test_too_little_free_space_fails_before_decoding(tmp_path, tiny_raw, tiny_annotations, tiny_params, monkeypatch):
    free = shutil.disk_usage(tmp_path)._replace(free=600_000)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: free)
    out = tmp_path / "frames"
    with pytest.raises(
        MascotError, match=r"The frames stage needs 1\.4 MB in .*\.frames\.partial, but only 0\.6 MB is free there\. Free space"
    ):
        frames.run(_params(tiny_params, workers=1, format="raw"), tiny_annotations, tiny_raw / "videos", out)
    with pytest.raises(MascotError, match=r"The frames stage needs 0\.7 MB"):  # compressed: half the raw bytes, an upper bound
        frames.run(_params(tiny_params, workers=1, format="jpeg"), tiny_annotations, tiny_raw / "videos", out)
    assert not out.exists() and not list(frames.work_dir(out).glob("*.npy"))  # nothing decoded


def test_features_check_the_space_too(tmp_path, tiny_frames, tiny_annotations, tiny_prefix_params, monkeypatch):
    """K < L: the token cache's size is checked before anything is encoded."""
    free = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: free)
    with pytest.raises(MascotError, match=r"The features stage needs .* MB in .*, but only 0\.0 MB is free"):
        features.run(tiny_prefix_params, tiny_annotations, tiny_frames, tmp_path / "features")
    assert not (tmp_path / "features").exists()


def test_a_full_disk_while_writing_is_the_usual_error_not_a_signal(
    tmp_path, tiny_raw, tiny_annotations, tiny_params, monkeypatch
):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "posix_fallocate", full)
    out = tmp_path / "frames"
    with pytest.raises(
        MascotError, match=r"frames: the disk of .*\.frames\.partial is full \(No space left on device\); nothing half-written"
    ):
        frames.run(
            _params(tiny_params, workers=1, format="raw"), tiny_annotations, tiny_raw / "videos", out
        )  # memory-mapped shards
    assert not out.exists() and list(frames.work_dir(out).iterdir()) == []  # no shard was taken for finished


def test_shards_are_allocated_before_they_are_mapped(tmp_path):
    array = storage.allocated_memmap(tmp_path / "a.npy", "uint8", (4, 1000, 1000))
    st = os.stat(tmp_path / "a.npy")
    assert st.st_blocks * 512 >= st.st_size  # not a sparse file: every block exists
    del array


def test_workers_auto_and_the_cap_at_the_available_cores(monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert frames.resolve_workers("auto", shards=28) == 2
    assert frames.resolve_workers("auto", shards=1) == 1
    assert frames.resolve_workers(1, shards=28) == 1
    with caplog.at_level(logging.WARNING, logger="mascot"):
        assert frames.resolve_workers(16, shards=28) == 2
    assert "frames.workers = 16, but this process may use 2 cores" in caplog.text


def test_workers_accepts_auto_only_as_a_word(tiny_params):
    from mascot.config import FramesConfig

    assert FramesConfig(workers="auto").workers == "auto"
    with pytest.raises(ValueError):
        FramesConfig(workers="many")
    with pytest.raises(ValueError):
        FramesConfig(workers=0)


def test_decoder_messages_name_the_video(tmp_path, tiny_raw, tiny_annotations, tiny_params, monkeypatch, caplog):
    real = frames.read_clip
    victim = sorted(p.name for p in (tiny_raw / "videos").iterdir())[3]

    def noisy(path, *args, **kwargs):
        if path.name == victim:  # what FFmpeg writes straight to the process's stderr
            os.write(
                2,
                b"[h264 @ 0x55d1] Invalid NAL unit size (1234 > 567).\n[h264 @ 0x55d1] Error splitting the input into NAL units.\n",
            )
        return real(path, *args, **kwargs)

    monkeypatch.setattr(frames, "read_clip", noisy)
    with caplog.at_level(logging.WARNING, logger="mascot"):
        frames.run(_params(tiny_params, workers=1), tiny_annotations, tiny_raw / "videos", tmp_path / "frames")
    (record,) = [r for r in caplog.records if "the decoder said" in r.getMessage()]
    assert record.getMessage() == (
        f"{victim.removesuffix('.mp4')} ({victim}): the decoder said: [h264 @ 0x55d1] Invalid NAL unit size (1234 > 567). | "
        "[h264 @ 0x55d1] Error splitting the input into NAL units."
    )
