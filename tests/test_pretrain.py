"""The pretrain stage (pretrain.py): an open_clip checkpoint that loads as written, a model that
learns the generated world, held-out images apart from the pool, and no pretraining where other
weights are named."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from mascot import pretrain
from mascot.clip_model import register_model_configs
from mascot.config import parse_params
from tests.conftest import tiny_params_dict


def _params(**pretrain_settings):
    raw = tiny_params_dict(pretrained=True)
    raw["pretrain"].update(pretrain_settings)
    return parse_params(raw)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A short pretraining run in a project-like folder (clip.pretrained is a path relative to the root)."""
    root = tmp_path_factory.mktemp("pretrain")
    params = _params(images=1536, epochs=6, batch_size=64, lr=0.002, eval_renders=2)
    cwd = pytest.MonkeyPatch()
    cwd.chdir(root)
    try:
        pretrain.run(params, root / "models" / "pretrain", root / "metrics.json")
    finally:
        cwd.undo()
    return root, json.loads((root / "metrics.json").read_text())


def test_the_checkpoint_loads_in_open_clip_with_every_tensor_equal(pretrained):
    root, _ = pretrained
    path = root / "models" / "pretrain" / pretrain.CHECKPOINT
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    register_model_configs()
    model = open_clip.create_model("mascot-tiny", pretrained=str(path))
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, loaded[name]), name


def test_the_train_stage_builds_the_tower_from_it(pretrained):
    """clip.pretrained as params.yaml writes it (a path from the project root) through create_clip."""
    from mascot.clip_model import create_clip

    root, _ = pretrained
    saved = torch.load(root / "models" / "pretrain" / pretrain.CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    cwd = pytest.MonkeyPatch()
    cwd.chdir(root)
    try:
        clip = create_clip(_params().clip)
    finally:
        cwd.undo()
    assert all(torch.equal(tensor, clip.state_dict()[name]) for name, tensor in saved.items())


def test_pretraining_learns_the_generated_world(pretrained):
    """Zero-shot text→image R@1 over the 80 held-out colour × shape × size images, above chance and
    above the same model before pretraining; the loss falls."""
    _, metrics = pretrained
    chance = metrics["held_out"]["chance_R1"]
    assert chance == pytest.approx(100 / 80)
    assert metrics["zero_shot"]["t2v"]["R1"] > 3 * chance
    assert metrics["zero_shot"]["t2v"]["R5"] > metrics["random_weights"]["t2v"]["R5"]
    losses = [e["loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0]


def test_held_out_images_are_not_in_the_pool():
    cfg = _params().dataset("synthetic")
    pool, _ = pretrain.render(cfg, 0, pretrain.POOL, [None] * 40, 64)
    held, captions = pretrain.render(cfg, 0, pretrain.HELD_OUT, pretrain.combinations()[:40], 64)
    assert len(set(captions)) == 40  # the held-out captions name every attribute: one combination each
    flat_pool = pool.reshape(len(pool), -1).astype(np.int16)
    for image in held.reshape(len(held), -1).astype(np.int16):
        assert np.abs(flat_pool - image).mean(axis=1).min() > 5  # no held-out image is (nearly) a pool image
    again, _ = pretrain.render(cfg, 0, pretrain.POOL, [None] * 40, 64)
    assert np.array_equal(pool, again)  # deterministic


def test_other_weights_are_not_pretrained(tmp_path):
    raw = tiny_params_dict()
    raw["clip"]["pretrained"] = "openai"
    params = parse_params(raw)
    pretrain.run(params, tmp_path / "models" / "pretrain", tmp_path / "metrics.json")
    assert [p.name for p in (tmp_path / "models" / "pretrain").iterdir()] == ["NOT_PRETRAINED.txt"]
    assert json.loads((tmp_path / "metrics.json").read_text())["pretrained"] is False
