"""The foreground diagnostic (foreground.py): box geometry and mask shares on known answers, the
boxes' alignment with the stored frames, and what the train stage logs with them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mascot import evaluate, foreground, train
from mascot.annotations import foreground_table
from mascot.checkpoint import load_checkpoint
from mascot.config import MaskConfig
from mascot.datasets import get_dataset
from mascot.datasets.synthetic import bounding_box, draw_video, render_video
from mascot.features import FeatureStore
from mascot.video import resize_center_crop, sample_indices


def test_crop_boxes_follow_the_resize_and_centre_crop():
    # a square frame halves: every coordinate halves
    np.testing.assert_allclose(foreground.crop_boxes(np.array([[32, 32, 64, 48]]), 128, 128, 64), [[16, 16, 32, 24]])
    # a 64 × 128 frame keeps its height and loses 32 columns on each side; a box across the border is clipped
    np.testing.assert_allclose(foreground.crop_boxes(np.array([[20, 0, 40, 16]]), 64, 128, 64), [[0, 0, 8, 16]])
    np.testing.assert_allclose(foreground.crop_boxes(np.array([[0, 0, 10, 10]]), 64, 128, 64), [[0, 0, 0, 10]])  # cut away
    assert np.isnan(foreground.crop_boxes(np.array([[np.nan] * 4]), 64, 128, 64)).all()


def test_patch_cover_known_answers():
    boxes = np.array(
        [
            [16, 16, 32, 24],  # inside patch (1, 1)
            [15, 16, 32, 24],  # one pixel into patch (1, 0) as well
            [16, 16, 32, 32],  # ends exactly on the edges of patch (1, 1): no area in its neighbours
            [0, 0, 8, 16],  # a box clipped by the left border
            [0, 0, 0, 10],  # no area left after clipping: no patch
            [np.nan] * 4,  # no foreground in the frame
            [0, 0, 64, 64],  # the whole frame
        ]
    )
    cover = foreground.patch_cover(boxes, 64, 4)
    assert [np.flatnonzero(row).tolist() for row in cover] == [[5], [4, 5], [5], [0], [], [], list(range(16))]


def test_mask_shares_known_answers():
    fg = np.zeros((3, 16), bool)
    fg[0, [0, 1, 2, 3]] = True
    fg[1, [5]] = True  # frame 2 has no foreground: left out of every mean
    masked = np.array([[0, 1, 4, 5], [5, 6, 7, 8], [0, 1, 2, 3]])
    shares = foreground.mask_shares(masked, fg)
    np.testing.assert_allclose(shares["share"], [0.5, 0.25])
    np.testing.assert_allclose(shares["chance"], [4 / 16, 1 / 16])
    np.testing.assert_allclose(shares["best"], [1.0, 0.25])


def test_bounding_box_of_a_mask():
    mask = np.zeros((6, 8), bool)
    assert bounding_box(mask) is None
    mask[2:4, 3:7] = True
    assert bounding_box(mask) == [3, 2, 7, 4]  # x0, y0, x1, y1 with x1, y1 exclusive


@pytest.fixture(scope="module")
def fg_table(tiny_raw, tiny_params):
    return get_dataset("synthetic", tiny_params.dataset("synthetic")).foreground(tiny_raw)


def test_the_generator_writes_a_box_for_every_frame(fg_table, tiny_raw):
    meta = json.loads((tiny_raw / "annotations.json").read_text())
    counts = fg_table.groupby("video_id")["frame"].count()
    assert {v["video_id"]: v["num_frames"] for v in meta["videos"]} == counts.to_dict()
    assert (fg_table.groupby("video_id")["frames"].first() == counts).all()
    assert fg_table["x0"].notna().mean() > 0.9  # the shape is in (nearly) every frame
    assert list(fg_table.columns) == list(foreground_table([]).columns)


def test_real_datasets_have_no_boxes(tmp_path, tiny_params):
    for name in ("msrvtt", "lsmdc", "activitynet", "didemo"):
        assert get_dataset(name, tiny_params.dataset(name)).foreground(tmp_path).empty


def test_the_decoder_sees_as_many_frames_as_the_boxes_describe(fg_table, tiny_raw):
    """frame_patches samples the boxes as the frames stage samples the decoded video, over the whole
    video: that holds only while the decoder finds the generator's frame count in every file."""
    import decord

    frames = fg_table.groupby("video_id")["frames"].first()
    for video_id, count in frames.items():
        assert len(decord.VideoReader(str(tiny_raw / "videos" / f"{video_id}.mp4"))) == count, video_id


def test_boxes_land_on_the_shape_in_the_stored_frames(fg_table, tiny_features, tiny_params):
    """Every patch that holds a pixel of the shape in a frame the frames stage stored (the shape's
    masks re-rendered by the generator, sampled and cropped by the frames stage's own functions) is a
    foreground patch of its box."""
    store = FeatureStore.open(tiny_features)
    cfg = tiny_params.dataset("synthetic")
    size, grid = 64, 4
    positions = store.videos("val")
    patches = foreground.frame_patches(fg_table, store, positions, size, grid)
    checked = 0
    for i, position in enumerate(positions):
        index = int(store.index["video_id"].iloc[position].removeprefix("synth"))
        rng, attrs, n_frames = draw_video(cfg, index)
        _, masks = render_video(rng, cfg, attrs, n_frames)
        picks = sample_indices(n_frames, cfg.fps, None, None, store.meta["num_frames"])
        shape = resize_center_crop(np.repeat(masks[picks, :, :, None].astype(np.uint8) * 255, 3, axis=3), size)[..., 0] > 127
        for t in range(len(picks)):
            holds = shape[t].reshape(grid, size // grid, grid, size // grid).any(axis=(1, 3)).reshape(-1)
            assert not (holds & ~patches[i, t]).any(), f"{store.index['video_id'].iloc[position]} frame {t}"
            checked += int(holds.any())
        assert not patches[i, len(picks) :].any()  # padding has no foreground
    assert checked > 0


def test_boxes_of_other_frames_are_refused(fg_table, tiny_features):
    store = FeatureStore.open(tiny_features)
    position = store.videos("val")[:1]
    video_id = store.index["video_id"].iloc[position[0]]
    shorter = fg_table[~((fg_table["video_id"] == video_id) & (fg_table["frame"] == 0))]
    with pytest.raises(Exception, match=f"video {video_id}.*do not belong to these frames"):
        foreground.frame_patches(shorter, store, position, 64, 4)


def test_diagnose_shares_and_the_callers_random_state(fg_table, tiny_features, tiny_params):
    from mascot.clip_model import create_clip
    from mascot.model import RetrievalModel

    store = FeatureStore.open(tiny_features)
    variant = tiny_params.variant("mascot")
    model = RetrievalModel(create_clip(tiny_params.clip), 4, variant, store.meta["num_frames"])
    for score in ("cls_attn", "random", "text_sim"):
        torch.manual_seed(3)
        expected = torch.rand(3)
        torch.manual_seed(3)
        shares = foreground.diagnose(model, MaskConfig(score=score), store, fg_table, "val", tiny_params.evaluate)
        assert torch.equal(torch.rand(3), expected)  # the training stream is untouched
        assert set(shares) == set(foreground.SHARES)
        assert 0 < shares["fg_chance"] <= shares["fg_best"] <= 100
        assert 0 <= shares["fg_high"] <= shares["fg_best"] and 0 <= shares["fg_low"] <= shares["fg_best"]
    assert foreground.diagnose(model, variant.mask, store, fg_table.iloc[:0], "val", tiny_params.evaluate) is None


def test_diagnose_decodes_as_validation_does(fg_table, tiny_features, tiny_params, decode_calls):
    from mascot.clip_model import create_clip
    from mascot.model import RetrievalModel

    store = FeatureStore.open(tiny_features)
    variant = tiny_params.variant("mascot")
    model = RetrievalModel(create_clip(tiny_params.clip), 4, variant, store.meta["num_frames"])
    pillow = foreground.diagnose(model, variant.mask, store, fg_table, "val", tiny_params.evaluate)
    assert not decode_calls
    on_device = tiny_params.evaluate.model_copy(update={"decode_on": "device"})
    assert foreground.diagnose(model, variant.mask, store, fg_table, "val", on_device) == pillow and decode_calls


def test_the_diagnostic_draws_the_masks_training_draws(tiny_features, tiny_params):
    from mascot.clip_model import create_clip
    from mascot.model import RetrievalModel
    from mascot.objective import Objective

    store = FeatureStore.open(tiny_features)
    rows = store.caption_rows("val")[:4]
    frames, frame_mask, text = store.pairs(rows)
    for score in ("cls_attn", "text_sim", "random"):
        variant = tiny_params.variant("mascot").model_copy(update={"mask": MaskConfig(score=score)})
        objective = Objective(
            RetrievalModel(create_clip(tiny_params.clip), 4, variant, store.meta["num_frames"]), variant
        ).train()
        torch.manual_seed(0)
        trained = objective.encode(frames, frame_mask, text).masks
        torch.manual_seed(0)
        diagnosed = foreground.video_masks(objective.model, variant.mask, frames, frame_mask, text)
        for name in ("high", "low"):
            assert torch.equal(trained.view(name).masked, diagnosed.view(name).masked), (score, name)


def test_train_logs_where_the_masks_fall(tmp_path, fg_table, tiny_features, tiny_params):
    """A masked run logs the shares at epoch 0 (the starting model) and every epoch, records them in
    the checkpoint, and the evaluate stage passes them on to the tables; a base run logs none."""
    path = tmp_path / "foreground.parquet"
    fg_table.to_parquet(path, index=False)
    for variant in ("mascot", "meanP"):
        model_out, log_out = tmp_path / f"{variant}.pt", tmp_path / f"{variant}.csv"
        train.run(tiny_params, tiny_features, "synthetic", variant, 0, model_out, log_out, foreground_path=path)
        rows = list(csv.DictReader(log_out.open()))
        assert [r["epoch"] for r in rows] == ["0", "1"]
        _, meta = load_checkpoint(model_out)
        if variant == "meanP":
            assert all(r["val_fg_high"] == "" for r in rows) and meta["foreground"] is None
            continue
        assert all(0 <= float(r["val_fg_high"]) <= 100 for r in rows)
        assert meta["foreground"]["start"]["fg_high"] == pytest.approx(float(rows[0]["val_fg_high"]))
        assert meta["foreground"]["selected"]["fg_chance"] == pytest.approx(float(rows[1]["val_fg_chance"]))
        assert meta["selected_isc"] == pytest.approx(float(rows[1]["isc"]))
        evaluate.run(tiny_params, tiny_features, model_out, tmp_path / "metrics.json")
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["foreground"] == meta["foreground"] and metrics["selected_isc"] == meta["selected_isc"]


def test_mechanism_table_means_over_seeds(tmp_path, tiny_params):
    from mascot import tables

    folder = tmp_path / "metrics" / "synthetic"
    folder.mkdir(parents=True)
    values = {"t2v": {m: 1.0 for m in ("R1", "R5", "R10", "MdR", "MnR")}} | {
        "v2t": {m: 1.0 for m in ("R1", "R5", "R10", "MdR", "MnR")}
    }
    for variant, seed, high in (("mascot", 0, 40.0), ("mascot", 1, 50.0), ("meanP", 0, None)):
        record = {"start": {"fg_high": 30.0}, "selected": {"fg_high": high, "fg_low": 10.0, "fg_chance": 25.0, "fg_best": 90.0}}
        data = values | {"dataset": "synthetic", "variant_name": variant, "seed": seed, "num_videos": 6, "num_captions": 12}
        data |= {"foreground": record if high else None, "selected_isc": 0.5 if high else None}
        (folder / f"{variant}-seed{seed}.json").write_text(json.dumps(data))
    params = tiny_params.model_copy(update={"seeds": [0, 1]})
    tables.run(params, "synthetic", [tmp_path / "metrics" / "synthetic"], tmp_path / "out")
    md = (tmp_path / "out" / "mechanism.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| MASCOT")]
    assert rows == ["| MASCOT (meanP) | 2 | 30.0 ± 0.0 | 45.0 ± 7.1 | – | 10.0 ± 0.0 | 25.0 ± 0.0 | 90.0 ± 0.0 | 0.500 ± 0.000 |"]
    assert "baseline" not in md  # no record, no row
    frame = pd.read_csv(tmp_path / "out" / "mechanism.csv")
    assert frame.loc[frame["column"] == "fg_high", "mean"].tolist() == [45.0]
