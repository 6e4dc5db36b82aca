"""Training step time for K trainable blocks (docs/model.md, section "Where each part lives"): K ∈ {all, 4, 2, 1} with ViT-B/32.

    python benchmarks/trainable_blocks.py                 # ViT-B/32, batch 4 × 12 frames, CPU
    python benchmarks/trainable_blocks.py --batch 8

Random weights and cached tokens of the right shape; one step = forward, backward, AdamW update of
the base model (meanP), median of the repeats. The accuracy of each K on the synthetic default comes
from the pipeline itself (`dvc exp run -S train.trainable_blocks=K`); docs/benchmarks.md puts both
side by side.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from mascot.clip_model import vision_layers
from mascot.config import VariantConfig

from mascot_step import step_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    depth = vision_layers(args.model)
    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.model}, batch {args.batch} × {args.frames} frames"
    )
    print()
    print("| K (trainable blocks) | step (s) | vs all |")
    print("|---:|---:|---:|")
    base = None
    for k in sorted({depth, 4, 2, 1}, reverse=True):
        if k > depth:
            continue
        seconds = statistics.median(
            step_times(VariantConfig(temporal="meanP"), args.model, args.batch, args.frames, k, 32, args.repeats, args.warmup)
        )
        base = base or seconds
        label = f"{k} (all)" if k == depth else str(k)
        print(f"| {label} | {seconds:.3f} | {seconds / base:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
