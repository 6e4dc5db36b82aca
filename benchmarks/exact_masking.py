"""Two ways to make MASCOT's masked views exact, measured: step time and peak memory.

A masked view drops patch tokens; it carries nothing of the dropped patches only if no block has
mixed the tokens before the drop. Two designs achieve that:

  whole tower (chosen)   the cache holds the patch embeddings and all L blocks train (K = L)
  online frozen blocks   the cache holds the patch embeddings; the bottom L - K blocks run without
                         gradient on each view's visible tokens at every step, the top K train

and, for reference, the inexact design the project had before (the bottom L - K blocks' output
cached, tokens dropped after them). Each row runs in a fresh process (peak RSS = that process's
ru_maxrss: model, optimizer state and the step's activations).

    python benchmarks/exact_masking.py                     # tiny default and ViT-B/32, CPU
    python benchmarks/exact_masking.py --configs mascot-tiny --repeats 1 --warmup 0

Prints a Markdown table; record it with the machine in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import statistics
from queue import Empty

import torch

from mascot.clip_model import VisionTop, _Blocks, create_clip, drop_tokens, tokens_per_frame, vision_layers
from mascot.config import ClipConfig, MaskConfig, TrainConfig, VariantConfig
from mascot.model import RetrievalModel
from mascot.objective import Objective
from mascot.train import optimizer_for

from mascot_step import time_steps  # benchmarks/ is on sys.path when this file runs

# model → (batch, frames, K of the online/inexact rows, words): the tiny default's training shape,
# and ViT-B/32 at a CPU-sized batch with the paper's 12 frames.
DEFAULT_CONFIGS = {"mascot-tiny": (32, 8, 2, 32), "ViT-B-32": (4, 12, 2, 32)}
DESIGNS = ("whole tower", "online frozen blocks", "cached frozen blocks (inexact)")


class OnlineFrozenTop(VisionTop):
    """The top K blocks behind the bottom L - K run online, without gradient, on the visible tokens."""

    def __init__(self, visual: torch.nn.Module, trainable_blocks: int):
        super().__init__(visual, trainable_blocks)
        blocks = list(visual.transformer.resblocks)
        self.frozen = _Blocks(blocks[: len(blocks) - trainable_blocks], visual.transformer.batch_first)
        self.frozen.requires_grad_(False)
        self.whole_tower = True  # exact: the drop happens before any block

    def run(self, tokens, keep=None, attention=False):
        if keep is not None:
            tokens = drop_tokens(tokens, keep)
        with torch.no_grad():
            tokens = self.frozen(tokens)
        return super().run(tokens, None, attention)


def measure(
    design: str, model_name: str, batch: int, frames: int, k: int, words: int, repeats: int, warmup: int, threads: int, queue
) -> None:
    torch.set_num_threads(threads)
    depth = vision_layers(model_name)
    variant = VariantConfig(temporal="meanP", mask=MaskConfig())
    clip = create_clip(ClipConfig(model=model_name, pretrained=None))
    torch.manual_seed(0)
    cached_blocks = k if design == "cached frozen blocks (inexact)" else depth
    model = RetrievalModel(clip, cached_blocks, variant, frames)
    if design == "online frozen blocks":
        model.vision = OnlineFrozenTop(clip.visual, k)
    elif design == "cached frozen blocks (inexact)":
        model.vision.whole_tower = True  # bypass the guard: this row measures the old, leaky design
    objective = Objective(model, variant).train()
    optimizer = optimizer_for(objective, TrainConfig())
    per_frame = tokens_per_frame(model_name)
    times = time_steps(objective, optimizer, per_frame, batch, frames, words, repeats, warmup)
    queue.put((statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_isolated(*args) -> tuple[float, float]:
    ctx = multiprocessing.get_context("spawn")  # a forked child cannot use the parent's OpenMP pool
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(*args, queue))
    proc.start()
    while True:  # a child that dies (an error, printed above) must not leave the parent waiting forever
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the measuring process ended without a result (exit code {proc.exitcode})") from None
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="open_clip model names")
    parser.add_argument("--batch", type=int, help="override the batch of every config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads, CPU")
    print()
    print(
        "| model | design | trained blocks / L | batch × frames | MASCOT step (s) | vs whole tower | peak RSS (MiB) | exact (by design) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in args.configs:
        batch, frames, k, words = DEFAULT_CONFIGS.get(name, (4, 12, 2, 32))
        batch = args.batch or batch
        depth = vision_layers(name)
        reference = None
        for design in DESIGNS:
            step, rss = run_isolated(design, name, batch, frames, k, words, args.repeats, args.warmup, args.threads)
            reference = reference or step
            trained = depth if design == "whole tower" else k
            exact = "no" if "inexact" in design else "yes"
            print(
                f"| {name} | {design} | {trained} / {depth} | {batch} × {frames} | {step:.3f} | {step / reference:.2f}× | {rss:.0f} | {exact} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
