"""The real DAG end to end: `dvc repro` in a temporary copy of the repository, with a tiny preset."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, tiny_params_dict

pytestmark = pytest.mark.slow


def _sh(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _set_param(repo: Path, section: str, key: str, value) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC copy of the project's tracked files, with the tiny preset and no results."""
    dest = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if name.startswith(("results/", "data/", "models/")) or name == "dvc.lock" or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    _sh(["git", "init", "-q"], dest)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dest)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


def _dvc_commands(repo: Path) -> set[str]:
    return {line[2:].strip() for line in _sh(["dvc", "repro", "--dry", "-f"], repo).splitlines() if line.startswith("> ")}


def test_snakemake_runs_the_same_commands(repo):
    out = _sh(["snakemake", "-n", "-p", "-F", "--cores", "1"], repo)
    dvc_cmds = _dvc_commands(repo)
    assert len(dvc_cmds) == 9
    for cmd in dvc_cmds:
        assert cmd in out, f"Snakemake does not run: {cmd}"


def test_full_dag_then_nothing_to_do(repo):
    out = _sh(["dvc", "repro"], repo)
    stages = _ran(out)
    assert {"download@synthetic", "frames@synthetic", "features@synthetic", "tables"} <= stages
    assert {"train@synthetic-meanP-0", "train@synthetic-mascot-0", "evaluate@synthetic-mascot-0"} <= stages

    tables = repo / "results" / "tables" / "synthetic"
    table = (tables / "main.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| CLIP4Clip", "| MASCOT"))]
    assert [r.split(" |")[0] for r in rows] == ["| CLIP4Clip-meanP (baseline)", "| MASCOT (meanP)"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        assert len(cells) == 10  # five metrics in each direction
        assert all(math.isfinite(float(c.split(" ")[0])) for c in cells)
    assert {p.name for p in tables.iterdir()} >= {"main.md", "main.tex", "main.csv", "ablation.md", "mask_ratio.md"}
    log = (repo / "results" / "train" / "synthetic" / "mascot-seed0.csv").read_text().splitlines()
    assert log[0].split(",")[:7] == ["epoch", "step", "loss", "nce", "nce_masked", "kl", "isc"]

    again = _sh(["dvc", "repro"], repo)
    assert _ran(again) == set()
    assert "up to date" in _sh(["dvc", "status"], repo)
    assert "synthetic" in _sh(["dvc", "metrics", "show"], repo)


def test_lr_edit_reruns_train_evaluate_tables_only(repo):
    _set_param(repo, "train", "lr", 0.0002)
    stages = _ran(_sh(["dvc", "repro"], repo))
    expected = {f"{s}@synthetic-{v}-0" for s in ("train", "evaluate") for v in ("meanP", "mascot")} | {"tables"}
    assert stages == expected


def test_a_mascot_setting_reruns_only_mascot(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["variant_defs"]["mascot"]["mask"] = {"ratio": 0.25}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    stages = _ran(_sh(["dvc", "repro"], repo))
    assert stages == {"train@synthetic-mascot-0", "evaluate@synthetic-mascot-0", "tables"}


def test_num_frames_edit_reruns_frames_onwards(repo):
    _set_param(repo, "frames", "num_frames", 3)
    stages = _ran(_sh(["dvc", "repro"], repo))
    expected = {"frames@synthetic", "features@synthetic", "tables"} | {
        f"{s}@synthetic-{v}-0" for s in ("train", "evaluate") for v in ("meanP", "mascot")
    }
    assert stages == expected
    assert "up to date" in _sh(["dvc", "status"], repo)

