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
