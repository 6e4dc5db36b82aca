"""Give a command its own GPU: Snakemake counts GPUs (`--resources gpu=N`) but does not say which.

    python -m mascot.gpu_slot -- python -m mascot train ...

Picks the first free GPU id in [0, N) (the first `--need` free ids for a job of several processes)
by taking an exclusive lock file per id (released when the command ends, also if it is killed),
sets CUDA_VISIBLE_DEVICES to it and runs the command. N comes
from `--gpus`, else $MASCOT_GPUS, else the GPUs CUDA reports. Under SLURM, or whenever
CUDA_VISIBLE_DEVICES is already set, the scheduler has assigned devices and the command runs as it is;
without GPUs it runs on the CPU.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

DEFAULT_LOCK_DIR = Path(".snakemake") / "gpu-slots"


def visible_gpus() -> int:
    if os.environ.get("MASCOT_GPUS"):
        return int(os.environ["MASCOT_GPUS"])
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0


@contextmanager
def gpu_slot(count: int, lock_dir: Path = DEFAULT_LOCK_DIR, poll_s: float = 0.5, timeout_s: float | None = None, need: int = 1):
    """Hold `need` free GPU ids in [0, count) (the lowest free ones) for the duration of the block;
    yields their list. A job needing several takes them all at once or none, and waits."""
    if need > count:
        raise ValueError(f"gpu_slot: a job needs {need} GPUs but this machine has {count}.")
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        held: list[tuple[int, object]] = []
        try:
            for gpu in range(count):
                handle = open(lock_dir / f"gpu{gpu}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                held.append((gpu, handle))
                if len(held) == need:
                    break
            if len(held) == need:
                yield [gpu for gpu, _ in held]
                return
        finally:
            for _, handle in held:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"gpu_slot: {need} of the {count} GPUs did not come free within {timeout_s} s ({lock_dir}).")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mascot.gpu_slot", description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=None, help="GPUs on this machine (default: $MASCOT_GPUS or CUDA's count)")
    parser.add_argument("--lock-dir", type=Path, default=DEFAULT_LOCK_DIR)
    parser.add_argument("--need", type=int, default=1, help="GPUs the command needs (train.processes for a train stage)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    count = args.gpus if args.gpus is not None else visible_gpus()
    if "SLURM_JOB_ID" in os.environ or "CUDA_VISIBLE_DEVICES" in os.environ or count < 1:
        return subprocess.call(command)  # devices assigned by the scheduler, or a CPU-only machine
    if args.need > count:
        print(f"gpu_slot: the command needs {args.need} GPUs but this machine has {count}: {' '.join(command)}", file=sys.stderr)
        return 2
    with gpu_slot(count, args.lock_dir, need=args.need) as gpus:
        return subprocess.call(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))})


if __name__ == "__main__":
    sys.exit(main())
