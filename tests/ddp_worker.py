"""One training step of the objective on a fixed global batch, in however many processes launched it.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT VARIANT
    python tests/ddp_worker.py OUT VARIANT            # one process, the same global batch

Process 0 saves the global loss and the parameter gradients to OUT.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from mascot import distributed
from mascot.clip_model import create_clip
from mascot.config import ClipConfig, MaskConfig, VariantConfig
from mascot.model import RetrievalModel
from mascot.objective import Objective

VARIANTS = {
    "base": VariantConfig(temporal="meanP"),
    "mascot": VariantConfig(temporal="seqTransf", temporal_layers=2, mask=MaskConfig()),
}


def global_batch(b: int = 6, t: int = 3, words: int = 10):
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(b, t, 17, 128, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    text = torch.randint(1, 49000, (b, words), generator=g)
    text[:, 6] = 49407
    text[:, 7:] = 0
    return tokens, mask, text


def main(out: str, variant: str) -> None:
    rank, size = distributed.init_from_env()
    torch.manual_seed(0)
    objective = Objective(
        RetrievalModel(create_clip(ClipConfig(pretrained=None)), 4, VARIANTS[variant], 3), VARIANTS[variant]
    ).train()  # K = L
    trainer = torch.nn.parallel.DistributedDataParallel(objective) if size > 1 else objective
    tokens, mask, text = global_batch()
    rows = distributed.shard(torch.arange(len(tokens)), rank, size)
    terms = trainer(tokens[rows], mask[rows], text[rows])
    terms["loss"].backward()
    loss = terms["loss"].detach().clone()
    if size > 1:
        dist.all_reduce(loss)
        loss /= size
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "grads": grads, "processes": size}, out)
    if size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
