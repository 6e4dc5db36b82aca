"""GPU check: the two throughputs that size a paper-scale run, and peak GPU memory.

    python benchmarks/gpu_check.py            # one CUDA GPU: ViT-B/32, bf16, batch 128 × 12 frames (≤ 8 min on an H200)
    python benchmarks/gpu_check.py --smoke    # any machine, CPU included: tiny config, tiny batch, seconds

1. Feature caching: frames/s through the frozen ViT-B/32 prefix (docs/model.md, section "Where each part lives"; K = 12: patch
   embedding only; K = 0 would be the whole tower) and through the whole tower, in bf16.
2. MASCOT training: steps/s and videos/s of the full objective (unmasked pass, both masked views,
   ISC decoder, backward, AdamW) at batch 128 × 12 frames with K trainable blocks.
Random weights and random inputs: throughput does not depend on them. Record the printed table with
the machine in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mascot.clip_model import VisionPrefix, create_clip, model_config
from mascot.config import ClipConfig, MaskConfig, TrainConfig, VariantConfig
from mascot.devices import autocast, select_device
from mascot.model import RetrievalModel
from mascot.objective import Objective
from mascot.train import optimizer_for

FULL = {"model": "ViT-B-32", "batch": 128, "frames": 12, "words": 32, "blocks": 12, "image_batch": 512, "steps": 10, "warmup": 3}
SMOKE = {"model": "mascot-tiny", "batch": 4, "frames": 3, "words": 12, "blocks": 4, "image_batch": 8, "steps": 2, "warmup": 1}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call, after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def caching_throughput(cfg: dict, device: torch.device, precision: str) -> dict[str, float]:
    clip = create_clip(ClipConfig(model=cfg["model"])).to(device)
    size = model_config(cfg["model"])["vision_cfg"]["image_size"]
    images = torch.randn(cfg["image_batch"], 3, size, size, device=device)
    out = {}
    for name, k in (("patch embedding (K = L)", len(clip.visual.transformer.resblocks)), ("whole tower", None)):
        prefix = VisionPrefix(clip.visual, k) if k else None

        @torch.no_grad()
        def encode(prefix=prefix):
            with autocast(device, precision):
                return prefix(images) if prefix else clip.encode_image(images)

        out[name] = cfg["image_batch"] / timed(encode, device, cfg["steps"], cfg["warmup"])
    return out


def training_throughput(cfg: dict, device: torch.device, precision: str) -> tuple[float, float]:
    clip = create_clip(ClipConfig(model=cfg["model"]))
    size = model_config(cfg["model"])["vision_cfg"]["image_size"]
    with torch.no_grad():
        tokens_shape = VisionPrefix(clip.visual, cfg["blocks"])(torch.zeros(1, 3, size, size)).shape[1:]
    variant = VariantConfig(temporal="meanP", mask=MaskConfig())
    objective = Objective(RetrievalModel(clip, cfg["blocks"], variant, cfg["frames"]), variant).to(device).train()
    optimizer = optimizer_for(objective, TrainConfig())
    tokens = torch.randn(cfg["batch"], cfg["frames"], *tokens_shape, device=device)
    mask = torch.ones(cfg["batch"], cfg["frames"], dtype=torch.bool, device=device)
    text = torch.randint(1, 49000, (cfg["batch"], cfg["words"]), device=device)
    text[:, cfg["words"] // 2] = 49407
    text[:, cfg["words"] // 2 + 1 :] = 0

    def step():
        with autocast(device, precision):
            loss = objective(tokens, mask, text)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed(step, device, cfg["steps"], cfg["warmup"])
    return 1 / seconds, cfg["batch"] / seconds


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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    print(
        f"device: {name}; torch {torch.__version__}; {cfg['model']}; precision {args.precision if device.type == 'cuda' else 'fp32 (CPU)'}"
    )
    print()
    print("| measurement | value |")
    print("|---|---:|")
    for what, fps in caching_throughput(cfg, device, args.precision).items():
        print(f"| feature caching, {what} | {fps:,.0f} frames/s |", flush=True)
    steps, videos = training_throughput(cfg, device, args.precision)
    print(
        f"| MASCOT training, batch {cfg['batch']} × {cfg['frames']} frames, K = {cfg['blocks']} | {steps:.2f} steps/s ({videos:,.0f} videos/s) |"
    )
    if device.type == "cuda":
        print(f"| peak GPU memory | {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB |")


if __name__ == "__main__":
    main()
