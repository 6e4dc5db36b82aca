"""GPU check: the throughputs and peak memory of the paper route's GPU stages, per backbone.

    python benchmarks/gpu_check.py            # one CUDA GPU: ViT-B/32 and ViT-B/16, bf16, batch 128 × 12 frames
    python benchmarks/gpu_check.py --smoke    # any machine, CPU included: tiny config, tiny batch, seconds

For each backbone at K = L (the paper recipe, as the presets set it, gradient checkpointing on; the
features stage then only tokenizes captions, and train and evaluate start from the frames):
1. for reference, frames/s of the whole tower's inference on frames already on the device, and of
   JPEG decoding on the device (`decode_on: device`: one torchvision decode_jpeg call per batch of
   128 × 12 frames at quality 95, 4:4:4, as the frames stage stores them; nvJPEG on a GPU);
2. evaluate stage: videos/s embedded from uint8 frames in host memory (encode_video: upload, the
   frozen patch embedding and the tower on the device);
3. train stage: seconds per step of the baseline (meanP) and of MASCOT (patch embedding, unmasked pass,
   both masked views, ISC decoder, backward, clipping, AdamW) at batch 128 × 12 frames, the batch
   uploaded from pinned uint8 frames as the loader hands it over (the loader's own reading and
   JPEG decoding are benchmarks/data_loader.py), and again with the batch's JPEG files decoded on
   the device within the step (`decode_on: device`: what it adds to a step);
each with the peak GPU memory of that measurement. Random weights and random inputs: throughput
does not depend on them. Record the printed table with the machine in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from mascot.clip_model import create_clip, image_size, model_config
from mascot.config import ClipConfig, MaskConfig, TrainConfig, VariantConfig
from mascot.devices import autocast, on_device, select_device
from mascot.frame_store import EncodedFrames, encode_image
from mascot.model import RetrievalModel
from mascot.objective import Objective
from mascot.train import optimizer_for

FULL = {
    "models": ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu"],
    "batch": 128,
    "frames": 12,
    "words": 32,
    "image_batch": 512,
    "steps": 10,
    "warmup": 3,
}
SMOKE = {"models": ["mascot-tiny"], "batch": 4, "frames": 3, "words": 12, "image_batch": 8, "steps": 2, "warmup": 1}
OBJECTIVES = {"meanP": None, "MASCOT": MaskConfig()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> tuple[float, float | None]:
    """Seconds per call after warm-up, and the peak GPU memory (GiB) while it ran (None on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return seconds, torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def inputs(cfg: dict, model: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch as the loader hands it over at K = L: uint8 frames (decoded), frame mask and caption
    tokens, in pinned host memory on a GPU machine."""
    size = image_size(model)
    videos = torch.randint(0, 256, (cfg["batch"], cfg["frames"], size, size, 3), dtype=torch.uint8)
    mask = torch.ones(cfg["batch"], cfg["frames"], dtype=torch.bool)
    text = torch.randint(1, 49000, (cfg["batch"], cfg["words"]))
    text[:, cfg["words"] // 2] = 49407
    text[:, cfg["words"] // 2 + 1 :] = 0
    batch = (videos, mask, text)
    return tuple(t.pin_memory() for t in batch) if device.type == "cuda" else batch


def reference_rows(cfg: dict, model: str, device: torch.device, precision: str):
    """The whole tower's inference on frames already on the device, for reference."""
    clip = create_clip(ClipConfig(model=model, pretrained=None)).to(device).eval()
    size = image_size(model)
    images = torch.randn(cfg["image_batch"], 3, size, size, device=device)

    @torch.no_grad()
    def whole_tower():
        with autocast(device, precision):
            return clip.encode_image(images)

    seconds, peak = measured(whole_tower, device, cfg["steps"], cfg["warmup"])
    yield "whole tower, for reference (inputs on the device)", f"{cfg['image_batch'] / seconds:,.0f} frames/s", peak


def jpeg_batch(cfg: dict, size: int) -> tuple[EncodedFrames, float]:
    """One batch of JPEG frames as `decode_on: device` hands it over (quality 95, 4:4:4, as the
    frames stage stores them), and the mean KB a file: blocky colour fields with noise of σ = 3,
    whose files are about the size measured on real 224-px frames (18.3 KB, docs/benchmarks.md)."""
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 256, (8, size // 16, size // 16, 3)), np.ones((1, 16, 16, 1)))
    images = (blocks + rng.normal(0, 3, blocks.shape)).clip(0, 255).astype(np.uint8)
    files = [torch.frombuffer(bytearray(encode_image(images[i], "jpeg", 95)), dtype=torch.uint8) for i in range(8)]
    frames = cfg["batch"] * cfg["frames"]
    batch = EncodedFrames([files[i % 8] for i in range(frames)], (cfg["batch"], cfg["frames"], size, size, 3))
    return batch, sum(len(f) for f in files) / len(files) / 1e3


def decode_rows(cfg: dict, model: str, device: torch.device, precision: str):
    """JPEG decoding of one batch on the device (EncodedFrames.decode, the `decode_on: device` path)."""
    size = image_size(model)
    frames, kb = jpeg_batch(cfg, size)
    seconds, peak = measured(lambda: frames.decode(device), device, cfg["steps"], cfg["warmup"])
    what = f"JPEG decoding on the device, {len(frames.files)} frames of {size} px ({kb:.0f} KB each)"
    yield what, f"{len(frames.files) / seconds:,.0f} frames/s", peak


def model_rows(cfg: dict, model: str, device: torch.device, precision: str):
    videos, mask, text = inputs(cfg, model, device)
    encoded = jpeg_batch(cfg, image_size(model))[0]
    blocks = model_config(model)["vision_cfg"]["layers"]
    frames = cfg["batch"] * cfg["frames"]
    for name, masking in OBJECTIVES.items():
        variant = VariantConfig(temporal="meanP", mask=masking)
        torch.manual_seed(0)
        retrieval = RetrievalModel(create_clip(ClipConfig(model=model, pretrained=None)), blocks, variant, cfg["frames"])
        retrieval.set_grad_checkpointing(True)
        objective = Objective(retrieval, variant).to(device).train()
        if name == "meanP":
            seconds, peak = measured(
                lambda r=retrieval: embed(r, videos, mask, device, precision), device, cfg["steps"], cfg["warmup"]
            )
            yield f"evaluate: video embedding, {cfg['frames']} frames", f"{cfg['batch'] / seconds:,.0f} videos/s", peak
        optimizer = optimizer_for(objective, TrainConfig())
        for decoded, batch in (("", videos), (", JPEG decoded in the step (decode_on: device)", encoded)):
            seconds, peak = measured(
                lambda o=objective, opt=optimizer, b=batch: train_step(o, opt, (b, mask, text), device, precision),
                device,
                cfg["steps"],
                cfg["warmup"],
            )
            yield (
                f"train: {name} step, batch {cfg['batch']} × {cfg['frames']}, K = {blocks}, checkpointing{decoded}",
                f"{seconds:.3f} s/step ({frames / seconds:,.0f} frames/s)",
                peak,
            )


@torch.no_grad()
def embed(model: RetrievalModel, videos: torch.Tensor, mask: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """The evaluate stage's video embedding, from the batch as the loader hands it over."""
    model.eval()
    with autocast(device, precision):
        out = model.encode_video(on_device(videos, device), on_device(mask, device))
    model.train()
    return out


def train_step(
    objective: Objective, optimizer: torch.optim.Optimizer, batch: tuple, device: torch.device, precision: str
) -> None:
    """The train stage's step (train.forward_backward's one-graph path and what follows it): the
    batch to the device, forward and backward under autocast, gradient clipping, AdamW."""
    with autocast(device, precision):
        loss = objective(*(on_device(t, device) for t in batch))["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
    optimizer.step()
    loss.item()  # the stage logs every step's loss: one host sync per step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny config and batch: checks the script on any machine")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args()
    cfg = SMOKE if args.smoke else FULL
    device = select_device("auto")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("gpu_check: no CUDA device; run with --smoke to check the script on the CPU.")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    precision = args.precision if device.type == "cuda" else "fp32 (CPU)"
    print(f"device: {name}; torch {torch.__version__}; precision {precision}; random weights and inputs")
    print()
    print("| model | measurement | throughput | peak GPU memory |")
    print("|---|---|---:|---:|")
    for model in cfg["models"]:
        for rows in (reference_rows, decode_rows, model_rows):
            for what, value, peak in rows(cfg, model, device, args.precision):
                memory = f"{peak:.1f} GiB" if peak is not None else "n/a (CPU)"
                print(f"| {model} | {what} | {value} | {memory} |", flush=True)


if __name__ == "__main__":
    main()
