import csv
import json

import numpy as np
import pytest
import torch

from mascot import evaluate, train
from mascot.checkpoint import load_checkpoint
from mascot.config import EvaluateConfig
from mascot.errors import MascotError
from mascot.features import FeatureStore
from mascot.train_log import steps_path


def test_feature_cache_layout(tiny_prefix_features, tiny_prefix_params):
    """K < L: the features stage caches the frozen blocks' tokens, fp16."""
    store = FeatureStore.open(tiny_prefix_features)
    assert store.meta["trainable_blocks"] == 2 and store.meta["vision"] == "tokens"
    tokens, mask = store.video_batch(store.videos("test"))
    assert tokens.shape == (6, tiny_prefix_params.frames.num_frames, 17, 128) and tokens.dtype == torch.float16  # as stored
    assert (mask.sum(1) >= 1).all()
    assert not tokens[~mask].any()  # padded frames were never encoded
    assert store.shards[store.index["shard"][0]].dtype == np.float16
    assert store.text_tokens.shape == (len(store.captions), tiny_prefix_params.features.max_words)


def test_no_token_cache_at_k_equal_l(tiny_features, tiny_frames, tiny_params):
    """K = L: nothing of the frames is cached; the store hands out the frames themselves (uint8)."""
    from mascot.frames import open_frames

    assert tiny_params.train.trainable_blocks == 4  # L of mascot-tiny
    assert not list(tiny_features.glob("vision-*"))
    store = FeatureStore.open(tiny_features)
    assert store.meta["vision"] == "frames"
    frames, mask = store.video_batch(store.videos("test"))
    assert frames.shape == (6, tiny_params.frames.num_frames, 64, 64, 3) and frames.dtype == torch.uint8
    index, shards = open_frames(tiny_frames)
    row = index.iloc[store.videos("test")[0]]
    assert np.array_equal(frames[0].numpy(), shards[row["shard"]][row["row"]])
    assert store.text_tokens.shape == (len(store.captions), tiny_params.features.max_words)


def test_store_refuses_another_frames_folder(tmp_path, tiny_features, tiny_frames):
    import shutil

    other = tmp_path / "frames"
    shutil.copytree(tiny_frames, other)
    index = __import__("pandas").read_parquet(other / "index.parquet")
    index.iloc[::-1].to_parquet(other / "index.parquet", index=False)  # the same files, another order
    with pytest.raises(MascotError, match="another frames folder"):
        FeatureStore.open(tiny_features, other)
    shutil.copy(tiny_frames / "index.parquet", other / "index.parquet")
    FeatureStore.open(tiny_features, other)  # the same folder again
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps(meta | {"quality": meta["quality"] - 10}))  # the same videos at another quality
    with pytest.raises(MascotError, match="another frames folder"):
        FeatureStore.open(tiny_features, other)
    with pytest.raises(MascotError, match="has no frames index"):
        FeatureStore.open(tiny_features, tmp_path / "nowhere")


def test_raw_frames_reach_the_model_bit_for_bit(tiny_raw_store):
    """frames.format: raw at K = L: the batches are the frames stage's uint8 arrays as written (np.load),
    with and without loader threads."""
    from mascot.loader import prefetched

    features_dir, frames_dir = tiny_raw_store
    store = FeatureStore.open(features_dir, frames_dir)
    rows = store.caption_rows("train")
    keys = [rows[i : i + 5] for i in range(0, len(rows), 5)]
    here = prefetched(store.pairs, keys, 0, torch.device("cpu"))
    ahead = prefetched(store.pairs, keys, 2, torch.device("cpu"))
    for key, (frames, mask, _), (frames2, mask2, _) in zip(keys, here, ahead, strict=True):
        videos = store.index.iloc[store.captions["video_index"].to_numpy()[key]]
        stored = np.stack([np.load(frames_dir / s)[r] for s, r in zip(videos["shard"], videos["row"], strict=True)])
        assert frames.dtype == torch.uint8 and np.array_equal(frames.numpy(), stored)
        assert torch.equal(frames, frames2) and torch.equal(mask, mask2)


def test_evaluate_refuses_features_of_another_k(tmp_path, tiny_features, tiny_prefix_features, tiny_params):
    model_out = tmp_path / "m.pt"
    params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"max_steps": 1})})
    train.run(params, tiny_features, "synthetic", "meanP", 0, model_out, tmp_path / "log.csv")
    with pytest.raises(MascotError, match="K=4.*K=2"):
        evaluate.run(params, tiny_prefix_features, model_out, tmp_path / "metrics.json")
    ckpt = torch.load(model_out, weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("stem.")}  # an older revision's
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(MascotError, match="older revision"):
        load_checkpoint(tmp_path / "old.pt")


@pytest.mark.parametrize("variant", ["meanP", "mascot"])
def test_training_from_frames_equals_the_token_cache(tmp_path, tiny_features, tiny_token_features, tiny_params, variant):
    """At K = L the model embeds the frames' patches itself; a run on the fp16 token cache of the same
    patch embedding gives the same run (on the CPU, fp32): every logged step's loss within 2e-3 (fp16
    rounds each cached value by up to 2^-11 relative; measured at most 4e-4 over the tiny run), the
    same selected epoch of two, test T→V metrics within one caption's R@k step (100/12) and V→T
    within one video's (100/6)."""
    cpu = {"device": "cpu"}
    params = tiny_params.model_copy(
        update={
            "train": tiny_params.train.model_copy(update={**cpu, "epochs": 2}),
            "evaluate": tiny_params.evaluate.model_copy(update=cpu),
        }
    )
    logs, metrics = {}, {}
    for name, features_dir in (("frames", tiny_features), ("tokens", tiny_token_features)):
        model_out, log_out = tmp_path / f"{name}.pt", tmp_path / f"{name}.csv"
        train.run(params, features_dir, "synthetic", variant, 0, model_out, log_out, frames_dir=tiny_features.parent / "frames")
        logs[name] = list(csv.DictReader(steps_path(log_out).open()))
        evaluate.run(params, features_dir, model_out, tmp_path / f"{name}.json")
        metrics[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert len(logs["frames"]) == len(logs["tokens"]) > 0
    gaps = [abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(logs["frames"], logs["tokens"], strict=True)]
    assert max(gaps) < 2e-3
    assert metrics["frames"]["best_epoch"] == metrics["tokens"]["best_epoch"]
    for d, step in (("t2v", 100 / 12), ("v2t", 100 / 6)):
        for k in ("R1", "R5", "R10"):
            assert abs(metrics["frames"][d][k] - metrics["tokens"][d][k]) <= step + 1e-6


def test_train_then_evaluate(tmp_path, tiny_features, tiny_params):
    model_out, log_out, metrics_out = tmp_path / "m.pt", tmp_path / "log.csv", tmp_path / "metrics.json"
    params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"epochs": 2})})
    train.run(params, tiny_features, "synthetic", "seqTransf", 0, model_out, log_out)
    rows = list(csv.DictReader(log_out.open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # epoch 0: the model before any step
    assert rows[0]["loss"] == "" and rows[0]["step"] == "0"
    rows_trained = rows[1:]
    steps = list(csv.DictReader((tmp_path / "log.steps.csv").open()))
    assert [int(r["step"]) for r in steps] == list(range(1, int(rows[-1]["step"]) + 1))
    assert (tmp_path / "log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the training-curve image
    assert all(np.isfinite(float(r["loss"])) for r in rows_trained)
    model, meta = load_checkpoint(model_out)
    best = max(rows_trained, key=lambda r: float(r["val_score"]))  # epoch 0 is never selected
    assert meta["best_epoch"] == int(best["epoch"])

    evaluate.run(params, tiny_features, model_out, metrics_out)
    result = json.loads(metrics_out.read_text())
    assert result["num_videos"] == 6 and result["num_captions"] == 12
    for direction in ("t2v", "v2t"):
        assert set(result[direction]) == {"R1", "R5", "R10", "MdR", "MnR"}
        assert 0 <= result[direction]["R1"] <= result[direction]["R5"] <= result[direction]["R10"] <= 100
    # the checkpoint is self-describing: weights-only loading rebuilds the same model
    ckpt = torch.load(model_out, weights_only=True)
    assert ckpt["meta"]["variant"]["temporal"] == "seqTransf"


def test_training_learns_a_small_set(tmp_path, tiny_features, tiny_params):
    """On a handful of pairs the model must be able to fit its training data."""
    params = tiny_params.model_copy(
        update={"train": tiny_params.train.model_copy(update={"epochs": 25, "batch_size": 8, "lr": 2e-3, "warmup_fraction": 0.0})}
    )
    model_out = tmp_path / "m.pt"
    train.run(params, tiny_features, "synthetic", "meanP", 0, model_out, tmp_path / "log.csv")
    model, _ = load_checkpoint(model_out)
    store = FeatureStore.open(tiny_features)
    result = evaluate.evaluate_split(model, store, "train", EvaluateConfig(batch_size=64))
    assert result["t2v"]["R5"] > 3 * 100 * 5 / 16  # far above chance (5 of 16 videos)


def test_features_for_another_k_are_refused(tmp_path, tiny_features, tiny_params):
    params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"trainable_blocks": 1})})
    with pytest.raises(MascotError, match=f"K={tiny_params.train.trainable_blocks} trainable"):
        train.run(params, tiny_features, "synthetic", "meanP", 0, tmp_path / "m.pt", tmp_path / "l.csv")
    assert not (tmp_path / "m.pt").exists()


def test_cached_tokens_continue_the_same_tower(tiny_prefix_features, tiny_frames, tiny_prefix_params):
    """The token cache (K < L) is checked against open_clip: for every video of every split, the stage's fp16
    tokens (its normalisation, its code) run through the trained top give encode_image of the same
    frames. Tolerance: fp16 rounds each cached value to 2^-11 relative; through the tower that stays
    below 1e-2 absolute on the unnormalised embedding and 1e-4 off a cosine of 1 (measured ~1e-3, ~1e-6)."""
    from mascot.clip_model import VisionTop, create_clip, normalization
    from mascot.frames import open_frames

    clip = create_clip(tiny_prefix_params.clip)
    store = FeatureStore.open(tiny_prefix_features)
    index, shards = open_frames(tiny_frames)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(clip))
    top = VisionTop(clip.visual, tiny_prefix_params.train.trainable_blocks)
    assert set(index["split"]) == {"train", "val", "test"}
    for position, row in enumerate(index.itertuples()):
        frames = torch.from_numpy(np.array(shards[row.shard][row.row, : row.num_valid])).permute(0, 3, 1, 2).float() / 255
        tokens, _ = store.video_batch(np.array([position]))
        with torch.no_grad():
            ours = top(tokens[0, : row.num_valid].float())
            ref = clip.encode_image((frames - mean) / std)
        torch.testing.assert_close(ours, ref, atol=1e-2, rtol=0)
        assert torch.nn.functional.cosine_similarity(ours, ref).min() > 1 - 1e-4


@pytest.mark.parametrize("variant", ["seqTransf", "random_masks"])
def test_training_is_deterministic(tmp_path, tiny_features, tiny_params, variant):
    for name in ("a", "b"):
        train.run(tiny_params, tiny_features, "synthetic", variant, 3, tmp_path / f"{name}.pt", tmp_path / f"{name}.csv")
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a.csv").read_text().splitlines()[1].split(",")[:3] == (tmp_path / "b.csv").read_text().splitlines()[
        1
    ].split(",")[:3]


def test_mascot_trains_logs_its_terms_and_saves_only_the_inference_model(tmp_path, tiny_features, tiny_params):
    model_out, log_out = tmp_path / "m.pt", tmp_path / "log.csv"
    train.run(tiny_params, tiny_features, "synthetic", "mascot", 0, model_out, log_out)
    start, row = list(csv.DictReader(log_out.open()))[:2]  # epoch 0 (before training) has no loss
    assert all(start[k] == "" for k in ("loss", "nce", "nce_masked", "kl", "isc"))
    assert all(np.isfinite(float(row[k])) for k in ("loss", "nce", "nce_masked", "kl", "isc"))
    ckpt = torch.load(model_out, weights_only=True)
    assert not any("decoder" in k for k in ckpt["state_dict"])
    assert ckpt["meta"]["variant"]["mask"]["score"] == "cls_attn"
    model, meta = load_checkpoint(model_out)  # rebuilt as the base model: inference is unchanged
    assert meta["variant_name"] == "mascot" and not model.training
    baseline_log = tmp_path / "base.csv"
    train.run(tiny_params, tiny_features, "synthetic", "meanP", 0, tmp_path / "b.pt", baseline_log)
    base_row = next(csv.DictReader(baseline_log.open()))
    assert base_row["isc"] == "" and base_row["kl"] == ""  # terms a variant does not use stay empty


@pytest.mark.parametrize("variant", ["meanP", "random_masks"])
def test_an_interrupted_run_resumes_exactly(tmp_path, tiny_features, tiny_params, monkeypatch, variant):
    """Interrupted after 5 steps (state saved every 2) and rerun: same weights, same log as one run."""
    from mascot.objective import Objective

    params = tiny_params.model_copy(
        update={"train": tiny_params.train.model_copy(update={"epochs": 3, "batch_size": 4, "checkpoint_every": 2})}
    )
    train.run(params, tiny_features, "synthetic", variant, 1, tmp_path / "ref.pt", tmp_path / "ref.csv", tmp_path / "ref-state")
    assert not (tmp_path / "ref-state").exists()  # cleared after success

    original, calls = Objective.step, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Objective, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.run(params, tiny_features, "synthetic", variant, 1, tmp_path / "m.pt", tmp_path / "m.csv", tmp_path / "state")
    assert (tmp_path / "state" / "state.pt").is_file() and not (tmp_path / "m.pt").exists()
    torch.load(tmp_path / "state" / "state.pt", weights_only=True)  # loadable without unpickling objects
    monkeypatch.setattr(Objective, "step", original)

    train.run(params, tiny_features, "synthetic", variant, 1, tmp_path / "m.pt", tmp_path / "m.csv", tmp_path / "state")
    ref, got = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("ref", "m"))
    assert all(torch.equal(ref["state_dict"][k], got["state_dict"][k]) for k in ref["state_dict"])
    for log in ("csv", "steps.csv", "png"):
        assert (tmp_path / f"m.{log}").read_bytes() == (tmp_path / f"ref.{log}").read_bytes()
    assert ref["meta"] == got["meta"]


def test_a_state_from_other_settings_is_not_resumed(tmp_path, tiny_features, tiny_params):
    from mascot import resume

    state = tmp_path / "state"
    resume.save_state(state, {"fingerprint": "something else", "progress": {}})
    train.run(tiny_params, tiny_features, "synthetic", "meanP", 0, tmp_path / "m.pt", tmp_path / "m.csv", state)
    train.run(tiny_params, tiny_features, "synthetic", "meanP", 0, tmp_path / "r.pt", tmp_path / "r.csv")
    assert (tmp_path / "m.csv").read_text() == (tmp_path / "r.csv").read_text()


def test_a_non_finite_loss_stops_with_a_clear_error(tmp_path, tiny_features, tiny_params, monkeypatch):
    from mascot.objective import Objective

    original = Objective.step

    def diverged(self, *args, **kwargs):
        step = original(self, *args, **kwargs)
        step.terms["loss"] = step.terms["loss"] * float("nan")
        return step

    monkeypatch.setattr(Objective, "step", diverged)
    with pytest.raises(MascotError, match=r"loss became nan at step 0; lower train.lr"):
        train.run(tiny_params, tiny_features, "synthetic", "meanP", 0, tmp_path / "m.pt", tmp_path / "m.csv")
    assert not (tmp_path / "m.pt").exists()


def test_without_a_terminal_training_logs_progress_device_and_the_random_weights_warning(
    tmp_path, tiny_features, tiny_params, caplog, monkeypatch
):
    import logging

    from mascot import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # every step (the default is every 30 s)
    cfg = tiny_params.train.model_copy(update={"clip_lr_scale": 1e-3})
    params = tiny_params.model_copy(update={"train": cfg})
    with caplog.at_level(logging.INFO, logger="mascot"):
        train.run(params, tiny_features, "synthetic", "meanP", 0, tmp_path / "m.pt", tmp_path / "log.csv")
        evaluate.run(params, tiny_features, tmp_path / "m.pt", tmp_path / "metrics.json")
    messages = [r.getMessage() for r in caplog.records]
    steps = [m for m in messages if m.startswith("train synthetic/meanP epoch 1: ")]
    assert len(steps) == 4 and steps[0].startswith("train synthetic/meanP epoch 1: 1/4 step (25%)") and "loss " in steps[0]
    assert any(m.startswith("train synthetic/meanP seed 0 on cpu (") and m.endswith("fp32") for m in messages)
    assert any(m.startswith("evaluate ") and " on cpu (" in m for m in messages)
    assert any(m.startswith("embedding the test videos: 6/6 video") for m in messages)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("mascot")]
    assert "clip.pretrained is null" in warning.getMessage() and "train.clip_lr_scale: 1.0" in warning.getMessage()


@pytest.mark.parametrize(("pretrained", "scale", "warns"), [(None, 1e-3, True), (None, 1.0, False), ("openai", 1e-3, False)])
def test_random_weights_warning_only_when_they_would_barely_train(tiny_params, caplog, pretrained, scale, warns):
    params = tiny_params.model_copy(
        update={
            "clip": tiny_params.clip.model_copy(update={"pretrained": pretrained}),
            "train": tiny_params.train.model_copy(update={"clip_lr_scale": scale}),
        }
    )
    train.warn_random_weights_at_low_lr(params)
    assert any("clip.pretrained is null" in r.getMessage() for r in caplog.records) == warns


@pytest.mark.parametrize(
    "variants, ablation, key",
    [
        (["mascot"], ["meanP"], "variants"),
        (["meanP"], ["mascot"], "ablation.variants"),
        (["meanP"], ["seqTransf"], "train --variant"),
    ],
)
def test_a_masked_variant_at_k_below_l_names_the_key_that_lists_it(variants, ablation, key):
    """The train stage's K = L error names where its variant was listed (dvc.yaml runs the ablation rows too)."""
    from types import SimpleNamespace

    from mascot.config import parse_params
    from mascot.errors import ConfigError

    from .conftest import tiny_params_dict

    raw = tiny_params_dict()
    raw["variants"], raw["ablation"]["variants"], raw["train"]["trainable_blocks"] = variants, ablation, 2
    raw["figures"].update(baseline=variants[0], masked=variants[0])  # the figures show runs of `variants`
    params = parse_params(raw)
    store = SimpleNamespace(meta={"trainable_blocks": 2, "model": params.clip.model})
    with pytest.raises(
        ConfigError, match=rf"^`{key}` lists `mascot`, which mask patches.*remove the masked variants from `{key}`"
    ):
        train.check_inputs(params, "features", store, "mascot", params.variant("mascot"))


def test_gradient_caching_trains_like_the_one_graph_step(tmp_path, tiny_features, tiny_params):
    """The train stage with train.grad_cache_chunk (3 pairs of a batch of 8) logs the step losses
    of the plain run (the same data order; gradients equal up to float rounding)."""
    import csv

    logs = {}
    for chunk in (0, 3):
        params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"grad_cache_chunk": chunk})})
        log = tmp_path / f"chunk{chunk}.csv"
        train.run(params, tiny_features, "synthetic", "meanP", 0, tmp_path / f"chunk{chunk}.pt", log)
        logs[chunk] = [float(row["loss"]) for row in csv.DictReader(steps_path(log).open())]
    assert len(logs[0]) == 4
    assert logs[3] == pytest.approx(logs[0], rel=1e-4)


def test_smoke_caps_limit_steps_and_evaluated_videos(tmp_path, tiny_features, tiny_params):
    """train.max_steps and evaluate.max_videos (smoke runs of a full-size dataset): at most N steps an
    epoch; evaluation over the first N videos of the split and exactly their captions."""
    params = tiny_params.model_copy(
        update={
            "train": tiny_params.train.model_copy(update={"epochs": 2, "batch_size": 4, "max_steps": 1}),
            "evaluate": tiny_params.evaluate.model_copy(update={"max_videos": 3}),
        }
    )
    model_out, log_out = tmp_path / "m.pt", tmp_path / "log.csv"
    train.run(params, tiny_features, "synthetic", "meanP", 0, model_out, log_out)
    assert [int(r["step"]) for r in csv.DictReader(steps_path(log_out).open())] == [1, 2]  # 16 videos / 4 would be 4 an epoch
    evaluate.run(params, tiny_features, model_out, tmp_path / "metrics.json")
    result = json.loads((tmp_path / "metrics.json").read_text())
    store = FeatureStore.open(tiny_features)
    first = store.videos("test")[:3]
    assert result["num_videos"] == 3
    assert result["num_captions"] == int(np.isin(store.captions["video_index"], first).sum()) < len(store.caption_rows("test"))
