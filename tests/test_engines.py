"""DVC and Snakemake run one DAG: same stages, commands and outputs, the same invalidations, state
kept in sync both ways, the same results; and artifacts shared through a DVC remote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dvc.repo import Repo

from .project_copy import commit, copy_project, dvc_ran, metrics_files, set_param, sh, snakemake_jobs

pytestmark = pytest.mark.slow


def rule_name(address: str) -> str:
    """The Snakefile's naming: `train@synthetic-meanP-0` → `train__synthetic_meanP_0`."""
    return re.sub(r"\W", "_", address.replace("@", "__"))


def dvc_outputs(repo: Path) -> dict[str, list[str]]:
    with Repo(repo) as r:
        return {rule_name(s.name): sorted(o.def_path for o in s.outs) for s in r.index.stages}


def snakemake_outputs(dry_run: str) -> dict[str, list[str]]:
    """rule → outputs, from the job blocks of `snakemake -n -F` (one job per rule here)."""
    outputs = {}
    for block in re.split(r"\n(?=rule |localrule )", dry_run):
        head = re.match(r"(?:local)?rule (\S+):", block)
        out = re.search(r"^\s+output: (.+)$", block, re.M)
        if head and out and head.group(1) != "all":
            outputs[head.group(1)] = sorted(o.strip() for o in out.group(1).split(","))
    return outputs


@pytest.fixture(scope="module")
def smk_repo(tmp_path_factory) -> Path:
    """A project copy where the pipeline is run by Snakemake with the default profile."""
    repo = copy_project(tmp_path_factory.mktemp("engines") / "repo")
    sh(["snakemake", "--profile", "workflow/profiles/default", "--cores", "2"], repo)
    return repo


def test_stages_and_rules_correspond_one_to_one(tmp_path):
    repo = copy_project(tmp_path / "repo")
    dry = sh(["snakemake", "-n", "-F", "--cores", "1"], repo)
    assert snakemake_outputs(dry) == dvc_outputs(repo)


def test_the_command_sets_are_equal(tmp_path):
    repo = copy_project(tmp_path / "repo")
    dvc_cmds = {line[2:].strip() for line in sh(["dvc", "repro", "--dry", "-f"], repo).splitlines() if line.startswith("> ")}
    snakemake_cmds = set()
    for line in sh(["snakemake", "-n", "-p", "-F", "--cores", "1"], repo).splitlines():
        line = line.strip().removeprefix("Shell command: ").removeprefix("python -m mascot.gpu_slot -- ")
        if line.startswith("python -m mascot "):
            snakemake_cmds.add(line.split(" > logs/", 1)[0])  # the rule's log redirection
    assert len(dvc_cmds) == 12 and snakemake_cmds == dvc_cmds  # 9 default stages + 3 ablation (one variant)


def test_lint_passes():
    from .conftest import REPO

    out = sh(["snakemake", "--lint"], REPO)
    assert "Congratulations" in out


def test_snakemake_run_gives_the_metrics_of_dvc_repro(smk_repo, dvc_pipeline):
    _, _, dvc_metrics = dvc_pipeline
    assert metrics_files(smk_repo) == dvc_metrics and len(dvc_metrics) == 2


def test_snakemake_run_then_dvc_commit_leaves_both_with_nothing_to_do(smk_repo):
    sh(["dvc", "commit", "-f"], smk_repo)
    assert "up to date" in sh(["dvc", "status"], smk_repo)
    assert snakemake_jobs(sh(["snakemake", "-n", "--cores", "1"], smk_repo)) == set()
    assert dvc_ran(sh(["dvc", "repro"], smk_repo)) == set()


def with_downstream(repo: Path, stale: set[str]) -> set[str]:
    """The stale DVC stages and every stage that depends on them, directly or not."""
    import networkx as nx

    with Repo(repo) as r:
        graph = r.index.graph  # edges point from a stage to the stages it depends on
        by_name = {s.name: s for s in graph.nodes}
        return stale | {d.name for s in stale for d in nx.ancestors(graph, by_name[s])}


@pytest.mark.parametrize(
    ("key", "value"),
    [("train.lr", 0.0003), ("variant_defs.mascot.mask", {"ratio": 0.25}), ("evaluate.batch_size", 128)],
)
def test_an_edit_invalidates_the_same_stages_and_touch_resyncs(smk_repo, key, value):
    set_param(smk_repo, key, value)
    dry = sh(["snakemake", "-n", "--cores", "1"], smk_repo)
    stale = set(json.loads(sh(["dvc", "status", "--json"], smk_repo).splitlines()[-1]))
    planned = snakemake_jobs(dry)
    assert stale and planned == {rule_name(s) for s in with_downstream(smk_repo, stale)}
    # DVC then skips a downstream stage whose inputs come out identical; Snakemake decides by time.
    ran = dvc_ran(sh(["dvc", "repro"], smk_repo))
    assert stale <= ran and {rule_name(s) for s in ran} <= planned
    sh(["snakemake", "--touch", "--cores", "1"], smk_repo)
    assert snakemake_jobs(sh(["snakemake", "-n", "--cores", "1"], smk_repo)) == set()
    assert "up to date" in sh(["dvc", "status"], smk_repo)


def test_dvc_remote_push_then_pull_in_a_fresh_clone(smk_repo, tmp_path):
    """A per-user remote (.dvc/config.local) on a shared directory: push, clone, pull, nothing to run."""
    store = tmp_path / "remote"
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(store)], smk_repo)
    sh(["dvc", "push"], smk_repo)
    commit(smk_repo, "results")
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(smk_repo), str(clone)], tmp_path)
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(store)], clone)
    sh(["dvc", "pull"], clone)
    assert "up to date" in sh(["dvc", "status"], clone)
    assert dvc_ran(sh(["dvc", "repro"], clone)) == set()
    assert (clone / "models" / "synthetic" / "mascot-seed0.pt").read_bytes() == (smk_repo / "models" / "synthetic" / "mascot-seed0.pt").read_bytes()
    # and Snakemake, which keeps its own state, is brought in line with one touch
    sh(["snakemake", "--touch", "--cores", "1"], clone)
    assert snakemake_jobs(sh(["snakemake", "-n", "--cores", "1"], clone)) == set()


def test_slurm_profile_builds_the_dag():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from .conftest import REPO

    out = sh(["snakemake", "--profile", "workflow/profiles/slurm", "-n", "-F"], REPO)
    assert "train__synthetic_mascot_0" in out and "gpu=1" in out
