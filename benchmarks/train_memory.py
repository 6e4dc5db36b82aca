"""What a paper-scale training step needs in memory, measured per frame on any machine.

    python benchmarks/train_memory.py            # ViT-B/32 and ViT-B/16 (QuickGELU), meanP and MASCOT
    python benchmarks/train_memory.py --smoke    # the tiny config, seconds

Peak memory of a training step = the model's state (fp32 weights, gradients and AdamW's two moments:
16 bytes per trained parameter) + the activations autograd keeps for the backward pass (which grow
with batch × frames) + transient buffers. The activations are measured exactly, without a GPU: a
`saved_tensors_hooks` pair sums the bytes of every distinct storage saved during one forward pass of
the whole objective (unmasked view, both masked views, ISC, KL for MASCOT) under bf16 autocast (on
the CPU: CPU autocast casts a slightly different op list than CUDA's, so this is an estimate of the
GPU's) and in fp32. Two batch sizes give the per-frame slope; the paper batch (128 videos × 12
frames) is extrapolated from it.

With `train.grad_checkpointing` a block keeps only its input (counted by wrapping the checkpoint
call) and recomputes its activations in the backward pass, one block at a time: the largest single
block's activations (measured by running each checkpointed call once more under the hooks) are
added as the recomputation's peak. Other transient buffers (the optimizer step's temporaries, the
allocator's slack) are not included, and each video's caption lands in the per-frame slope: an estimate, not a bound. The checkpoint
size is measured by saving.
"""

from __future__ import annotations

import argparse
import io
import platform
from contextlib import ExitStack
from dataclasses import dataclass
from unittest import mock

import open_clip.transformer
import torch

import mascot.clip_model
from mascot.clip_model import create_clip, tokens_per_frame, vision_layers
from mascot.config import ClipConfig, load_params
from mascot.model import RetrievalModel
from mascot.objective import Objective

# Frames per video of the measurement (the per-frame slope does not depend on it; ViT-B/16's MASCOT
# at 2 × 12 frames exceeds a 24 GB CPU machine in fp32).
FULL = {"models": ("ViT-B-32-quickgelu", "ViT-B-16-quickgelu"), "batches": (1, 2), "frames": 4, "words": 32}
SMOKE = {"models": ("mascot-tiny",), "batches": (2, 4), "frames": 4, "words": 12}
PAPER_BATCH = 128 * 12  # videos × frames of the paper recipe (CLIP4Clip's batch 128, 12 frames)
MODES = (("bf16", False), ("bf16", True), ("fp32", False))  # precision, grad checkpointing


@dataclass
class Measurement:
    model: str
    variant: str
    trained_params: int
    checkpoint_bytes: int
    per_frame: dict[tuple[str, bool], float]  # mode → bytes kept for backward (+ recompute peak) per frame
    fixed: dict[tuple[str, bool], float]  # mode → bytes that do not grow with the batch (text side etc.)

    def estimate(self, mode: tuple[str, bool]) -> float:
        """Bytes at the paper batch: model state + fixed + per frame × 128 × 12."""
        return 16 * self.trained_params + self.fixed[mode] + self.per_frame[mode] * PAPER_BATCH


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn` runs."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def kept_bytes(fn, checkpointing: bool) -> int:
    """What `fn`'s forward keeps for backward; with checkpointing, the checkpointed calls' inputs
    plus the largest call's own activations (its recomputation in the backward pass)."""
    inputs: dict[int, int] = {}
    largest = [0]
    original = torch.utils.checkpoint.checkpoint

    def recording(block, *args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                inputs[a.untyped_storage().data_ptr()] = a.untyped_storage().nbytes()
        largest[0] = max(largest[0], saved_bytes(lambda: block(*args)))
        return original(block, *args, **kwargs)

    with ExitStack() as stack:
        if checkpointing:
            stack.enter_context(mock.patch.object(mascot.clip_model, "checkpoint", recording))
            stack.enter_context(mock.patch.object(open_clip.transformer, "checkpoint", recording))
        outside = saved_bytes(fn)
    return outside + sum(inputs.values()) + largest[0]


def build(model_name: str, variant_name: str, frames: int) -> tuple[Objective, tuple[int, ...]]:
    params = load_params()
    variant = params.variant(variant_name)
    clip = create_clip(ClipConfig(model=model_name, pretrained=None))
    blocks = vision_layers(model_name)  # K = L, the paper recipe
    return Objective(RetrievalModel(clip, blocks, variant, frames), variant).train(), tokens_per_frame(model_name)


def measure(model_name: str, variant_name: str, cfg: dict) -> Measurement:
    torch.manual_seed(0)
    objective, tokens_shape = build(model_name, variant_name, cfg["frames"])
    words = cfg["words"]

    def kept(batch: int, precision: str, checkpointing: bool) -> int:
        tokens = torch.randn(batch, cfg["frames"], *tokens_shape)
        mask = torch.ones(batch, cfg["frames"], dtype=torch.bool)
        text = torch.randint(1, 49000, (batch, words))
        text[:, words // 2] = 49407  # end of text (the highest id) mid-sequence, padding after it
        text[:, words // 2 + 1 :] = 0
        objective.model.set_grad_checkpointing(checkpointing)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                objective(tokens, mask, text)["loss"]

        return kept_bytes(step, checkpointing)

    per_frame, fixed = {}, {}
    small, large = cfg["batches"]
    for mode in MODES:
        a, b = kept(small, *mode), kept(large, *mode)
        per_frame[mode] = (b - a) / ((large - small) * cfg["frames"])
        fixed[mode] = a - per_frame[mode] * small * cfg["frames"]
    buffer = io.BytesIO()
    torch.save(objective.model.state_dict(), buffer)
    trained = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    return Measurement(model_name, variant_name, trained, buffer.tell(), per_frame, fixed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny config: checks the script in seconds")
    args = parser.parse_args()
    cfg = SMOKE if args.smoke else FULL
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}; K = L")
    print(f"activations measured at {cfg['batches']} videos × {cfg['frames']} frames, extrapolated to 128 × 12 frames")
    print()
    print(
        "| model | variant | trained params | checkpoint | kept / frame: fp32 | bf16 | bf16 + grad ckpt"
        " | model state | est. peak 128 × 12, bf16 | bf16 + grad ckpt |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    gib, mib = 2**30, 2**20
    for model_name in cfg["models"]:
        for variant_name in ("meanP", "mascot"):
            m = measure(model_name, variant_name, cfg)
            frame = {mode: f"{m.per_frame[mode] / mib:.1f} MiB" for mode in MODES}
            print(
                f"| {m.model} | {m.variant} | {m.trained_params / 1e6:.1f} M | {m.checkpoint_bytes / mib:,.0f} MiB"
                f" | {frame['fp32', False]} | {frame['bf16', False]} | {frame['bf16', True]}"
                f" | {16 * m.trained_params / gib:.1f} GiB | {m.estimate(('bf16', False)) / gib:.0f} GiB"
                f" | {m.estimate(('bf16', True)) / gib:.0f} GiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
