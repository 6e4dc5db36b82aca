"""DVC and Snakemake run one DAG: same stages, commands and outputs, the same invalidations, state
kept in sync both ways, the same results; and artifacts shared through a DVC remote."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dvc.repo import Repo

from .project_copy import (
    commit,
    copy_project,
    dvc_ran,
    dvc_stale,
    metrics_files,
    set_param,
    sh,
    snakemake_jobs,
    snakemake_summary,
)

pytestmark = pytest.mark.slow


def rule_name(address: str) -> str:
    """The Snakefile's naming: `train@synthetic-meanP-0` → `train__synthetic_meanP_0`."""
    return re.sub(r"\W", "_", address.replace("@", "__"))


def dvc_outputs(repo: Path) -> dict[str, list[str]]:
    with Repo(repo) as r:
        return {rule_name(s.name): sorted(o.def_path for o in s.outs) for s in r.index.stages}


def snakemake_outputs(repo: Path) -> dict[str, list[str]]:
    """rule → outputs, from Snakemake's summary (one job per rule here; `all` has no outputs)."""
    outputs: dict[str, list[str]] = {}
    for row in snakemake_summary(repo):
        outputs.setdefault(row["rule"], []).append(row["output_file"])
    return {rule: sorted(files) for rule, files in outputs.items()}


@pytest.fixture(scope="module")
def smk_repo(tmp_path_factory) -> Path:
    """A project copy where the pipeline is run by Snakemake with the default profile."""
    repo = copy_project(tmp_path_factory.mktemp("engines") / "repo")
    sh(["snakemake", "--profile", "workflow/profiles/default", "--cores", "2"], repo)
    return repo


def test_stages_and_rules_correspond_one_to_one(tmp_path):
    repo = copy_project(tmp_path / "repo")
    assert snakemake_outputs(repo) == dvc_outputs(repo)


def dvc_commands(repo: Path) -> set[str]:
    with Repo(repo) as r:
        return {s.cmd for s in r.index.stages}


def test_snakemake_ran_the_commands_of_dvc_yaml(smk_repo):
    """The commands Snakemake recorded for every output of its run are exactly DVC's stage commands."""
    launcher, log = re.compile(r"^python -m mascot\.gpu_slot --need \d+ -- "), " > logs/snakemake/"
    ran = {launcher.sub("", r["shellcmd"]).split(log, 1)[0] for r in snakemake_summary(smk_repo)}
    assert len(ran) == 14 and ran == dvc_commands(smk_repo)  # 11 default stages (pretrain, figures included) + 3 ablation


def test_lint_passes():
    from .conftest import REPO

    sh(["snakemake", "--lint"], REPO)  # exits non-zero when it has a suggestion (its JSON form is not wired to the CLI in 9.27)


def test_snakemake_run_gives_the_metrics_of_dvc_repro(smk_repo, dvc_pipeline):
    _, _, dvc_metrics = dvc_pipeline
    assert metrics_files(smk_repo) == dvc_metrics and len(dvc_metrics) == 2


def test_snakemake_run_then_dvc_commit_leaves_both_with_nothing_to_do(smk_repo):
    sh(["dvc", "commit", "-f"], smk_repo)
    assert dvc_stale(smk_repo) == set()
    assert snakemake_jobs(smk_repo) == set()
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
    # (an edit of train.lr, which retrains every run, is run for real by test_pipeline.py)
    [("variant_defs.mascot.mask", {"ratio": 0.25}), ("evaluate.batch_size", 128)],
)
def test_an_edit_invalidates_the_same_stages_and_touch_resyncs(smk_repo, key, value):
    set_param(smk_repo, key, value)
    stale = dvc_stale(smk_repo)
    planned = snakemake_jobs(smk_repo)
    assert stale and planned == {rule_name(s) for s in with_downstream(smk_repo, stale)}
    # DVC then skips a downstream stage whose inputs come out identical; Snakemake decides by time.
    ran = dvc_ran(sh(["dvc", "repro"], smk_repo))
    assert stale <= ran and {rule_name(s) for s in ran} <= planned
    sh(["snakemake", "--touch", "--cores", "1"], smk_repo)
    assert snakemake_jobs(smk_repo) == set()
    assert dvc_stale(smk_repo) == set()


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
    assert dvc_stale(clone) == set()
    assert dvc_ran(sh(["dvc", "repro"], clone)) == set()
    assert (clone / "models" / "synthetic" / "mascot-seed0.pt").read_bytes() == (
        smk_repo / "models" / "synthetic" / "mascot-seed0.pt"
    ).read_bytes()
    # and Snakemake, which keeps its own state, is brought in line with one touch
    sh(["snakemake", "--touch", "--cores", "1"], clone)
    assert snakemake_jobs(clone) == set()


def test_slurm_profile_builds_the_dag():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from .conftest import REPO

    out = sh(["snakemake", "--profile", "workflow/profiles/slurm", "-n", "-F"], REPO)
    assert "train__synthetic_mascot_0" in out and "gpu=1" in out


def _planned_jobs(repo, rule: str) -> list[str]:
    out = sh(["snakemake", "-n", "-F", "-p", "--cores", "1"], repo)
    jobs = [j for j in re.split(r"\n(?=(?:localrule|rule) )", out) if re.match(rf"(?:localrule|rule) {rule}__", j)]
    assert jobs, rule
    return jobs


def test_a_train_job_gets_one_gpu_per_process_and_features_one_only_below_k_equals_l(tmp_path):
    """`train.processes` sizes a train job's GPU request and the slot it waits for (ablation rows too); the features
    stage asks for a GPU only where it encodes frames (K < L), not at K = L (the default and the
    presets: it tokenizes captions)."""
    repo = copy_project(tmp_path)
    set_param(repo, "train.processes", 2)
    commit(repo, "two processes")
    for rule in ("train", "train_ablation"):  # the ablation rows train as the main ones
        assert all("gpu=2" in j and "mascot.gpu_slot --need 2 --" in j for j in _planned_jobs(repo, rule)), rule
    assert all("gpu=1" in j and "mascot.gpu_slot --need 1 --" in j for j in _planned_jobs(repo, "evaluate_ablation"))
    assert all("gpu=0" in j and "gpu_slot" not in j for j in _planned_jobs(repo, "features"))
    set_param(repo, "train.trainable_blocks", 2)
    commit(repo, "K < L")
    assert all("gpu=1" in j and "mascot.gpu_slot --need 1 --" in j for j in _planned_jobs(repo, "features"))
