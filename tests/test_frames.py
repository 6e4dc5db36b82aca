import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from mascot import frames
from mascot.config import parse_params
from mascot.errors import MascotError
from mascot.frames import open_frames

from .conftest import SHARED_DATA


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


# --- parallel, resumable extraction ---


def _frames_params(tiny_params, **frames_cfg):
    return tiny_params.model_copy(update={"frames": tiny_params.frames.model_copy(update=frames_cfg)})


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def serial_frames(tmp_path_factory, tiny_raw, tiny_annotations, tiny_params):
    out = tmp_path_factory.mktemp("serial") / "frames"
    frames.run(_frames_params(tiny_params, shard_size=3, workers=1), tiny_annotations, tiny_raw / "videos", out)
    return out


def test_parallel_workers_give_identical_output(tmp_path, serial_frames, tiny_raw, tiny_annotations, tiny_params):
    out = tmp_path / "frames"
    frames.run(_frames_params(tiny_params, shard_size=3, workers=2), tiny_annotations, tiny_raw / "videos", out)
    assert _files(out) == _files(serial_frames)
    assert not frames.work_dir(out).exists()
    index = pd.read_parquet(out / "index.parquet")
    assert len(index["shard"].unique()) == 6 + 2 + 2  # 16 / 6 / 6 videos in shards of 3
    # the generated clips are short with one keyframe each: seeking saves nothing, PyAV decodes in order
    assert set(index["decoder"]) == {"pyav"} and not index["substituted"].any()


def _run_logged(params, annotations, video_root, out, die_after=None):
    """frames.run, recording which shards it decodes; raises KeyboardInterrupt after `die_after`."""
    decoded, real = [], frames.decode_shard

    def logged(job):
        if die_after is not None and len(decoded) >= die_after:
            raise KeyboardInterrupt
        decoded.append(job[0].name)
        return real(job)

    frames.decode_shard = logged
    try:
        frames.run(params, annotations, video_root, out)
    finally:
        frames.decode_shard = real
    return decoded


def test_finished_shards_are_reused_and_changed_videos_redone(tmp_path, serial_frames, tiny_raw, tiny_annotations, tiny_params):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    params = _frames_params(tiny_params, shard_size=3, workers=1)
    out = tmp_path / "frames"
    with pytest.raises(KeyboardInterrupt):
        _run_logged(params, tiny_annotations, raw / "videos", out, die_after=4)
    table = frames.video_table(pd.read_parquet(tiny_annotations), "t")
    plan = [s.name for s in frames.plan_shards(table, raw / "videos", 1, 1, 3)]
    victim = raw / "videos" / table[table["split"] == "train"].iloc[4]["video_path"]  # in train-00001, finished
    os.utime(victim, ns=(1, 1))  # same bytes, other mtime: that shard is redone
    decoded = _run_logged(params, tiny_annotations, raw / "videos", out)
    assert decoded == ["train-00001.npy"] + plan[4:]
    assert _files(out) == _files(serial_frames)


def _default_sigint() -> None:
    """A child inherits an ignored SIGINT (an earlier in-process test may leave pytest ignoring it), and
    Python then keeps ignoring it: give the stage the default, as a shell would."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_extraction_resumes_to_identical_output(tmp_path, tiny_raw, tiny_annotations, signum):
    from .conftest import tiny_params_dict

    raw = tiny_params_dict()
    raw["frames"].update({"shard_size": 1, "workers": 2})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "frames"
    cmd = [
        sys.executable,
        "-m",
        "mascot",
        "--params",
        str(params),
        "frames",
        "--dataset",
        "synthetic",
        "--raw",
        str(tiny_raw),
        "--annotations",
        str(tiny_annotations),
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    work = frames.work_dir(out)
    for _attempt in range(5):  # a run can finish (or pass its last shard) between two polls; then start it again
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        # its own process group, so that freezing it freezes its decoding workers too (a frozen stage
        # whose workers finish every shard would have nothing left to interrupt)
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_sigint
        )
        deadline = time.time() + 120
        while not list(work.glob("*.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGSTOP)  # freeze it mid-run, then interrupt it
        if proc.poll() is None and len(list(work.glob("*.json"))) < 28:
            break
        if proc.poll() is None:  # frozen after its last shard: nothing left to interrupt
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done_before = len(list(work.glob("*.json")))
    proc.send_signal(signum)
    os.killpg(proc.pid, signal.SIGCONT)
    proc.wait(timeout=60)
    assert proc.returncode != 0, proc.stdout.read().decode()
    assert not out.exists()
    finished = sorted(work.glob("*.json"))
    assert 1 <= done_before <= len(finished) < 28
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert not work.exists()
    # the same settings without an interruption: the same bytes in every file
    whole = tmp_path / "whole" / "frames"
    frames.run(parse_params(raw), tiny_annotations, tiny_raw / "videos", whole)
    assert _files(out) == _files(whole)


def test_interrupted_run_output_is_byte_identical(tmp_path, tiny_raw, tiny_annotations, tiny_params):
    """Same settings, with and without an interruption: the same bytes in every file."""
    params = _frames_params(tiny_params, shard_size=1, workers=1)
    whole = tmp_path / "whole" / "frames"
    frames.run(params, tiny_annotations, tiny_raw / "videos", whole)
    out = tmp_path / "resumed" / "frames"
    with pytest.raises(KeyboardInterrupt):
        _run_logged(params, tiny_annotations, tiny_raw / "videos", out, die_after=5)
    assert len(list(frames.work_dir(out).glob("*.json"))) == 5
    frames.run(params, tiny_annotations, tiny_raw / "videos", out)
    assert _files(out) == _files(whole)


@pytest.mark.heavy
@pytest.mark.skipif(not (SHARED_DATA / "videos").is_dir(), reason="shared sample videos not present")
def test_real_samples_through_the_stage(tmp_path, tiny_params):
    from mascot.annotations import normalize, write_table

    videos = sorted(p.name for p in (SHARED_DATA / "videos").iterdir())
    table = normalize(
        pd.DataFrame(
            {
                "video_id": videos,
                "split": "test",
                "caption_id": videos,
                "caption": "a clip",
                "start": np.nan,
                "end": np.nan,
                "video_path": videos,
            }
        ),
        "samples",
    )
    ann = tmp_path / "annotations.parquet"
    write_table(table, ann)
    out = tmp_path / "frames"
    frames.run(_frames_params(tiny_params, num_frames=64, workers=2, shard_size=3), ann, SHARED_DATA / "videos", out)
    index = pd.read_parquet(out / "index.parquet").set_index("video_id")
    assert json.loads((out / "failures.json").read_text()) == []
    repairs = {r["video_id"]: r for r in json.loads((out / "repairs.json").read_text())}
    assert sorted(repairs) == ["corrupted.mp4"]  # no_duration.webm: one keyframe, PyAV straight away (no failure)
    assert repairs["corrupted.mp4"]["substituted"] == [[30, 29]] and index.loc["no_duration.webm", "decoder"] == "pyav"
    assert index.loc["corrupted.mp4", "num_valid"] == 50 and index.loc["corrupted.mp4", "substituted"] == 1
    assert index.loc["video_90.mov", "num_valid"] == 3


# --- compressed frames (frame_store.py) ----------------------------------------------------------


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def test_encoded_shard_reads_like_the_raw_array(tmp_path):
    import torch

    from mascot.frame_store import EncodedFrames, EncodedShard, ShardWriter, offsets_name

    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (3, 4, 8, 8, 3)), np.ones((1, 1, 4, 4, 1))).astype(np.uint8)  # smooth-ish images
    writer = ShardWriter(tmp_path / "s.npy", "jpeg", 95, videos=3, num_frames=4, size=32)
    for row, valid in enumerate([4, 2, 0]):  # a full video, a short one, a failed (empty) row
        frames_ = base[row].copy()
        frames_[valid:] = 0
        writer.write(row, frames_, valid)
    writer.close(tmp_path / offsets_name("s.npy"))
    shard = EncodedShard(tmp_path / "s.npy", 32, "jpeg")
    assert shard.shape == (3, 4, 32, 32, 3)
    assert shard[1].shape == (4, 32, 32, 3) and not shard[1][2:].any() and not shard[2].any()  # padding reads as zeros
    assert shard[1, :2].shape == (2, 32, 32, 3) and np.array_equal(shard[1, :2], shard[1][:2])
    assert shard.offsets[2, 0] == shard.offsets[2, -1] == shard.offsets[1, -1]  # empty rows take no bytes
    assert _psnr(shard[0], base[0]) > 35
    # the same files decoded on the device (decode_on: device; on the CPU torchvision's libjpeg-turbo): Pillow's pixels
    encoded = EncodedFrames.gather([(shard, row, slice(None)) for row in range(3)], shard.shape)
    assert torch.equal(encoded.decode(torch.device("cpu")), torch.from_numpy(np.stack([shard[r] for r in range(3)])))
    assert encoded.files[6] is None and encoded[2:].files == [None] * 4  # padding and failed rows carry no file
    flat = EncodedFrames.gather(
        [(shard, 0, slice(1, 3)), (shard, 1, slice(2))], (4, 32, 32, 3)
    )  # valid frames only, as features groups them
    assert torch.equal(flat.decode(torch.device("cpu")), torch.from_numpy(np.concatenate([shard[0, 1:3], shard[1, :2]])))
    with pytest.raises(ValueError, match="5 files"):
        EncodedFrames(encoded.files[:5], (2, 4, 32, 32, 3))


@pytest.mark.parametrize(("fmt", "min_psnr", "max_mean_error"), [("jpeg", 38, 2.5), ("webp", 28, 6.5)])
def test_compressed_frames_decode_close_to_raw(tmp_path, tiny_raw, tiny_annotations, tiny_params, fmt, min_psnr, max_mean_error):
    """The stated tolerance of a compressed frames folder against the raw one (the same videos, the same
    index): at quality 95, PSNR above 38 dB (JPEG, 4:4:4) / 28 dB (WebP, whose lossy mode halves the
    colour resolution) and mean absolute error below 2.5 / 6.5 levels of 255 on the tiny set's 64-px
    frames (docs/benchmarks.md, "Frame formats", measured 39.8 / 29.9 dB, 1.9 / 5.4 levels on the
    default's frames; real 224-px frames do better)."""
    out, raw_out = tmp_path / "frames", tmp_path / "raw-frames"
    frames.run(_frames_params(tiny_params, format=fmt), tiny_annotations, tiny_raw / "videos", out)
    frames.run(_frames_params(tiny_params, format="raw"), tiny_annotations, tiny_raw / "videos", raw_out)
    index, shards = open_frames(out)
    raw_index, raw_shards = open_frames(raw_out)
    pd.testing.assert_frame_equal(index, raw_index)
    assert json.loads((out / "meta.json").read_text())["format"] == fmt
    assert sorted(p.name for p in out.glob("*.offsets.npy")) == sorted(
        s.replace(".npy", ".offsets.npy") for s in index["shard"].unique()
    )
    decoded = np.concatenate([shards[r.shard][r.row, : r.num_valid] for r in index.itertuples()])
    raw = np.concatenate([raw_shards[r.shard][r.row, : r.num_valid] for r in index.itertuples()])
    assert _psnr(decoded, raw) > min_psnr
    assert np.abs(decoded.astype(np.int16) - raw.astype(np.int16)).mean() < max_mean_error
    stored = sum(p.stat().st_size for p in out.glob("*.npy"))
    assert stored < sum(p.stat().st_size for p in raw_out.glob("*.npy")) / 2


def test_another_format_redoes_every_shard(tiny_raw, tiny_annotations):
    table = frames.video_table(pd.read_parquet(tiny_annotations), "t")
    plans = [
        [s.fingerprint for s in frames.plan_shards(table, tiny_raw / "videos", 4, 64, 3, storage=frames.Storage(f, q))]
        for f, q in [("raw", 95), ("raw", 50), ("jpeg", 95), ("jpeg", 90), ("webp", 95)]
    ]
    assert plans[0] == plans[1]  # raw frames have no quality
    assert len({p[0] for p in plans[1:]}) == 4 and all(len(set(p) & set(plans[0])) == 0 for p in plans[2:])


def test_compressed_shard_file_is_what_np_save_writes(tmp_path):
    """The writer spools encoded frames to disk (memory: one frame) and writes the .npy np.save would."""
    from mascot.frame_store import ShardWriter, encode_image, offsets_name

    frames_ = np.random.default_rng(1).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    writer = ShardWriter(tmp_path / "s.npy", "jpeg", 90, videos=2, num_frames=3, size=16)
    for row in range(2):
        writer.write(row, frames_[row], 3)
    writer.close(tmp_path / offsets_name("s.npy"))
    files = b"".join(encode_image(f, "jpeg", 90) for f in frames_.reshape(6, 16, 16, 3))
    np.save(tmp_path / "expected.npy", np.frombuffer(files, np.uint8))
    assert (tmp_path / "s.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected.npy", "s.npy", "s.offsets.npy"]  # no spool left
