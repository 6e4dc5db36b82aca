"""`python -m mascot search`: a model that has learned a set of videos finds each from its caption."""

import numpy as np
import pytest
import torch

from mascot import search
from mascot.checkpoint import save_checkpoint
from mascot.clip_model import create_clip
from mascot.config import TrainConfig
from mascot.errors import MascotError
from mascot.features import FeatureStore
from mascot.model import RetrievalModel
from mascot.objective import Objective
from mascot.train import optimizer_for


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_features, tiny_params):
    """A meanP model trained on every pair of the tiny training split until it ranks them all right;
    the checkpoint is written as the train stage writes it."""
    store = FeatureStore.open(tiny_features)
    rows = store.caption_rows("train")
    tokens, mask, text = store.pairs(rows)
    variant = tiny_params.variant("meanP")
    torch.manual_seed(0)
    model = RetrievalModel(create_clip(tiny_params.clip), tiny_params.train.trainable_blocks, variant, tokens.shape[1])
    objective = Objective(model, variant).train()
    optimizer = optimizer_for(objective, TrainConfig(lr=2e-3, clip_lr_scale=1.0))
    unique = np.unique(store.captions["video_index"].to_numpy()[rows], return_index=True)[1]  # one pair per video
    for _ in range(80):
        loss = objective(tokens[unique], mask[unique], text[unique])["loss"]  # uint8 frames (K = L)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    meta = {
        "dataset": "synthetic",
        "variant_name": "meanP",
        "variant": variant.model_dump(),
        "seed": 0,
        "model": tiny_params.clip.model,
        "pretrained": None,
        "trainable_blocks": tiny_params.train.trainable_blocks,
        "num_frames": tokens.shape[1],
        "logit_scale_max": tiny_params.train.logit_scale_max,
        "selection_metric": "rsum",
        "best_epoch": 1,
        "best_val_score": 0.0,
    }
    path = tmp_path_factory.mktemp("search") / "model.pt"
    save_checkpoint(model.eval(), meta, path)
    return path, store.captions.iloc[rows[unique]]


def test_search_finds_each_learned_video_from_its_caption(
    fitted, tiny_features, tiny_params, tiny_frames, tiny_annotations, tmp_path, capsys
):
    checkpoint, pairs = fitted
    for pair in pairs.head(6).itertuples():
        hits = search.run(tiny_params, checkpoint, tiny_features, pair.caption, k=3, split="train", annotations=tiny_annotations)
        assert hits["video_id"].iloc[0] == pair.video_id, pair.caption
        assert list(hits["rank"]) == [1, 2, 3] and hits["score"].is_monotonic_decreasing
        assert hits["video_path"].iloc[0] == f"{pair.video_id}.mp4"
    assert pair.video_id in capsys.readouterr().out  # the table is printed
    sheet = tmp_path / "sheet.png"
    search.run(
        tiny_params, checkpoint, tiny_features, pairs.caption.iloc[0], k=2, split="train", frames_dir=tiny_frames, sheet=sheet
    )
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_refuses_what_it_cannot_answer(fitted, tiny_features, tiny_params):
    checkpoint, _ = fitted
    with pytest.raises(MascotError, match="query is empty"):
        search.run(tiny_params, checkpoint, tiny_features, "  ")
    with pytest.raises(MascotError, match="has no videos"):
        search.run(tiny_params, checkpoint, tiny_features, "a red circle", split="nope")
    with pytest.raises(MascotError, match="--frames"):  # K = L: the videos are read from the frames folder
        search.run(tiny_params, checkpoint, tiny_features, "a red circle", frames_dir=tiny_features / "nowhere")
