"""The data path: batches read ahead by loader threads are the batches of the in-process path."""

import numpy as np
import pandas as pd
import pytest
import torch

from mascot import features, train
from mascot.devices import on_device
from mascot.errors import ConfigError
from mascot.features import FeatureStore
from mascot.frame_store import EncodedFrames, decodes_on_device
from mascot.loader import prefetched
from mascot.train_log import steps_path


def _with(params, **sections):
    return params.model_copy(update={k: getattr(params, k).model_copy(update=v) for k, v in sections.items()})


@pytest.mark.parametrize(
    ("store_fixture", "stored"),
    [("tiny_features", torch.uint8), ("tiny_prefix_features", torch.float16)],
    ids=["frames", "tokens"],
)
def test_loader_threads_yield_the_in_process_batches_bit_for_bit(request, store_fixture, stored):
    """K = L: frames (decoded from JPEG in the threads); K < L: cached fp16 tokens."""
    store = FeatureStore.open(request.getfixturevalue(store_fixture))
    rows = np.random.default_rng(0).permutation(store.caption_rows("train"))
    keys = [rows[i : i + 5] for i in range(0, len(rows), 5)]  # the last batch is shorter
    here = list(prefetched(store.pairs, keys, 0, torch.device("cpu")))
    ahead = list(prefetched(store.pairs, keys, 2, torch.device("cpu"), prefetch=3))
    assert len(here) == len(ahead) == len(keys)
    for (t0, m0, x0), (t1, m1, x1), key in zip(here, ahead, keys, strict=True):
        assert t0.dtype == t1.dtype == stored  # travels as stored
        assert t0.shape[0] == len(key) and torch.equal(t0, t1) and torch.equal(m0, m1) and torch.equal(x0, x1)


def test_on_device_converts_stored_floats_exactly_and_keeps_integers():
    half = torch.randn(3, 4).half()
    assert torch.equal(on_device(half, torch.device("cpu")), half.float())
    assert on_device(torch.arange(3), torch.device("cpu")).dtype == torch.int64
    assert on_device(torch.ones(2, dtype=torch.bool), torch.device("cpu")).dtype == torch.bool


def test_jpeg_frames_decoded_on_the_device_are_the_loaders_bit_for_bit(tiny_features):
    """`decode_on: device` hands JPEG files over (EncodedFrames) and decodes a batch in one call
    where it is computed; on the CPU torchvision's libjpeg-turbo gives Pillow's pixels exactly."""
    store = FeatureStore.open(tiny_features)
    assert store.video_format == "jpeg"
    cpu = torch.device("cpu")
    rows = np.random.default_rng(1).permutation(store.caption_rows("train"))
    keys = [rows[i : i + 5] for i in range(0, len(rows), 5)]
    decoded = list(prefetched(store.pairs, keys, 0, cpu))
    encoded = list(prefetched(lambda key: store.pairs(key, encoded=True), keys, 2, cpu))
    for (t0, m0, x0), (t1, m1, x1) in zip(decoded, encoded, strict=True):
        assert isinstance(t1, EncodedFrames) and t1.shape == tuple(t0.shape) and len(t1) == len(t0)
        assert torch.equal(on_device(t1, cpu), t0) and torch.equal(m0, m1) and torch.equal(x0, x1)
        assert torch.equal(on_device(t1[1:3], cpu), t0[1:3])  # rows selected as on the array (gradient caching's chunks)


def test_where_frames_are_decoded(tiny_raw_store):
    assert decodes_on_device("device", "jpeg", "train.decode_on")
    assert not any(decodes_on_device("loader", f, "k") for f in ("jpeg", "webp", "raw", "tokens"))
    assert not any(decodes_on_device("device", f, "k") for f in ("raw", "tokens"))  # nothing to decode
    with pytest.raises(ConfigError, match="evaluate.decode_on: device.*JPEG frames only"):
        decodes_on_device("device", "webp", "evaluate.decode_on")
    with pytest.raises(ValueError, match="only JPEG frames travel encoded; these videos are stored as raw"):
        FeatureStore.open(tiny_raw_store[0], tiny_raw_store[1]).video_batch(np.arange(2), encoded=True)


@pytest.mark.parametrize(
    "setting",
    [{"loader_workers": 2, "batch_size": 7}, {"decode_on": "device", "batch_size": 7}],
    ids=["threads", "device-decode"],
)
def test_features_stage_writes_the_same_cache_with_loader_threads_or_device_decoding(
    tmp_path, tiny_frames, tiny_annotations, tiny_prefix_params, tiny_prefix_features, setting, decode_calls
):
    out = tmp_path / "features"
    features.run(_with(tiny_prefix_params, features=setting), tiny_annotations, tiny_frames, out)
    assert bool(decode_calls) == ("decode_on" in setting)  # the path taken
    reference = tiny_prefix_features
    names = sorted(p.name for p in out.glob("*.npy"))
    assert len(names) > 2 and names == sorted(p.name for p in reference.glob("*.npy"))
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_training_is_the_same_with_loader_threads_or_device_decoding(tmp_path, tiny_features, tiny_params, decode_calls):
    """Loader threads change where batches are assembled, and `decode_on: device` where JPEG frames
    are decoded (on the CPU: the same pixels), nothing else: the same losses at every step and the
    same selected weights (validation read ahead and decoded the same way)."""
    outs = {}
    device = {"decode_on": "device"}
    runs = {  # name: (train settings, evaluate settings: train's validation)
        "here": ({}, {}),
        "threads": ({"loader_workers": 2}, {"loader_workers": 2}),
        "device": (device, device),
        "validation-device": ({}, device),
        "chunks": ({"grad_cache_chunk": 3}, {}),  # gradient caching decodes chunk by chunk: against its own path
        "chunks-device": ({"grad_cache_chunk": 3, **device}, device),
    }
    for name, (train_setting, evaluate_setting) in runs.items():
        params = _with(tiny_params, train=train_setting, evaluate=evaluate_setting)
        model, log = tmp_path / f"m-{name}.pt", tmp_path / f"log-{name}.csv"
        decode_calls.clear()
        train.run(params, tiny_features, "synthetic", "mascot", 0, model, log)
        assert bool(decode_calls) == ("device" in name), name  # the path taken
        outs[name] = (steps_path(log).read_text(), log.read_text(), torch.load(model, weights_only=True)["state_dict"])
    comparisons = (("here", "threads"), ("here", "device"), ("here", "validation-device"), ("chunks", "chunks-device"))
    for reference, name in comparisons:
        assert outs[reference][0] == outs[name][0] and outs[reference][1] == outs[name][1], name
        assert outs[reference][2].keys() == outs[name][2].keys()
        assert all(torch.equal(v, outs[name][2][k]) for k, v in outs[reference][2].items()), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_batches_arrive_pinned_and_equal(tiny_features):
    store = FeatureStore.open(tiny_features)
    rows = store.caption_rows("train")
    keys = [rows[i : i + 4] for i in range(0, len(rows), 4)]
    cuda = torch.device("cuda")
    for key, batch in zip(keys, prefetched(store.pairs, keys, 2, cuda), strict=True):
        assert all(t.is_pinned() for t in batch)
        frames = on_device(batch[0], cuda)  # K = L: uint8 frames, converted by the model's patch embedding
        assert frames.dtype == torch.uint8 and torch.equal(frames.cpu(), store.pairs(key)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_jpeg_frames_decode_close_to_pillows_and_to_raw(tiny_features, tiny_raw_store):
    """nvJPEG's inverse DCT is not libjpeg-turbo's: close to Pillow's pixels (mean error below one
    level), not equal; against the raw frames within test_frames' JPEG bounds (PSNR ≥ 38 dB, mean
    error ≤ 2.5 levels). Never run yet (no GPU so far)."""
    store, raw = FeatureStore.open(tiny_features), FeatureStore.open(*tiny_raw_store)
    positions = store.videos("train")[:16]
    pillow, mask = store.video_batch(positions)
    frames = on_device(store.video_batch(positions, encoded=True)[0], torch.device("cuda")).cpu()
    assert frames.dtype == torch.uint8 and frames.shape == pillow.shape
    assert not frames[~mask].any()  # padding frames stay zeros
    assert (frames.int() - pillow.int()).abs().float().mean() < 1.0
    same_videos = pd.Index(raw.index["video_id"]).get_indexer(store.index["video_id"].to_numpy()[positions])
    assert (same_videos >= 0).all() and torch.equal(raw.video_batch(same_videos)[1], mask)
    reference = raw.video_batch(same_videos)[0][mask].int()
    error = (frames[mask].int() - reference).float()
    assert error.abs().mean() <= 2.5 and 10 * torch.log10(255**2 / error.pow(2).mean()) >= 38


def test_train_refuses_device_decoding_of_webp_frames_before_any_work(
    tmp_path, tiny_raw, tiny_annotations, tiny_params, tiny_features, monkeypatch
):
    from mascot import frames as frames_stage

    def no_work(job):
        raise AssertionError("train built its model before refusing the setting")

    monkeypatch.setattr(train, "build", no_work)

    webp = _with(tiny_params, frames={"format": "webp"})
    frames_dir, features_dir = tmp_path / "frames", tmp_path / "features"
    frames_stage.run(webp, tiny_annotations, tiny_raw / "videos", frames_dir)
    features.run(webp, tiny_annotations, frames_dir, features_dir)
    for section in ("train", "evaluate"):  # train's validation decodes by evaluate.decode_on
        params = _with(webp, **{section: {"decode_on": "device"}})
        with pytest.raises(ConfigError, match=f"{section}.decode_on: device.*stored as webp"):
            train.run(
                params, features_dir, "synthetic", "meanP", 0, tmp_path / "m.pt", tmp_path / "log.csv", frames_dir=frames_dir
            )
        assert not (tmp_path / "log.csv").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_decoding_does_not_overwrite_memory_queued_kernels_still_read(tiny_features):
    """torchvision's CUDA decoder writes on a stream of its own that does not wait for the caller's
    (pytorch/vision PR #9606): a block freed while queued kernels still read it could be handed to the
    decoder and overwritten first. EncodedFrames.decode synchronizes before decoding. Modelled on that
    PR's reproduction; never run yet (no GPU so far)."""
    cuda = torch.device("cuda")
    store = FeatureStore.open(tiny_features)
    encoded = store.video_batch(store.videos("train")[:16], encoded=True)[0]
    expected = on_device(encoded, cuda).cpu()
    slow = torch.randn(8192, 8192, device=cuda)
    for _ in range(20):
        ones = torch.ones(expected.numel() // 4 + 1, device=cuda)  # about the decoded batch's bytes
        sums = [(slow @ slow).sum() * 0 + ones.sum() for _ in range(3)]  # read `ones` after long kernels
        del ones
        frames = on_device(encoded, cuda)
        assert all(s.item() == expected.numel() // 4 + 1 for s in sums)
        assert torch.equal(frames.cpu(), expected)
