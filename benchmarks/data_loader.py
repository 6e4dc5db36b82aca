"""Does loading or compute bound a GPU training run? The loader's frames/s beside a GPU's estimate.

    python benchmarks/data_loader.py                      # ViT-B/32 and ViT-B/16 token shapes (K = L)
    python benchmarks/data_loader.py --models mascot-tiny --videos 8 --batch 4 --no-flops   # seconds

1. Loader: a features folder of random fp16 tokens in the layout the features stage writes, with the
   cached shape of each model at K = L (patch embeddings, 1 + N tokens × width per frame) and 12
   frames per video, read batch by batch through the training data path (FeatureStore.pairs via
   loader.prefetched) with 0, 1, 2 ... loader threads; for comparison, the path before it (the same
   batch converted to float32 on the CPU) and the batches handed over by torch DataLoader processes
   (the path loader.py does not take). The page cache is warmed first: disk speed is not measured.
2. Compute: the FLOPs of one training step per frame (forward + backward; counted by
   torch.utils.flop_counter on the CPU at 2 videos × 12 frames: the text tower's share is one caption
   per 12 frames, as in training), for the baseline (meanP) and MASCOT, and what an H200 would
   consume at an assumed model-FLOPs utilisation of its dense bf16 peak. An ESTIMATE, labelled so
   until a GPU run measures it (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from mascot.clip_model import VisionPrefix, create_clip, model_config
from mascot.config import ClipConfig, MaskConfig, VariantConfig
from mascot.features import FeatureStore
from mascot.loader import prefetched
from mascot.model import RetrievalModel
from mascot.objective import Objective

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H200 SXM datasheet, dense (without sparsity)
FRAMES = 12


def cached_shape(model: str) -> tuple[int, int]:
    """(tokens, width) per frame of the K = L cache: the patch embedding's output."""
    clip = create_clip(ClipConfig(model=model))
    size = model_config(model)["vision_cfg"]["image_size"]
    blocks = len(clip.visual.transformer.resblocks)
    with torch.no_grad():
        return tuple(VisionPrefix(clip.visual, blocks)(torch.zeros(1, 3, size, size)).shape[1:])


def write_store(root: Path, videos: int, shape: tuple[int, int], shard_size: int = 512) -> FeatureStore:
    """A features folder of random tokens, laid out as features.run writes it (one caption per video)."""
    rng = np.random.default_rng(0)
    rows = []
    for start in range(0, videos, shard_size):
        n = min(shard_size, videos - start)
        name = f"vision-{start // shard_size:05d}.npy"
        array = np.lib.format.open_memmap(root / name, mode="w+", dtype=np.float16, shape=(n, FRAMES, *shape))
        array[:] = rng.random((FRAMES, *shape), np.float32).astype(np.float16)  # the content does not matter here
        array.flush()
        rows += [{"video_id": f"v{start + i}", "split": "train", "shard": name, "row": i, "num_valid": FRAMES} for i in range(n)]
    pd.DataFrame(rows).to_parquet(root / "index.parquet", index=False)
    captions = pd.DataFrame(
        {"caption_id": range(videos), "video_id": [r["video_id"] for r in rows], "split": "train", "caption": "x"}
    ).assign(video_index=np.arange(videos))
    captions.to_parquet(root / "captions.parquet", index=False)
    np.save(root / "text_tokens.npy", rng.integers(1, 49000, (videos, 32), dtype=np.int32))
    (root / "meta.json").write_text(json.dumps({"num_frames": FRAMES, "tokens_per_frame": shape[0], "width": shape[1]}))
    return FeatureStore.open(root)


def loader_rates(store: FeatureStore, batch: int, workers: list[int], steps: int) -> dict[str, float]:
    """Frames/s over `steps` batches of random rows, per loader setting (page cache warm; the loader
    processes' start-up is included, once per `steps` batches, as once per epoch in training)."""
    rows, rng = store.caption_rows("train"), np.random.default_rng(1)
    keys = [rng.choice(rows, min(batch, len(rows)), replace=False) for _ in range(steps)]
    frames = len(keys) * batch * FRAMES
    cpu = torch.device("cpu")
    for _ in prefetched(store.pairs, keys, 0, cpu):  # warm the page cache
        pass
    out = {}
    start = time.perf_counter()
    for tokens, _, _ in prefetched(store.pairs, keys, 0, cpu):
        tokens.float()  # the previous path: float32 made on the CPU before the copy
    out["previous path (float32 on the CPU, main process)"] = frames / (time.perf_counter() - start)
    for n in workers:
        start = time.perf_counter()
        for _ in prefetched(store.pairs, keys, n, cpu):
            pass
        out[f"loader, {n} thread{'s' if n != 1 else ''} (fp16 as stored)"] = frames / (time.perf_counter() - start)
    for n in [w for w in workers if w]:
        loader = DataLoader(_Keyed(store.pairs, keys), batch_size=None, num_workers=n, prefetch_factor=2)
        start = time.perf_counter()
        for _ in loader:
            pass
        out[f"torch DataLoader, {n} process{'es' if n != 1 else ''} (fp16)"] = frames / (time.perf_counter() - start)
    return out


class _Keyed(Dataset):
    def __init__(self, fetch, keys):
        self.fetch, self.keys = fetch, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.fetch(self.keys[i])


def step_flops_per_frame(model: str, masked: bool) -> float:
    """FLOPs of one training step (forward + backward) per frame, counted on the CPU."""
    clip = create_clip(ClipConfig(model=model))
    blocks = len(clip.visual.transformer.resblocks)
    variant = VariantConfig(temporal="meanP", mask=MaskConfig() if masked else None)
    objective = Objective(RetrievalModel(clip, blocks, variant, FRAMES), variant).train()
    tokens = torch.randn(2, FRAMES, *cached_shape(model))
    text = torch.randint(1, 49000, (2, 32))
    text[:, 16], text[:, 17:] = 49407, 0
    with FlopCounterMode(display=False) as counter:
        objective(tokens, torch.ones(2, FRAMES, dtype=torch.bool), text)["loss"].backward()
    return counter.get_total_flops() / (2 * FRAMES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViT-B-32-quickgelu,ViT-B-16-quickgelu")
    parser.add_argument("--videos", type=int, default=512, help="videos in the synthetic cache (12 frames each)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="batches read per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed fraction of the H200's dense bf16 peak")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (slow on a CPU for ViT-B/16)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print()
    print("| model | cached bytes / frame | path | frames/s |")
    print("|---|---:|---|---:|")
    for model in args.models.split(","):
        shape = cached_shape(model)
        with tempfile.TemporaryDirectory() as tmp:
            store = write_store(Path(tmp), args.videos, shape)
            for path, rate in loader_rates(store, args.batch, args.workers, args.steps).items():
                print(f"| {model} | {np.prod(shape) * 2 / 1e3:.0f} kB | {path} | {rate:,.0f} |", flush=True)
    if args.no_flops:
        return
    usable = H200_BF16_DENSE_TFLOPS * 1e12 * args.mfu
    print()
    print(
        f"| model | objective | GFLOPs / frame (fwd + bwd) | H200 frames/s, ESTIMATE at {args.mfu:.0%} of {H200_BF16_DENSE_TFLOPS:.0f} TFLOPS |"
    )
    print("|---|---|---:|---:|")
    for model in args.models.split(","):
        for masked in (False, True):
            flops = step_flops_per_frame(model, masked)
            print(f"| {model} | {'MASCOT' if masked else 'meanP'} | {flops / 1e9:.1f} | {usable / flops:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
