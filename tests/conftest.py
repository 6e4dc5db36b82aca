"""Shared fixtures: a tiny synthetic dataset and its pipeline artifacts, built once per session."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# Tests that `make test-fast` leaves out (marked `heavy` at collection): those that decode the tiny
# dataset's videos or need its frames or features, a pipeline run or a full-size ViT-B tower, and
# the files that spawn long subprocesses. Tests that decode the real sample videos, read the full
# real annotation files or render synthetic videos carry `@pytest.mark.heavy` themselves.
HEAVY_FIXTURES = {"tiny_raw", "tiny_frames", "tiny_features", "serial_frames", "dvc_pipeline", "smk_repo", "vit_b_32_quickgelu"}
HEAVY_FILES = {"test_distributed.py", "test_benchmarks.py", "test_plots_page.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if HEAVY_FIXTURES & set(item.fixturenames) or item.path.name in HEAVY_FILES:
            item.add_marker(pytest.mark.heavy)


def tiny_params_dict(pretrained: bool = False) -> dict:
    """The repository's params.yaml shrunk to seconds: the lightning-hydra style debug preset. Unit
    tests build random towers (`clip.pretrained: null`); the project copies keep the default's
    pretrained start (`pretrained`), so their `dvc repro` runs the pretrain stage too."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["data"]["synthetic"].update({"videos": {"train": 16, "val": 6, "test": 6}, "min_seconds": 0.5, "max_seconds": 1.5})
    raw["frames"]["num_frames"] = 4
    raw["frames"]["shard_size"] = 10
    raw["train"].update({"epochs": 1, "batch_size": 8})
    raw["variants"], raw["seeds"] = ["meanP", "mascot"], [0]  # the base model and MASCOT, one seed
    raw["ablation"]["variants"] = ["random_masks"]  # one ablation run, so the ablation stages run too
    raw["pretrain"].update({"images": 96, "epochs": 1, "batch_size": 32, "eval_renders": 1})  # the pretrain stage in seconds
    if not pretrained:
        raw["clip"]["pretrained"] = None
    return raw


@pytest.fixture(scope="session")
def tiny_params():
    from mascot.config import parse_params

    return parse_params(tiny_params_dict())


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_params) -> Path:
    from mascot.datasets import get_dataset

    raw = tmp_path_factory.mktemp("synthetic") / "raw"
    raw.mkdir()
    get_dataset("synthetic", tiny_params.dataset("synthetic")).download(raw, tmp_path_factory.mktemp("cache"))
    return raw


@pytest.fixture(scope="session")
def tiny_annotations(tiny_raw, tiny_params) -> Path:
    from mascot.annotations import write_table
    from mascot.datasets import get_dataset

    path = tiny_raw.parent / "annotations.parquet"
    write_table(get_dataset("synthetic", tiny_params.dataset("synthetic")).read_annotations(tiny_raw), path)
    return path


@pytest.fixture(scope="session")
def tiny_frames(tiny_raw, tiny_annotations, tiny_params) -> Path:
    from mascot import frames

    out = tiny_raw.parent / "frames"
    frames.run(tiny_params, tiny_annotations, tiny_raw / "videos", out)
    return out


@pytest.fixture(scope="session")
def tiny_features(tiny_frames, tiny_annotations, tiny_params) -> Path:
    from mascot import features

    out = tiny_frames.parent / "features"
    features.run(tiny_params, tiny_annotations, tiny_frames, out)
    return out


@pytest.fixture(scope="session")
def tiny_prefix_params(tiny_params):
    """The tiny preset at K = 2 < L (a frozen, cached bottom): base variants only, as masking needs K = L."""
    from mascot.config import parse_params

    raw = tiny_params_dict()
    raw["train"]["trainable_blocks"] = 2
    raw["variants"], raw["ablation"]["variants"] = ["meanP"], ["seqTransf"]
    raw["figures"].update({"baseline": "meanP", "masked": "meanP"})
    return parse_params(raw)


@pytest.fixture(scope="session")
def tiny_prefix_features(tiny_frames, tiny_annotations, tiny_prefix_params) -> Path:
    """Features at K = 2: the token cache of the first two (frozen) blocks."""
    from mascot import features

    out = tiny_frames.parent / "features-k2"
    features.run(tiny_prefix_params, tiny_annotations, tiny_frames, out)
    return out


@pytest.fixture(scope="session")
def tiny_raw_store(tiny_raw, tiny_annotations, tiny_params) -> tuple[Path, Path]:
    """The tiny set with frames stored raw (frames.format: raw) and its K = L features: (features, frames)."""
    from mascot import features, frames

    params = tiny_params.model_copy(update={"frames": tiny_params.frames.model_copy(update={"format": "raw"})})
    frames_dir, features_dir = tiny_raw.parent / "frames-raw", tiny_raw.parent / "features-raw"
    frames.run(params, tiny_annotations, tiny_raw / "videos", frames_dir)
    features.run(params, tiny_annotations, frames_dir, features_dir)
    return features_dir, frames_dir


@pytest.fixture(scope="session")
def tiny_token_features(tiny_features, tiny_frames, tiny_params) -> Path:
    """The K = L features with a token cache added by the features stage's own code (cache_vision):
    the patch embedding of every frame, in fp16, as the stage wrote it before K = L trained from the
    frames. The tests hold the two routes to each other with it."""
    import json
    import shutil

    from mascot import features
    from mascot.clip_model import tokens_per_frame
    from mascot.frames import open_frames

    out = tiny_frames.parent / "features-tokens"
    shutil.copytree(tiny_features, out)
    index, shards = open_frames(tiny_frames)
    features.cache_vision(tiny_params, index, shards, tokens_per_frame(tiny_params.clip.model), out).to_parquet(
        out / "index.parquet", index=False
    )
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "vision": "tokens"}))
    return out


@pytest.fixture(scope="session")
def dvc_pipeline(tmp_path_factory):
    """A project copy (tiny preset) after a full `dvc repro`: its path, the output, and the metrics
    files as they were right after the run (tests may edit the copy afterwards)."""
    from .project_copy import copy_project, metrics_files, sh

    repo = copy_project(tmp_path_factory.mktemp("pipeline") / "repo")
    output = sh(["dvc", "repro"], repo)
    return repo, output, metrics_files(repo)


@pytest.fixture
def decode_calls(monkeypatch) -> list[int]:
    """Frames decoded by each EncodedFrames.decode call: a `decode_on: device` test whose results
    equal Pillow's (on the CPU they do) also shows that the device path was taken."""
    from mascot.frame_store import EncodedFrames

    calls: list[int] = []
    original = EncodedFrames.decode

    def counted(self, device):
        calls.append(len(self.files))
        return original(self, device)

    monkeypatch.setattr(EncodedFrames, "decode", counted)
    return calls
