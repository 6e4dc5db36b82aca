"""The real DAG end to end: `dvc repro` in a temporary copy of the repository, with a tiny preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .project_copy import dvc_ran, set_param, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(dvc_pipeline) -> Path:
    return dvc_pipeline[0]


def test_full_dag_then_nothing_to_do(repo, dvc_pipeline):
    stages = dvc_ran(dvc_pipeline[1])
    assert {"download@synthetic", "frames@synthetic", "features@synthetic", "tables@synthetic", "figures@synthetic"} <= stages
    figures = repo / "results" / "figures" / "synthetic"
    assert sorted(p.name for p in figures.iterdir()) == ["masks.png", "retrieval.png"]
    assert {"train@synthetic-meanP-0", "train@synthetic-mascot-0", "evaluate@synthetic-mascot-0"} <= stages

    tables = repo / "results" / "tables" / "synthetic"
    table = (tables / "main.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| CLIP4Clip", "| MASCOT"))]
    not_run = [r for r in rows if "not run" in r]
    assert len(not_run) == 1 and not_run[0].startswith("| CLIP4Clip-seqTransf (baseline) | – | not run |")
    rows = [r for r in rows if "not run" not in r]  # the tiny preset trains meanP and MASCOT only
    labels = ["| CLIP4Clip-meanP (baseline)", "| MASCOT (meanP)"]
    assert [r.split(" |")[0] for r in rows] == labels + [f"{label} + DSL" for label in labels]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        assert len(cells) == 10  # five metrics in each direction
        assert all(math.isfinite(float(c.split(" ")[0])) for c in cells)
    assert {p.name for p in tables.iterdir()} == {"main.md", "main.tex", "main.csv", "mechanism.md", "mechanism.csv"}
    # the DAG pretrained the CLIP it fine-tuned, and the masked run measured where its masks fall
    assert json.loads((repo / "results" / "pretrain" / "metrics.json").read_text())["pretrained"] is True
    mechanism = [r for r in (tables / "mechanism.md").read_text().splitlines() if r.startswith("| MASCOT (meanP) | 1 |")]
    assert len(mechanism) == 1 and all(math.isfinite(float(c)) for c in mechanism[0].strip("|").split("|")[2:7])
    ablation = repo / "results" / "ablation" / "tables" / "synthetic"
    assert {p.name for p in ablation.iterdir()} >= {"ablation.md", "mask_ratio.md", "mask_score.md"}
    assert "| + random masks | 1 |" in (ablation / "ablation.md").read_text()  # the tiny preset's one ablation run
    log = (repo / "results" / "train" / "synthetic" / "mascot-seed0.csv").read_text().splitlines()
    assert log[0].split(",")[:7] == ["epoch", "step", "loss", "nce", "nce_masked", "kl", "isc"]

    again = sh(["dvc", "repro"], repo)
    assert dvc_ran(again) == set()
    assert "up to date" in sh(["dvc", "status"], repo)
    assert "synthetic" in sh(["dvc", "metrics", "show"], repo)


ABLATION = {"train_ablation@synthetic-random_masks-0", "evaluate_ablation@synthetic-random_masks-0", "tables_ablation@synthetic"}


def test_lr_edit_reruns_train_evaluate_tables_only(repo):
    set_param(repo, "train.lr", 0.0002)
    # `make repro` (dvc repro tables figures): the default runs only; the ablation stays stale until `make ablation`
    stages = dvc_ran(sh(["dvc", "repro", "tables", "figures"], repo))
    expected = {f"{s}@synthetic-{v}-0" for s in ("train", "evaluate") for v in ("meanP", "mascot")}
    expected |= {"tables@synthetic", "figures@synthetic"}
    assert stages == expected
    assert "train_ablation@synthetic-random_masks-0" in sh(["dvc", "status"], repo)
    assert dvc_ran(sh(["dvc", "repro", "tables_ablation"], repo)) == ABLATION


def _would_run(repo, key, value) -> set[str]:
    """The stages `dvc repro` would run after setting `key`: those the edit invalidates and everything
    downstream of them (a dry run, which cannot know that a rerun stage's outputs come out the same;
    the edit is undone after). test_lr_edit_reruns_train_evaluate_tables_only reruns for real."""
    before = (repo / "params.yaml").read_text()
    set_param(repo, key, value)
    try:
        return dvc_ran(sh(["dvc", "repro", "--dry", "--force-downstream"], repo))
    finally:
        (repo / "params.yaml").write_text(before)


def test_a_mascot_setting_reruns_only_mascot(repo):
    stages = _would_run(repo, "variant_defs.mascot.mask", {"ratio": 0.25})
    assert stages == {
        "train@synthetic-mascot-0",
        "evaluate@synthetic-mascot-0",
        "tables@synthetic",
        "tables_ablation@synthetic",
        "figures@synthetic",
    }


def test_num_frames_edit_reruns_frames_onwards(repo):
    stages = _would_run(repo, "frames.num_frames", 3)
    expected = (
        {"frames@synthetic", "features@synthetic", "tables@synthetic", "figures@synthetic"}
        | ABLATION
        | {f"{s}@synthetic-{v}-0" for s in ("train", "evaluate") for v in ("meanP", "mascot")}
    )
    assert stages == expected
