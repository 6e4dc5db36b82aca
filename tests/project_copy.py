"""Temporary git + DVC copies of the project with the tiny preset, and the commands run in them."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import REPO, tiny_params_dict

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def sh(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    """Run a command that must succeed; its output (stdout and stderr, or stdout only)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def copy_project(dest: Path) -> Path:
    """The project's tracked files (no results, data, models or lock) with the tiny preset, committed."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if name.startswith(("results/", "data/", "models/")) or name == "dvc.lock" or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(pretrained=True), sort_keys=False))
    sh(["git", "init", "-q"], dest)
    commit(dest, "init")
    return dest


def commit(repo: Path, message: str) -> None:
    sh([*GIT, "add", "-A"], repo)
    sh([*GIT, "commit", "-qm", message, "--allow-empty"], repo)


def set_param(repo: Path, dotted: str, value) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    *path, key = dotted.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def dvc_ran(output: str) -> set[str]:
    """Stages that `dvc repro` ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def snakemake_summary(repo: Path, *flags: str) -> list[dict[str, str]]:
    """Snakemake's machine-readable plan: `--detailed-summary`, one row per output file (output_file,
    rule, shellcmd as recorded by its last run, status, plan: `update pending` or `no update`)."""
    table = sh(["snakemake", "--detailed-summary", "--cores", "1", *flags], repo, stdout_only=True)
    rows = list(csv.DictReader(io.StringIO(table), delimiter="\t"))
    assert rows and {r["plan"] for r in rows} <= {"update pending", "no update"}, table
    return rows


def snakemake_jobs(repo: Path) -> set[str]:
    """Rules that Snakemake would run now (those with an output whose plan is `update pending`)."""
    return {r["rule"] for r in snakemake_summary(repo) if r["plan"] == "update pending"}


def dvc_stale(repo: Path) -> set[str]:
    """Stages that `dvc status` reports, from its JSON form."""
    return set(json.loads(sh(["dvc", "status", "--json"], repo, stdout_only=True).strip().splitlines()[-1]))


def metrics_files(repo: Path) -> dict[str, bytes]:
    root = repo / "results" / "metrics"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.json"))}
