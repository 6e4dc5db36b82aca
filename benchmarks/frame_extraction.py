"""Our frame extraction against the route of the public code, on the same videos.

    python benchmarks/frame_extraction.py                  # 50 generated clips (10 s, 30 fps, 320×240) + real samples
    python benchmarks/frame_extraction.py --videos 4 --seconds 2   # small (the test runs this)

Ours: `mascot.video.read_clip` on the original video, by each route: decord seeking to the 12 sampled
frames, PyAV decoding in order (skipping unneeded non-reference frames), and `auto`, which picks one
of the two per video from its keyframe index; then resize + centre crop to 224. Public route (CLIP4Clip's optional
compression step and loader): FFmpeg re-encodes every video to 3 fps with the short side 224, then
OpenCV decodes the whole re-encoded video and 12 frames are sampled uniformly. Both end with the same
resize/crop, so the comparison is of getting the frames. Both run in one process, one video at a
time; our frames stage additionally runs `frames.workers` processes (last column).
Record the table, with the machine line it prints, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from mascot.video import read_clip, resize_center_crop

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
SOURCES = [
    "testsrc2",
    "mandelbrot",
    "life=s=320x240:mold=10:r=30:ratio=0.1:death_color=#C83232:life_color=#00ff00",
    "smptehdbars",
    "rgbtestsrc",
]
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def make_clips(folder: Path, n: int, seconds: float, noise: bool, gop: int | None, first: int = 0) -> list[Path]:
    """`n` H.264 clips (libx264 defaults, or keyframes every `gop` frames), 320×240 at 30 fps, from
    FFmpeg's test sources, with temporal noise unless `noise` is off (noise makes decoding expensive);
    clip i (from `first` on) takes source i, its noise level and hue."""
    paths = []
    for i in range(first, first + n):
        path = folder / f"clip{i:03d}-{seconds:g}s{'' if noise else '-clean'}{f'-g{gop}' if gop else ''}.mp4"
        if not path.exists():
            src = SOURCES[i % len(SOURCES)]
            src = src if "=" in src else f"{src}=size=320x240:rate=30"
            subprocess.run(
                [
                    FFMPEG,
                    "-v",
                    "error",
                    "-y",
                    "-f",
                    "lavfi",
                    "-i",
                    src,
                    "-t",
                    str(seconds),
                    "-vf",
                    f"scale=320:240,{f'noise=alls={10 + i % 20}:allf=t,' if noise else ''}hue=h={i * 7}",
                    "-r",
                    "30",
                    "-c:v",
                    "libx264",
                    *(["-g", str(gop)] if gop else []),
                    "-pix_fmt",
                    "yuv420p",
                    str(path),
                ],
                check=True,
            )
        paths.append(path)
    return paths


def ours(path: Path, num_frames: int, size: int, decoder: str) -> tuple[int, str]:
    clip = read_clip(path, None, None, num_frames, size, decoder=decoder)
    return clip.num_valid, clip.decoder


def public_route(path: Path, num_frames: int, size: int, scratch: Path) -> int:
    import cv2

    small = scratch / (path.stem + ".3fps.mp4")
    short = f"scale='if(gt(iw,ih),-2,{size})':'if(gt(iw,ih),{size},-2)'"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(path), "-r", "3", "-vf", short, "-an", str(small)], check=True)
    cap = cv2.VideoCapture(str(small))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    small.unlink()
    if not frames:
        return 0
    pick = np.linspace(0, len(frames) - 1, num=min(num_frames, len(frames))).round().astype(int)
    resize_center_crop(np.stack([frames[i] for i in pick]), size)
    return len(pick)


def timed(fn, paths, *args) -> tuple[float, list[int]]:
    start = time.perf_counter()
    counts = [fn(p, *args) for p in paths]
    return time.perf_counter() - start, counts


def stage_parallel(paths: list[Path], num_frames: int, size: int, workers: int, scratch: Path, decoder: str) -> float:
    """Our frames stage (shards, workers) on the same videos: videos per second."""
    import pandas as pd

    from mascot.annotations import normalize, write_table
    from mascot.frames import plan_shards, run_shards, work_dir

    table = normalize(
        pd.DataFrame(
            {
                "video_id": [p.name for p in paths],
                "split": "test",
                "caption_id": [p.name for p in paths],
                "caption": "x",
                "start": np.nan,
                "end": np.nan,
                "video_path": [str(p) for p in paths],
            }
        ),
        "benchmark",
    )
    write_table(table, scratch / "a.parquet")
    shards = plan_shards(table, Path("/"), num_frames, size, max(1, len(paths) // (workers * 4)), decoder)
    work = work_dir(scratch / "frames")
    work.mkdir()
    start = time.perf_counter()
    run_shards(shards, Path("/"), work, num_frames, size, workers, len(paths), decoder)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-samples", action="store_true", help="leave out the real sample videos")
    parser.add_argument("--no-noise", action="store_true", help="generated clips without temporal noise (cheaper to decode)")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval of the generated clips (default: libx264's 250)")
    parser.add_argument(
        "--mixed", action="store_true", help="half the clips with a keyframe every 30 frames, half with libx264's default GOP"
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mascot-bench-clips")
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    kind = "without noise" if args.no_noise else "with temporal noise"
    if args.mixed:
        half = args.videos // 2
        clips = make_clips(args.cache, half, args.seconds, not args.no_noise, 30)
        clips += make_clips(args.cache, args.videos - half, args.seconds, not args.no_noise, None)
        kind += f", {half} with a keyframe every 30 frames, {args.videos - half} with libx264's default GOP"
    else:
        clips = make_clips(args.cache, args.videos, args.seconds, not args.no_noise, args.gop)
        kind += f", keyframe every {args.gop} frames" if args.gop else ""
    sets = [(f"{args.videos} generated clips ({args.seconds:g} s, 30 fps, 320×240, {kind})", clips)]
    if SAMPLES.is_dir() and not args.no_samples:
        # corrupted.mp4 fails OpenCV's route half-way and would time only part of the work; kept in ours
        samples = sorted(p for p in SAMPLES.iterdir() if p.name != "corrupted.mp4")
        sets.append((f"{len(samples)} real samples of shared/data/videos (mp4, webm, mkv, avi, mov)", samples))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}; "
        f"{args.num_frames} frames at {args.size} px per video"
    )
    print(
        "| videos | public route: videos/s | ours, decord forced: videos/s, ratio | ours, pyav forced: videos/s, ratio | "
        "ours, decoder auto: videos/s, ratio (routes taken) | frames per video (ours / public) | "
        f"our stage, {args.workers} workers, auto: videos/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, paths in sets:
        with tempfile.TemporaryDirectory() as scratch:
            t_pub, n_pub = timed(public_route, paths, args.num_frames, args.size, Path(scratch))
            t_decord, _ = timed(ours, paths, args.num_frames, args.size, "decord")
            t_pyav, _ = timed(ours, paths, args.num_frames, args.size, "pyav")
            t_auto, got = timed(ours, paths, args.num_frames, args.size, "auto")
            parallel = stage_parallel(paths, args.num_frames, args.size, args.workers, Path(scratch), "auto")
        n_ours = [n for n, _ in got]
        routes = ", ".join(
            f"{sum(r == name for _, r in got)} {name}" for name in ("decord", "pyav") if any(r == name for _, r in got)
        )
        same = "same" if n_ours == n_pub else f"differ: {sum(a != b for a, b in zip(n_ours, n_pub, strict=True))} videos"
        print(
            f"| {label} | {len(paths) / t_pub:.1f} | {len(paths) / t_decord:.1f}, {t_pub / t_decord:.1f}× | "
            f"{len(paths) / t_pyav:.1f}, {t_pub / t_pyav:.1f}× | {len(paths) / t_auto:.1f}, {t_pub / t_auto:.1f}× ({routes}) | "
            f"{np.mean(n_ours):.1f} / {np.mean(n_pub):.1f} ({same}) | {parallel:.1f} |"
        )


if __name__ == "__main__":
    main()
