"""Two gloo processes on halves of a global batch = one process on the whole batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mascot.distributed import shard, world

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} | (env_extra or {})
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", ["base", "mascot"])
def test_two_processes_match_one_on_the_global_batch(tmp_path, variant):
    _run([str(WORKER), str(tmp_path / "one.pt"), variant])
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path / "two.pt"), variant])
    one, two = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    assert one["processes"] == 1 and two["processes"] == 2
    torch.testing.assert_close(two["loss"], one["loss"], atol=1e-5, rtol=1e-5)
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 10
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_single_process_needs_no_launcher():
    assert world() == (0, 1)
    assert shard(list(range(8)), 1, 2) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="multiple"):
        shard(list(range(7)), 0, 2)


def test_the_train_stage_starts_its_own_processes(tmp_path, tiny_features, tiny_params):
    """`train.processes: 2` through the stage's own command (as dvc repro runs it): two gloo
    processes under torchrun train like one process on the same global batches (the contrastive
    loss of every step, which depends on all weights updated so far, agrees)."""
    import csv

    import yaml

    from mascot import train
    from mascot.train_log import steps_path

    from .conftest import tiny_params_dict

    raw = tiny_params_dict()
    raw["train"].update({"processes": 2, "device": "cpu"})  # gloo, also on a machine with GPUs
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    two = tmp_path / "two.csv"
    flags = ["--features", str(tiny_features), "--dataset", "synthetic", "--variant", "mascot", "--seed", "0"]
    _run(
        [
            "-m",
            "mascot",
            "--params",
            str(tmp_path / "params.yaml"),
            "train",
            *flags,
            "--model-out",
            str(tmp_path / "two.pt"),
            "--log-out",
            str(two),
        ]
    )
    one = tmp_path / "one.csv"
    cpu = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"device": "cpu"})})
    train.run(cpu, tiny_features, "synthetic", "mascot", 0, tmp_path / "one.pt", one)
    rows = [list(csv.DictReader(steps_path(p).open())) for p in (one, two)]
    assert len(rows[0]) == len(rows[1]) >= 3
    for a, b in zip(*rows, strict=True):  # the global batch's InfoNCE (the logged ISC/KL terms are process 0's share)
        assert float(b["nce"]) == pytest.approx(float(a["nce"]), rel=1e-4, abs=1e-5), (a, b)
    assert torch.load(tmp_path / "two.pt", weights_only=True)["meta"]["seed"] == 0


def test_processes_must_split_the_batch_and_refuse_gradient_caching():
    from mascot.config import parse_params
    from mascot.errors import ConfigError

    from .conftest import tiny_params_dict

    for update, message in (
        ({"processes": 3}, "multiple of processes"),
        ({"processes": 2, "grad_cache_chunk": 4}, "one process"),
    ):
        raw = tiny_params_dict()
        raw["train"].update(update)
        with pytest.raises(ConfigError, match=message):
            parse_params(raw)
