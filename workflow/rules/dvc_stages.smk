# One Snakemake rule per resolved DVC stage, derived from dvc.yaml + params.yaml so that the two
# engines cannot drift: same command, same inputs, same outputs. The stage's own parameter values
# are passed as a rule param, so Snakemake's params rerun trigger sees the edits DVC sees.
# Threads, memory, runtime and GPUs per stage come from workflow/resources.yaml; a job that asks for
# a GPU runs through `python -m mascot.gpu_slot`, which gives it its own CUDA_VISIBLE_DEVICES (a
# train stage gets `train.processes` GPUs, one per process it starts).
# Uses DVC's stage index (internal API; dvc is pinned in pyproject.toml).
import json
import re
from pathlib import Path

import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo


def rule_name(address):
    """`train@synthetic-meanP-0` → `train__synthetic_meanP_0` (Snakemake rule names are identifiers)."""
    return re.sub(r"\W", "_", address.replace("@", "__"))


def _is_dir(path):
    # Directory outputs of this pipeline have no suffix (raw/, frames/, features/, tables/).
    return Path(path).suffix == ""


def resolved_stages(root):
    stages = []
    with Repo(root) as repo:
        for stage in repo.index.stages:
            params = {}
            files = []
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(dep.read_params())
                else:
                    files.append(dep.def_path)
            stages.append(
                {
                    "address": stage.name,
                    "cmd": stage.cmd,
                    "deps": files,
                    "outs": [out.def_path for out in stage.outs],
                    "params": json.dumps(params, sort_keys=True, default=str),
                }
            )
    return stages


def _inputs(deps, produced):
    """A dependency on a folder that holds other stages' outputs becomes those outputs."""
    inputs = []
    for dep in deps:
        inside = [o for o in produced if o != dep and Path(o).is_relative_to(dep)]
        inputs.extend(inside or [dep])
    return inputs


def load_resources(path, stages):
    """workflow/resources.yaml, checked once against the stage names of dvc.yaml."""
    table = yaml.safe_load(Path(path).read_text())
    unknown = set(table["stages"]) - {s["address"].split("@")[0] for s in stages}
    if unknown:
        raise ValueError(f"{path} names stages that dvc.yaml does not have: {sorted(unknown)}")
    return table


def stage_resources(stage, table):
    """threads / mem_mb / runtime / gpu of a stage (`train@synthetic-meanP-0` → `train`); a `gpu`
    given as a params key (`train.processes`) is read from the stage's own params, and
    `vision_cache` is 1 where the stage caches the frozen prefix (K < L), else 0."""
    res = {**table["default"], **table["stages"].get(stage["address"].split("@")[0], {})}
    params = json.loads(stage["params"])
    if res["gpu"] == "vision_cache":  # one GPU where the stage encodes frames (K < L), none at K = L
        from mascot.clip_model import vision_layers  # torch + open_clip: seconds, and only for such stages

        res["gpu"] = int(params["train.trainable_blocks"] < vision_layers(params["clip"]["model"]))
    elif isinstance(res["gpu"], str):
        section, _, key = res["gpu"].partition(".")
        res["gpu"] = int(params[res["gpu"]] if res["gpu"] in params else params[section][key])
    return res


DVC_STAGES = resolved_stages(workflow.basedir)
RESOURCES = load_resources(Path(workflow.basedir) / "workflow" / "resources.yaml", DVC_STAGES)
PRODUCED = [o for s in DVC_STAGES for o in s["outs"]]


for _stage in DVC_STAGES:
    _res = stage_resources(_stage, RESOURCES)

    rule:
        name:
            rule_name(_stage["address"])
        input:
            _inputs(_stage["deps"], PRODUCED),
        output:
            [directory(o) if _is_dir(o) else o for o in _stage["outs"]],
        log:
            f"logs/snakemake/{rule_name(_stage['address'])}.log",
        conda:
            "../envs/mascot.yaml"
        threads: _res["threads"]
        resources:
            mem_mb=_res["mem_mb"],
            runtime=_res["runtime"],
            gpu=_res["gpu"],
        params:
            cmd=_stage["cmd"],
            dvc_params=_stage["params"],
            launcher=f"python -m mascot.gpu_slot --need {_res['gpu']} -- " if _res["gpu"] else "",
        shell:
            "{params.launcher}{params.cmd} > {log} 2>&1"
