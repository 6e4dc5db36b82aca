"""The data path: batches read ahead by loader threads are the batches of the in-process path."""

import numpy as np
import pytest
import torch

from mascot import features, train
from mascot.devices import on_device
from mascot.features import FeatureStore
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


def test_features_stage_writes_the_same_cache_with_loader_threads(
    tmp_path, tiny_frames, tiny_annotations, tiny_prefix_params, tiny_prefix_features
):
    out = tmp_path / "features"
    features.run(_with(tiny_prefix_params, features={"loader_workers": 2, "batch_size": 7}), tiny_annotations, tiny_frames, out)
    reference = tiny_prefix_features
    names = sorted(p.name for p in out.glob("*.npy"))
    assert len(names) > 2 and names == sorted(p.name for p in reference.glob("*.npy"))
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_training_is_the_same_with_loader_threads(tmp_path, tiny_features, tiny_params):
    """Loader threads change where batches are assembled, nothing else: the same losses at every
    step and the same selected weights (validation read ahead too)."""
    outs = {}
    for workers in (0, 2):
        params = _with(tiny_params, train={"loader_workers": workers}, evaluate={"loader_workers": workers})
        model, log = tmp_path / f"m{workers}.pt", tmp_path / f"log{workers}.csv"
        train.run(params, tiny_features, "synthetic", "mascot", 0, model, log)
        outs[workers] = (steps_path(log).read_text(), log.read_text(), torch.load(model, weights_only=True)["state_dict"])
    assert outs[0][0] == outs[2][0] and outs[0][1] == outs[2][1]
    assert outs[0][2].keys() == outs[2][2].keys()
    assert all(torch.equal(v, outs[2][2][k]) for k, v in outs[0][2].items())


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
