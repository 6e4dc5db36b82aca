"""Does loading or compute bound a GPU training run? The loader's frames/s beside a GPU's estimate.

    python benchmarks/data_loader.py                      # 224-px frames (ViT-B/32 and B/16), raw and JPEG
    python benchmarks/data_loader.py --models mascot-tiny --videos 8 --batch 4 --no-flops   # seconds

1. Loader: a frames folder in each `frames.format` (raw uint8, JPEG at quality 95), written by the
   frames stage's own writer (frame_store.ShardWriter) from real frames (the sample videos at the
   model's input size, repeated; smooth random images where they are absent), 12 frames per video,
   with the features folder the features stage writes at K = L (no token cache; the model embeds the
   frames itself), read batch by batch through the training data path (FeatureStore.pairs via
   loader.prefetched: JPEG decoded in the loader threads) with 0, 1, 2 ... threads; for JPEG also
   the batches as `decode_on: device` hands them over (the files, decoded on the device: their
   decoding rate there is benchmarks/gpu_check.py's, nvJPEG on a GPU); for comparison,
   the batches handed over by torch DataLoader processes (the path loader.py does not take). The
   page cache is warmed first: disk speed is not measured.
2. Compute: the FLOPs of one training step per frame (forward + backward from uint8 frames, patch
   embedding included; counted by torch.utils.flop_counter on the CPU at 2 videos × 12 frames: the
   text tower's share is one caption per 12 frames, as in training), for the baseline (meanP) and
   MASCOT, and what an H200 would consume at an assumed model-FLOPs utilisation of its dense bf16
   peak. An ESTIMATE, labelled so until a GPU run measures it (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import functools
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

from mascot.clip_model import create_clip, image_size
from mascot.config import ClipConfig, MaskConfig, VariantConfig
from mascot.features import FeatureStore, frames_digest
from mascot.frame_store import ShardWriter, offsets_name
from mascot.loader import prefetched
from mascot.model import RetrievalModel
from mascot.objective import Objective
from mascot.video import read_clip

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H200 SXM datasheet, dense (without sparsity)
FRAMES = 12
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def source_frames(size: int) -> np.ndarray:
    """Real frames to fill the folder with (JPEG's size and speed depend on the content)."""
    if SAMPLES.is_dir():
        clips = [read_clip(p, None, None, FRAMES, size) for p in sorted(SAMPLES.iterdir()) if p.name != "corrupted.mp4"]
        return np.concatenate([c.frames[: c.num_valid] for c in clips])
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (24, size // 8, size // 8, 3))
    return np.kron(coarse, np.ones((1, 8, 8, 1))).astype(np.uint8)


def write_store(root: Path, videos: int, size: int, fmt: str, shard_size: int = 512) -> FeatureStore:
    """A frames folder in `fmt` and its K = L features folder, laid out as the stages write them."""
    frames_dir, features_dir = root / "frames", root / "features"
    frames_dir.mkdir()
    features_dir.mkdir()
    pool = source_frames(size)
    rows = []
    for start in range(0, videos, shard_size):
        n = min(shard_size, videos - start)
        name = f"train-{start // shard_size:05d}.npy"
        writer = ShardWriter(frames_dir / name, fmt, 95, n, FRAMES, size)
        for i in range(n):
            writer.write(i, pool[(np.arange(FRAMES) + (start + i) * FRAMES) % len(pool)], FRAMES)
        writer.close(frames_dir / offsets_name(name))
        rows += [{"video_id": f"v{start + i}", "split": "train", "shard": name, "row": i, "num_valid": FRAMES} for i in range(n)]
    index = pd.DataFrame(rows)
    index.to_parquet(frames_dir / "index.parquet", index=False)
    (frames_dir / "meta.json").write_text(json.dumps({"num_frames": FRAMES, "image_size": size, "format": fmt, "quality": 95}))
    index.to_parquet(features_dir / "index.parquet", index=False)
    captions = pd.DataFrame(
        {"caption_id": range(videos), "video_id": index["video_id"], "split": "train", "caption": "x"}
    ).assign(video_index=np.arange(videos))
    captions.to_parquet(features_dir / "captions.parquet", index=False)
    np.save(features_dir / "text_tokens.npy", np.random.default_rng(0).integers(1, 49000, (videos, 32), dtype=np.int32))
    meta = {"num_frames": FRAMES, "vision": "frames", "frames_index": frames_digest(frames_dir)}
    (features_dir / "meta.json").write_text(json.dumps(meta))
    return FeatureStore.open(features_dir, frames_dir)


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
    for n in workers:
        start = time.perf_counter()
        for _ in prefetched(store.pairs, keys, n, cpu):
            pass
        out[f"loader, {n} thread{'s' if n != 1 else ''} (uint8 frames)"] = frames / (time.perf_counter() - start)
    if store.video_format == "jpeg":  # decode_on: device: the threads hand over the JPEG files
        for n in workers:
            start = time.perf_counter()
            for _ in prefetched(functools.partial(store.pairs, encoded=True), keys, n, cpu):
                pass
            label = f"loader, {n} thread{'s' if n != 1 else ''} (JPEG files for the device: decode_on device)"
            out[label] = frames / (time.perf_counter() - start)
    for n in [w for w in workers if w]:
        loader = DataLoader(_Keyed(store.pairs, keys), batch_size=None, num_workers=n, prefetch_factor=2)
        start = time.perf_counter()
        for _ in loader:
            pass
        out[f"torch DataLoader, {n} process{'es' if n != 1 else ''}"] = frames / (time.perf_counter() - start)
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
    clip = create_clip(ClipConfig(model=model, pretrained=None))
    blocks = len(clip.visual.transformer.resblocks)
    variant = VariantConfig(temporal="meanP", mask=MaskConfig() if masked else None)
    objective = Objective(RetrievalModel(clip, blocks, variant, FRAMES), variant).train()
    size = image_size(model)
    frames = torch.randint(0, 256, (2, FRAMES, size, size, 3), dtype=torch.uint8)
    text = torch.randint(1, 49000, (2, 32))
    text[:, 16], text[:, 17:] = 49407, 0
    with FlopCounterMode(display=False) as counter:
        objective(frames, torch.ones(2, FRAMES, dtype=torch.bool), text)["loss"].backward()
    return counter.get_total_flops() / (2 * FRAMES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViT-B-32-quickgelu,ViT-B-16-quickgelu")
    parser.add_argument("--videos", type=int, default=512, help="videos in the frames folder (12 frames each)")
    parser.add_argument("--formats", default="raw,jpeg", help="frames.format values to read")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="batches read per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed fraction of the H200's dense bf16 peak")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (slow on a CPU for ViT-B/16)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print()
    print("| frame size (models) | format | stored bytes / frame | path | frames/s |")
    print("|---|---|---:|---|---:|")
    models = args.models.split(",")
    for size in sorted({image_size(m) for m in models}):
        names = ", ".join(m for m in models if image_size(m) == size)
        for fmt in args.formats.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                store = write_store(Path(tmp), args.videos, size, fmt)
                stored = sum(p.stat().st_size for p in (Path(tmp) / "frames").glob("*.npy")) / (args.videos * FRAMES)
                for path, rate in loader_rates(store, args.batch, args.workers, args.steps).items():
                    print(f"| {size} px ({names}) | {fmt} | {stored / 1e3:.1f} kB | {path} | {rate:,.0f} |", flush=True)
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
