"""Paper presets (presets/presets.yaml): dataset × backbone settings applied over params.yaml.

A preset is data, not code: the shared recipe, then the dataset's protocol, then the backbone. It is
applied either in place (`--apply`, keeping params.yaml's comments, for `dvc repro` and Snakemake)
or as `-S key=value` overrides for `dvc exp run`, so presets are selected without editing code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import parse_params
from .errors import ConfigError

PRESETS_FILE = Path("presets/presets.yaml")  # relative to the repository root, like params.yaml


def _load(path: Path = PRESETS_FILE) -> dict:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: preset file not found (run from a checkout of the repository).") from None


def names(path: Path = PRESETS_FILE) -> list[str]:
    data = _load(path)
    return [f"{d}-{b}" for d in data["datasets"] for b in data["backbones"]]


def overrides(name: str, path: Path = PRESETS_FILE) -> dict[str, Any]:
    """Dotted key → value of preset `name`, `datasets` included."""
    data = _load(path)
    for dataset in data["datasets"]:
        backbone = name.removeprefix(f"{dataset}-")
        if backbone != name and backbone in data["backbones"]:
            return {"datasets": [dataset], **data["recipe"], **data["datasets"][dataset], **data["backbones"][backbone]}
    raise ConfigError(f"Unknown preset `{name}`; presets are {', '.join(names(path))} (defined in {path}).")


def _set(tree: dict, dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"{source}: preset key `{dotted}` has no section `{key}` in the params file.")
        node = node[key]
    node[leaf] = value


def apply(raw: dict, name: str) -> dict:
    """`raw` params with the preset applied (validated); `raw` itself is changed."""
    for key, value in overrides(name).items():
        _set(raw, key, value, name)
    parse_params(raw, source=f"params with preset {name}")
    return raw


def apply_in_place(params_file: Path, name: str) -> None:
    """Rewrite `params_file` with the preset, keeping its comments and key order (ruamel round trip)."""
    from ruamel.yaml import YAML

    from .atomic import atomic_file

    rt = YAML()
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    raw = rt.load(params_file.read_text())
    apply(raw, name)
    with atomic_file(params_file) as tmp, open(tmp, "w") as f:
        rt.dump(raw, f)


def exp_run_args(name: str) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` (values in YAML flow style)."""
    out = []
    for key, value in overrides(name).items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        out += ["-S", f"{key}={text}"]
    return out
