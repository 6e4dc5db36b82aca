"""The features stage: device selection, batching across videos, progress without a terminal."""

from __future__ import annotations

import filecmp
import logging

import numpy as np
import pytest
import torch

from mascot import features, progress
from mascot.devices import select_device
from mascot.errors import ConfigError


@pytest.mark.parametrize(
    ("valid", "batch", "groups"),
    [
        ([4, 4, 4], 8, [[0, 1], [2]]),
        ([4, 4, 4], 12, [[0, 1, 2]]),
        ([9, 2, 3], 8, [[0], [1, 2]]),  # a video longer than a batch is a group of its own
        ([3, 9, 1], 8, [[0], [1], [2]]),
        ([5], 1, [[0]]),
        ([], 8, []),
    ],
)
def test_video_groups_fill_a_batch_with_consecutive_videos(valid, batch, groups):
    assert [g.tolist() for g in features.video_groups(np.array(valid, dtype=int), batch)] == groups


def test_a_missing_gpu_names_the_stages_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"`features.device: cuda` but no CUDA device is visible"):
        select_device("cuda", "features.device")
    assert select_device("auto", "features.device") == torch.device("cpu")


def _run(params, annotations, frames_dir, out, batch_size: int, device: str = "auto"):
    cfg = params.features.model_copy(update={"batch_size": batch_size, "device": device})
    features.run(params.model_copy(update={"features": cfg}), annotations, frames_dir, out)
    return sorted(p.name for p in out.iterdir())


def test_batching_across_videos_caches_what_one_video_at_a_time_does(
    tmp_path, tiny_frames, tiny_annotations, tiny_prefix_params, tiny_prefix_features, caplog, monkeypatch
):
    """K < L: tiny_prefix_features encodes several videos per forward pass (batch 64 frames); batch 1 encodes one
    frame at a time: the cache is the same, byte for byte, and the stage says where it computed."""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="mascot"):
        names = _run(tiny_prefix_params, tiny_annotations, tiny_frames, tmp_path / "features", batch_size=1)
    assert names == sorted(p.name for p in tiny_prefix_features.iterdir())
    for name in names:
        assert filecmp.cmp(tmp_path / "features" / name, tiny_prefix_features / name, shallow=False), name
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("features: mascot-tiny, weights random (clip.pretrained: null), K = 2, on cpu (") and m.endswith("fp32")
        for m in messages
    )
    assert any(m.startswith("features: ") and " frame (" in m and "frame/s" in m for m in messages)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_features_on_the_gpu_match_the_cpu(tmp_path, tiny_frames, tiny_annotations, tiny_prefix_params, tiny_prefix_features):
    """The GPU path is the CPU path on another device: the fp16 cache agrees within bf16 autocast's precision."""
    _run(tiny_prefix_params, tiny_annotations, tiny_frames, tmp_path / "features", batch_size=64, device="cuda")
    shards = list((tmp_path / "features").glob("vision-*.npy"))
    assert shards
    for shard in shards:
        gpu, cpu = np.load(shard).astype(np.float32), np.load(tiny_prefix_features / shard.name).astype(np.float32)
        np.testing.assert_allclose(gpu, cpu, atol=0.05, rtol=0.02)
