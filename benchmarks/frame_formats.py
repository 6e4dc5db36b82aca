"""Bytes a frame, decode rate and pixel error of each `frames.format`, on the frames the stage stores.

    python benchmarks/frame_formats.py                      # the default's videos at 64 px + the real samples at 224 px
    python benchmarks/frame_formats.py --frames data/msrvtt/frames   # any frames folder stored raw
    python benchmarks/frame_formats.py --limit 40 --no-samples       # small (the test runs this)

Every figure comes from the stage's own code (frame_store.encode_image / decode_frame). Sets: the
default's generated videos (data/synthetic/raw/videos) sampled by video.read_clip as the frames
stage samples them (6 frames, 64 px; or a frames folder stored raw, `--frames`), and the real sample
videos at 12 frames and 224 px, as for ViT-B/32 and B/16. The reference is always the raw decoded
frame, never one that went through a codec already. Decode rates are
frames/s of one thread and of `--threads` threads (the loader's threads, loader.py). Error: mean and
maximum absolute difference from the raw frame in 8-bit levels, and PSNR. Last, the README's disk
table: the measured bytes of a real JPEG frame times each dataset's frames (its videos × the preset's
`frames.num_frames`), beside what raw frames plus the K = L token cache took before. Record the table, with the machine
line it prints, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mascot.frame_store import decode_frame, encode_image
from mascot.frames import open_frames
from mascot.video import read_clip

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
FORMATS = [("raw", None), ("jpeg", 95), ("jpeg", 90), ("webp", 95), ("webp", 90)]
#: Videos of every split in the public annotation files (README, "Datasets"; tests/test_real_datasets.py).
VIDEOS = {
    "msrvtt": 9_000 + 1_000,
    "lsmdc": 101_079 + 7_408 + 1_000,
    "activitynet": 10_009 + 4_917,
    "didemo": 8_392 + 1_065 + 1_004,
}
#: fp16 tokens a frame at K = L (the patch embedding: 1 + N tokens × 768), what the token cache held.
TOKEN_BYTES = {"ViT-B/32": (1 + 49) * 768 * 2, "ViT-B/16": (1 + 196) * 768 * 2}


def video_frames(folder: Path, limit: int, num_frames: int = 6, size: int = 64) -> np.ndarray:
    """Up to `limit` frames of the videos of a folder (sorted), as the frames stage samples them."""
    out, n = [], 0
    for path in sorted(folder.iterdir()):
        clip = read_clip(path, None, None, num_frames, size)
        out.append(clip.frames[: clip.num_valid])
        n += clip.num_valid
        if n >= limit:
            break
    return np.concatenate(out)[:limit]


def folder_frames(folder: Path, limit: int) -> np.ndarray:
    """Up to `limit` valid frames of a frames folder stored raw, in index order."""
    fmt = json.loads((folder / "meta.json").read_text()).get("format", "raw")
    if fmt != "raw":
        raise SystemExit(f"{folder} holds {fmt} frames: the reference must be raw (frames.format: raw), not a codec's output.")
    index, shards = open_frames(folder)
    out, n = [], 0
    for row in index.itertuples():
        frames = shards[row.shard][row.row, : row.num_valid]
        out.append(frames)
        n += len(frames)
        if n >= limit:
            break
    return np.concatenate(out)[:limit]


def sample_frames(size: int) -> np.ndarray:
    files = sorted(p for p in SAMPLES.iterdir() if p.name != "corrupted.mp4")
    clips = [read_clip(p, None, None, 12, size) for p in files]
    return np.concatenate([c.frames[: c.num_valid] for c in clips])


def rate(fn, items: list, threads: int) -> float:
    start = time.perf_counter()
    if threads == 1:
        for item in items:
            fn(item)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, items))
    return len(items) / (time.perf_counter() - start)


def measure(frames: np.ndarray, fmt: str, quality: int | None, threads: int) -> dict:
    raw = frames[0].nbytes
    if fmt == "raw":
        return {
            "bytes": raw,
            "ratio": 1.0,
            "encode": math.inf,
            "decode1": math.inf,
            "decodeN": math.inf,
            "mae": 0.0,
            "max": 0,
            "psnr": math.inf,
        }
    start = time.perf_counter()
    files = [np.frombuffer(encode_image(f, fmt, quality), np.uint8) for f in frames]
    encode = len(frames) / (time.perf_counter() - start)
    decoded = np.stack([decode_frame(f) for f in files])
    diff = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
    mse = float((diff.astype(np.float64) ** 2).mean())
    size = float(np.mean([len(f) for f in files]))
    return {
        "bytes": size,
        "ratio": raw / size,
        "encode": encode,
        "decode1": rate(decode_frame, files, 1),
        "decodeN": rate(decode_frame, files, threads),
        "mae": float(diff.mean()),
        "max": int(diff.max()),
        "psnr": 10 * math.log10(255**2 / mse) if mse > 0 else math.inf,
    }


def table(name: str, frames: np.ndarray, threads: int) -> list[str]:
    s = frames.shape[1]
    lines = [
        f"\n{name}: {len(frames)} frames of {s}×{s} px",
        "",
        f"| format | bytes a frame | vs raw | encode frames/s | decode frames/s (1 thread) | decode frames/s ({threads} threads) | mean abs error | max abs error | PSNR dB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fmt, quality in FORMATS:
        m = measure(frames, fmt, quality, threads)
        label = fmt if quality is None else f"{fmt} q{quality}"
        if fmt == "raw":
            lines.append(f"| {label} | {m['bytes']:,.0f} | 1 | – | – (memory map) | – | 0 | 0 | ∞ |")
        else:
            lines.append(
                f"| {label} | {m['bytes']:,.0f} | 1/{m['ratio']:.1f} | {m['encode']:,.0f} | {m['decode1']:,.0f} | "
                f"{m['decodeN']:,.0f} | {m['mae']:.2f} | {m['max']} | {m['psnr']:.1f} |"
            )
    return lines


def disk_table(frames: np.ndarray) -> list[str]:
    """The paper recipe's frames + cache per dataset: before (raw frames and, at K = L, the fp16 token
    cache) and now (JPEG q95 frames, no token cache), from the bytes measured on `frames`."""
    from mascot.presets import overrides

    jpeg = measure(frames, "jpeg", 95, 1)["bytes"]
    raw = frames[0].nbytes
    lines = [
        f"\nDisk of the paper recipe (K = L), from {jpeg:,.0f} bytes a JPEG q95 frame measured above ({len(frames)} frames):",
        "",
        "| dataset | frames (videos × T) | before, B/32: raw frames + token cache | before, B/16 | now: JPEG frames, no token cache | now / before (B/32, B/16) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, videos in VIDEOS.items():
        n = videos * overrides(f"{name}-vit-b-32")["frames.num_frames"]
        b32, b16 = n * (raw + TOKEN_BYTES["ViT-B/32"]), n * (raw + TOKEN_BYTES["ViT-B/16"])
        lines.append(
            f"| {name} | {n:,} | {b32 / 1e9:.0f} GB | {b16 / 1e9:.0f} GB | {n * jpeg / 1e9:.1f} GB | "
            f"1/{b32 / (n * jpeg):.0f}, 1/{b16 / (n * jpeg):.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=Path("data/synthetic/raw/videos"), help="videos sampled at 64 px")
    parser.add_argument("--frames", type=Path, default=None, help="instead of --videos: a frames folder stored raw")
    parser.add_argument("--limit", type=int, default=2000, help="frames taken from --videos / --frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="frame size of the real samples")
    parser.add_argument("--no-samples", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}, torch {torch.__version__}"
    )
    lines = []
    if args.frames is not None:
        lines += table(f"frames folder {args.frames}", folder_frames(args.frames, args.limit), args.threads)
    elif args.videos.is_dir():
        frames = video_frames(args.videos, args.limit)
        lines += table(f"videos of {args.videos} (6 frames a video, as the default samples them)", frames, args.threads)
    if SAMPLES.is_dir() and not args.no_samples:
        samples = sample_frames(args.size)
        lines += table(f"real samples ({SAMPLES.name}/, 12 frames a video)", samples, args.threads)
        lines += disk_table(samples)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
