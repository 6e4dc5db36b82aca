"""Paper presets (presets/presets.yaml): dataset × backbone settings applied over params.yaml.

A preset is data, not code: the shared recipe, then the dataset's protocol, then the backbone. It is
applied either in place (`--apply`, keeping params.yaml's comments, for `dvc repro` and Snakemake)
or as `-S key=value` overrides for `dvc exp run` (`--exp-run`: the preset's overrides first, the
user's after them, so that the user's win), so presets are selected without editing code.
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


def _set(tree: dict, dotted: str, value: Any, source: str) -> tuple[dict, str]:
    """Set the dotted key; return the mapping that holds it and its last part."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"{source}: preset key `{dotted}` has no section `{key}` in the params file.")
        node = node[key]
    node[leaf] = value
    return node, leaf


def apply(raw: dict, name: str) -> dict:
    """`raw` params with the preset applied (validated); `raw` itself is changed."""
    _apply(raw, name)
    return raw


def _apply(raw: dict, name: str) -> list[tuple[dict, str]]:
    """Apply the preset to `raw` and validate it; the (mapping, key) of every key whose value changed."""
    changed = []
    for key, value in overrides(name).items():
        before = _lookup(raw, key)
        if before == value:  # unchanged: keep the node as it is (a flow list stays a flow list)
            continue
        node, leaf = _set(raw, key, value, name)
        changed.append((node, leaf))
    parse_params(raw, source=f"params with preset {name}")
    return changed


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _mark(node, leaf: str, text: str) -> None:
    """Replace the end-of-line comment of `leaf` (ruamel mapping) by `text`; comment lines that
    follow it (stored in the same token) are kept."""
    items = node.ca.items.get(leaf)
    token = items[2] if items and len(items) > 2 else None
    if token is None:
        node.yaml_add_eol_comment(text, leaf)
        return
    first, newline, rest = token.value.partition("\n")
    token.value = text + (newline + rest if first.lstrip().startswith("#") else token.value)


def _float_text(value: float) -> str:
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def apply_in_place(params_file: Path, name: str) -> None:
    """Rewrite `params_file` with the preset, keeping its comments and key order (ruamel round trip);
    the comment of every key the preset changes becomes `# preset <name>` (the old one described the
    old value)."""
    from ruamel.yaml import YAML

    from .atomic import atomic_file

    rt = YAML()
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    # floats always with a dot (1.0e-06, not 1e-06), which YAML 1.1 readers (PyYAML) would take for a string
    rt.representer.add_representer(float, lambda r, v: r.represent_scalar("tag:yaml.org,2002:float", _float_text(v)))
    raw = rt.load(params_file.read_text())
    for node, leaf in _apply(raw, name):
        _mark(node, leaf, f"# preset {name}")
    with atomic_file(params_file) as tmp, open(tmp, "w") as f:
        rt.dump(raw, f)


def exp_run_args(name: str) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` (values in YAML flow style)."""

    def flow(value: Any) -> str:
        if isinstance(value, list):  # no spaces, so that each override stays one shell word
            return "[" + ",".join(flow(v) for v in value) + "]"
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    out = []
    for key, value in overrides(name).items():
        out += ["-S", f"{key}={flow(value)}"]
    return out


def exp_run_command(name: str, extra: list[str]) -> list[str]:
    """`dvc exp run` with the preset's overrides first and `extra` (the user's arguments) last:
    of two `-S` for the same key, DVC keeps the later one, so the user's override wins."""
    return ["dvc", "exp", "run", *exp_run_args(name), *extra]


def next_steps(name: str, params_file: Path) -> str:
    """What to do after `--apply`: place files, fetch weights once, run."""
    from .datasets import dataset_config_class

    data = overrides(name)
    dataset = data["datasets"][0]
    by_hand = [f for f, spec in getattr(dataset_config_class(dataset), "DEFAULT_FILES", {}).items() if spec.get("url") is None]
    place = (
        f"set data.{dataset}.source_dir to the folder where you placed its {' and '.join(by_hand)} (README, section Datasets)"
        if by_hand
        else f"files are downloaded; set data.{dataset}.source_dir only if you placed some by hand (README, section Datasets)"
    )
    weights = data.get("clip.pretrained")
    fetch = (
        f"clip.pretrained: {weights} needs the network once (cached in clip.cache_dir or $HF_HOME); offline, point it at a local "
        "checkpoint file (null means random weights, which this recipe's clip_lr_scale barely trains)"
    )
    return (
        f"preset {name} applied to {params_file} (changed keys are marked `# preset {name}`). Next: 1. {place}; "
        f"2. {fetch}; 3. run `dvc repro tables figures` (the variants of `variants`, their tables and figures; `dvc repro tables_ablation` adds the "
        "ablation rows: one more training per ablation variant and seed; a bare `dvc repro` runs both), or Snakemake."
    )
