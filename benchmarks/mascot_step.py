"""Time one training step (forward + backward + AdamW update) of MASCOT against the base model.

Same batch, same tower split, random weights, synthetic cached tokens: the comparison isolates
what MASCOT adds (one unmasked pass with CLS attention, two passes on the kept tokens, the ISC
decoder). Goal from the MASCOT issue: MASCOT's step ≤ 2.5 × the baseline's.

    python benchmarks/mascot_step.py                       # tiny default and ViT-B/32, CPU
    python benchmarks/mascot_step.py --configs ViT-B-32 --batch 8 --frames 12 --blocks 12

Prints a Markdown table; record it with the machine in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mascot.clip_model import create_clip, tokens_per_frame, vision_layers
from mascot.config import ClipConfig, MaskConfig, TrainConfig, VariantConfig
from mascot.model import RetrievalModel
from mascot.objective import Objective
from mascot.train import optimizer_for

# (model, batch, frames, trainable blocks K, words): the tiny default's training shape, and a
# ViT-B/32 run at a CPU-sized batch with the paper's 12 frames and 32 words.
DEFAULT_CONFIGS = {"mascot-tiny": (32, 8, 4, 32), "ViT-B-32": (4, 12, 12, 32)}


def step_times(
    variant: VariantConfig, model_name: str, batch: int, frames: int, blocks: int, words: int, repeats: int, warmup: int
) -> list[float]:
    clip = create_clip(ClipConfig(model=model_name, pretrained=None))
    per_frame = tokens_per_frame(model_name)
    torch.manual_seed(0)
    objective = Objective(RetrievalModel(clip, blocks, variant, frames), variant).train()
    optimizer = optimizer_for(objective, TrainConfig())
    return time_steps(objective, optimizer, per_frame, batch, frames, words, repeats, warmup)


def time_steps(
    objective, optimizer, tokens_per_frame, batch: int, frames: int, words: int, repeats: int, warmup: int
) -> list[float]:
    """Seconds of each timed step (forward, backward, update) on random cached tokens and captions."""
    tokens = torch.randn(batch, frames, *tokens_per_frame)
    mask = torch.ones(batch, frames, dtype=torch.bool)
    text = torch.randint(1, 49000, (batch, words))
    text[:, words // 2] = 49407  # end of text halfway, padding after it
    text[:, words // 2 + 1 :] = 0
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        loss = objective(tokens, mask, text)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="open_clip model names")
    parser.add_argument("--batch", type=int, help="override the batch of every config")
    parser.add_argument("--frames", type=int, help="override the frames per video")
    parser.add_argument("--blocks", type=int, help="override K (trainable blocks); default per config")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = VariantConfig(temporal="meanP")
    mascot = VariantConfig(temporal="meanP", mask=MaskConfig())
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU"
    )
    print()
    print("| model | K / L | batch × frames | baseline step (s) | MASCOT step (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.configs:
        batch, frames, blocks, words = DEFAULT_CONFIGS.get(name, (4, 12, vision_layers(name), 32))
        batch, frames, blocks = args.batch or batch, args.frames or frames, args.blocks or blocks
        b = statistics.median(step_times(base, name, batch, frames, blocks, words, args.repeats, args.warmup))
        m = statistics.median(step_times(mascot, name, batch, frames, blocks, words, args.repeats, args.warmup))
        print(
            f"| {name} | {blocks} / {vision_layers(name)} | {batch} × {frames} | {b:.3f} | {m:.3f} | {m / b:.2f}× |", flush=True
        )


if __name__ == "__main__":
    main()
