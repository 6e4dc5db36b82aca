"""Stage dependencies cannot drift from the code: every module a stage runs is a dep of that stage.

For each stage of dvc.yaml, the code it runs is computed from the source: `python -m mascot <stage>`
executes `mascot/__init__.py`, `mascot/__main__.py`, the module level of `cli.py` and the stage's
own function `_<stage>` in cli.py; from there every `mascot` module imported, at module level or
lazily inside a function, is followed transitively, and a folder of data files a module names
(`model_configs`) counts as well. The stage's `deps` must cover each of these files (the file
itself or a folder above it), so an edit to any code a stage runs makes `dvc status` report the
stage; and every code dep must cover some of them, so no stage reruns for code it does not run.
The Snakemake rules are derived from dvc.yaml (workflow/rules/dvc_stages.smk) and follow.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

SRC = REPO / "src"
PACKAGE = "mascot"


def module_file(name: str) -> Path | None:
    """The source file of a dotted module name of the package, or None."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(nodes: list[ast.AST], current: str, is_package: bool) -> set[str]:
    """The package's modules that the import statements among `nodes` (and below them) load."""
    found = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = current.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            # `from . import frames` loads the submodule `frames`
            found |= {f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}")}
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {name for name in with_parents if module_file(name)}


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def data_folders(path: Path) -> set[Path]:
    """Folders of non-Python files beside a module that the module names in a string (model_configs)."""
    strings = {n.value for n in ast.walk(parsed(path)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {d for d in path.parent.iterdir() if d.is_dir() and d.name in strings and not (d / "__init__.py").exists()}


def closure(seeds: set[str], expanded: set[str] = frozenset()) -> set[Path]:
    """Files (and data folders) of every module reachable from `seeds` through imports, lazy ones
    included; the modules in `expanded` are taken as already followed."""
    done = set(expanded)
    todo = list(seeds)
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        path = module_file(name)
        files |= {path} | data_folders(path)
        todo += imported_modules([parsed(path)], name, path.name == "__init__.py")
    return files


def stage_code(command: str) -> set[Path]:
    """What `python -m mascot <command>` runs: the entry points, cli.py's module level and `_<command>`."""
    cli = module_file(f"{PACKAGE}.cli")
    tree = parsed(cli)
    handler = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f"_{command}"]
    assert handler, f"cli.py has no function _{command} for the stage command `{command}`"
    module_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    entry = imported_modules(module_level + handler, f"{PACKAGE}.cli", False) | {PACKAGE, f"{PACKAGE}.__main__"}
    return {cli} | closure(entry, expanded={f"{PACKAGE}.cli"})


def dvc_stages() -> dict[str, tuple[str, list[str]]]:
    """stage → (its `python -m mascot` command, its deps inside src/)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()
        assert words[:3] == ["python", "-m", PACKAGE], f"dvc.yaml stage {name}: expected `python -m {PACKAGE} <stage> …`"
        out[name] = (words[3], [d for d in stage.get("deps", []) if isinstance(d, str) and d.startswith("src/")])
    return out


def uncovered(code: set[Path], deps: list[str]) -> tuple[list[str], list[str]]:
    """(code files no dep covers, code deps that cover no code file)."""
    dep_paths = [REPO / d for d in deps]
    missing = sorted(str(f.relative_to(REPO)) for f in code if not any(f == d or f.is_relative_to(d) for d in dep_paths))
    unused = sorted(d for d, p in zip(deps, dep_paths, strict=True) if not any(f == p or f.is_relative_to(p) for f in code))
    return missing, unused


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_cover_the_code_it_runs(stage):
    command, deps = dvc_stages()[stage]
    missing, unused = uncovered(stage_code(command), deps)
    assert not missing, f"dvc.yaml stage `{stage}` runs {missing} but does not depend on it: add it to its deps"
    assert not unused, f"dvc.yaml stage `{stage}` depends on {unused}, which it does not run: remove it from its deps"


def test_the_closure_follows_lazy_imports_and_data_folders():
    train = {str(p.relative_to(SRC)) for p in stage_code("train")}
    # cli.py imports `train` inside `_train`; config.py imports the dataset registry inside a function
    assert {"mascot/train.py", "mascot/features.py", "mascot/datasets/__init__.py", "mascot/datasets/synthetic.py"} <= train
    assert "mascot/model_configs" in train and "mascot/tables.py" not in train
    assert "mascot/presets.py" not in {str(p.relative_to(SRC)) for p in stage_code("tables")}


def test_a_missing_or_stale_dep_is_reported():
    code = stage_code("evaluate")
    _, deps = dvc_stages()["evaluate"]
    missing, unused = uncovered(code, [d for d in deps if d != "src/mascot/features.py"] + ["src/mascot/tables.py"])
    assert missing == ["src/mascot/features.py"] and unused == ["src/mascot/tables.py"]


def test_every_setting_that_can_change_an_output_is_tracked():
    """A stage's params list every key of its section except those that change only speed or
    resumption (so that tuning them reruns nothing); a key added to the schema must be listed."""
    from mascot.config import EvaluateConfig, FeaturesConfig, TrainConfig

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    untracked = {"loader_workers", "checkpoint_every"}
    for stage, section, schema in (
        ("features", "features", FeaturesConfig),
        ("train", "train", TrainConfig),
        ("evaluate", "evaluate", EvaluateConfig),
    ):
        listed = {p.removeprefix(f"{section}.") for p in stages[stage]["params"] if p.startswith(f"{section}.")}
        assert section not in stages[stage]["params"], f"{stage} tracks the whole `{section}` section"
        assert listed == set(schema.model_fields) - untracked, stage
    # stages that also embed videos the evaluate way (train's validation, the figures) track what changes that
    for stage in ("train", "train_ablation", "figures"):
        listed = {p.removeprefix("evaluate.") for p in stages[stage]["params"] if p.startswith("evaluate.")}
        assert {"batch_size", "precision", "decode_on", "max_videos"} <= listed, stage
