"""What every training loop of the pipeline shares (train.py, pretrain.py): seeding for bit-identical
reruns and the learning-rate schedule. Kept apart so that the pretrain stage depends on these and
not on the retrieval training code."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every generator and make reruns bit-identical. Without deterministic algorithms the CPU
    backward of indexing with repeated indices (objective.py gives each frame its caption's tokens)
    adds in parallel with atomic float additions, in an order that varies between runs whenever the
    valid frames of a batch do not split evenly over the threads (benchmarks/train_determinism.py)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, where CUDA has no such kernel


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
