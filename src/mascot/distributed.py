"""Multi-process training (torchrun) with the global batch as contrastive negatives.

A single process needs no launcher: every helper here is the identity when no process group is
initialised. With `train.processes: N` the train stage restarts itself under torchrun (`launch`),
so `dvc repro` and Snakemake train one run on N GPUs (gloo processes on a CPU-only machine); each
process takes 1/N of every global batch; text and video embeddings are all-gathered *with gradients*, so every process
computes the loss over the same global similarity matrix, and DistributedDataParallel averages the
parameter gradients. The gather's backward sums the gradient of each slice over the processes, which,
after DDP's average, is exactly the single-process gradient on the global batch.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import torch
import torch.distributed as dist

from .devices import select_device
from .errors import ConfigError, MascotError

log = logging.getLogger(__name__)


def launch(processes: int, argv: list[str], device: str = "auto") -> None:
    """Run `python -m mascot ARGV` in `processes` processes on this machine (torchrun, standalone
    rendezvous) and wait for them: one GPU each when `device` (train.device) selects CUDA, gloo
    processes on the CPU otherwise. A SIGTERM to this process is passed on to torchrun, which
    stops the workers (a GPU slot is never released while they still run)."""
    cuda = select_device(device).type == "cuda"
    gpus = torch.cuda.device_count() if cuda else 0
    if cuda and gpus < processes:
        raise ConfigError(
            f"`train.processes: {processes}` needs {processes} GPUs but {gpus} are visible (CUDA_VISIBLE_DEVICES); lower "
            "train.processes, or give the job more GPUs (Snakemake asks for train.processes of them)."
        )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", "mascot"]
    log.info(
        "train: starting %d processes (%s): %s", processes, f"{processes} GPUs" if cuda else "gloo on the CPU", " ".join(argv)
    )
    child = subprocess.Popen([*command, *argv])
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        returncode = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if returncode:
        raise MascotError(
            f"train: the {processes} training processes failed (exit status {returncode}); the first process's error is "
            "above. Nothing was written; the resumable state (--state-dir) is kept, so rerunning continues from it."
        )


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(cuda: bool | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (nothing to do otherwise):
    NCCL with one GPU per process when `cuda` (default: when CUDA is available), else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() if cuda is None else cuda
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return world()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process holds the same global loss: sum their slices' gradients
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (equal first dimension on every process) over processes, keeping gradients."""
    return _GatherWithGrad.apply(x) if world()[1] > 1 else x


def shard(rows, rank: int, size: int):
    """This process's contiguous share of a global batch (the gather restores the global order)."""
    if len(rows) % size:
        raise ValueError(
            f"a global batch of {len(rows)} does not split over {size} processes; make train.batch_size a multiple of it"
        )
    local = len(rows) // size
    return rows[rank * local : (rank + 1) * local]
