"""Full-size rehearsal: a dataset of MSR-VTT's shape and size through every stage of `dvc repro`.

    python benchmarks/rehearsal.py --workdir /tmp/mascot-rehearsal        # 10,000 videos: about an hour on 2 cores
    python benchmarks/rehearsal.py --workdir /tmp/r --videos 30 --distinct 3 --seconds 2 3 --max-videos 4   # a minute

1. Source: a folder in MSR-VTT's raw layout, placed through `data.msrvtt.source_dir` as a user with
   the real files would: annotations/ with the four files of the CLIP4Clip release (MSRVTT_data.json
   with 20 sentences a video, MSRVTT_train.9k.csv, MSRVTT_train.7k.csv, MSRVTT_JSFUSION_test.csv),
   and videos/video<N>.mp4 for MSR-VTT's ids video0 … video<videos - 1>. Every tenth id is a test
   video (1,000 of 10,000, like 1k-A; the real test list is another 1,000 ids), the others the 9k
   list. The videos are `--distinct` clips from FFmpeg's test sources (320×240 as MSR-VTT's, 30 fps,
   H.264 with a keyframe every 2 s, temporal noise, lengths spread over `--seconds`; each clip its own
   source pattern, noise level and hue), each hard-linked under many ids: every id is decoded on its
   own, as distinct files would be (the page cache holds the clips after their first reading).
2. Project: a clone of this repository's HEAD with the `msrvtt-vit-b-32` preset applied, then
   random weights (`clip.pretrained: null`: no network), the folder placed (`link_placed`, and
   `verify_placed: false`: it is not the release), one variant and one seed, and the smoke caps of
   params.yaml: `train.epochs: 1`, `train.max_steps`, `train.batch_size` and `evaluate.max_videos`
   (a ViT-B/32 step of 128 × 12 frames is minutes on a CPU; the caps are the only changes).
3. Every stage alone (`dvc repro -s`, in the DAG's order), measured: wall time, the peak RSS of its
   largest process (getrusage of the waited-for children), and bytes and files written under the
   project (each inode once: DVC's cache hard-links the outputs). Then `dvc repro tables figures`
   must find nothing to do. Record the table, with the machine line, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from frame_extraction import make_clips  # noqa: E402  (the same generated clips as that benchmark)

REPO = Path(__file__).resolve().parents[1]
DATASET = "msrvtt"
VARIANT, SEED = "mascot", 0
WORDS = [
    "a",
    "person",
    "is",
    "showing",
    "the",
    "pattern",
    "of",
    "colours",
    "moving",
    "across",
    "screen",
    "slowly",
    "while",
    "shapes",
    "turn",
]


def write_source(source: Path, videos: int, distinct: int, seconds: tuple[float, float]) -> None:
    """MSR-VTT's raw layout with `videos` ids, their videos hard-linked to `distinct` generated clips."""
    ann, vids, pool = source / "annotations", source / "videos", source / "pool"
    for folder in (ann, vids, pool):
        folder.mkdir(parents=True, exist_ok=True)
    lengths = [seconds[0] + (seconds[1] - seconds[0]) * i / max(1, distinct - 1) for i in range(distinct)]
    clips = [make_clips(pool, 1, round(s, 1), noise=True, gop=60, first=i)[0] for i, s in enumerate(lengths)]  # own source each
    clips = [c.rename(pool / f"pool{i:03d}.mp4") for i, c in enumerate(clips)]
    ids = [f"video{i}" for i in range(videos)]
    test = ids[::10]
    train = [v for v in ids if v not in set(test)]
    for i, v in enumerate(ids):
        dest = vids / f"{v}.mp4"
        if not dest.exists():
            os.link(clips[i % distinct], dest)

    def sentence(i: int, k: int) -> str:
        return " ".join(WORDS[(i * 7 + k * 3 + j) % len(WORDS)] for j in range(9)) + f" number {i % 97}"

    sentences = [{"caption": sentence(i, k), "video_id": v, "sen_id": i * 20 + k} for i, v in enumerate(ids) for k in range(20)]
    (ann / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": [], "sentences": sentences}))
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train))
    (ann / "MSRVTT_train.7k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train[: len(train) * 7 // 9]))
    rows = "".join(f"ret{j},msr{v[5:]},{v},{sentence(int(v[5:]), 0)}\n" for j, v in enumerate(test))
    (ann / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + rows)


def run(args: list[str], cwd: Path) -> str:
    """A command in `cwd`, with the package of `cwd`/src when there is one (the clone's own code)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    if (cwd / "src" / "mascot").is_dir():
        env["PYTHONPATH"] = str(cwd / "src")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def make_project(project: Path, source: Path, cfg: argparse.Namespace) -> None:
    run(["git", "clone", "-q", str(REPO), str(project)], REPO.parent)
    run([sys.executable, "-m", "mascot", "preset", f"{DATASET}-vit-b-32", "--apply"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update({"datasets": [DATASET], "variants": [VARIANT], "seeds": [SEED]})
    params["data"][DATASET].update({"source_dir": str(source), "link_placed": True, "verify_placed": False})
    params["data"][DATASET]["val_videos"] = min(500, cfg.videos * 9 // 10 // 5)  # MSR-VTT's 500, or a fifth of a small train list
    params["clip"]["pretrained"] = None
    params["train"].update({"epochs": 1, "max_steps": cfg.max_steps, "batch_size": cfg.batch_size})
    params["evaluate"]["max_videos"] = cfg.max_videos
    params["figures"].update({"baseline": VARIANT, "masked": VARIANT})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def written(project: Path) -> tuple[int, int]:
    """Bytes (allocated) and files under the project, each inode once, .git left out."""
    seen, size, files = set(), 0, 0
    for root, dirs, names in os.walk(project):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_blocks * 512
                files += 1
    return size, files


def measured_stage(stage: str, project: Path) -> dict:
    """One stage alone, in a child process that reports its children's peak RSS."""
    before = written(project)
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
        "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r)"
    )
    start = time.perf_counter()
    out = run([sys.executable, "-c", probe, "dvc", "repro", "-s", stage], project)
    seconds = time.perf_counter() - start
    after = written(project)
    return {
        "stage": stage,
        "seconds": seconds,
        "rss_gib": int(next(line for line in out.splitlines() if line.startswith("MAXRSS_KIB")).split()[1]) / 2**20,
        "bytes": after[0] - before[0],
        "files": after[1] - before[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="an empty or new folder (source + project go there)")
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=60, help="distinct generated clips behind the ids")
    parser.add_argument("--seconds", type=float, nargs=2, default=(10.0, 30.0), help="shortest and longest clip")
    parser.add_argument("--max-steps", type=int, default=2, help="train.max_steps")
    parser.add_argument("--batch-size", type=int, default=8, help="train.batch_size")
    parser.add_argument("--max-videos", type=int, default=50, help="evaluate.max_videos")
    cfg = parser.parse_args()
    if cfg.workdir.exists() and any(cfg.workdir.iterdir()):
        raise SystemExit(f"{cfg.workdir} is not empty; give a new folder.")
    source, project = cfg.workdir / "source", cfg.workdir / "project"
    start = time.perf_counter()
    write_source(source, cfg.videos, cfg.distinct, tuple(cfg.seconds))
    generated = time.perf_counter() - start
    make_project(project, source, cfg)
    commit = run(["git", "rev-parse", "--short", "HEAD"], project).strip()
    stages = [
        f"download@{DATASET}",
        f"annotations@{DATASET}",
        "pretrain",  # with the preset's weights (here null: random) it only writes a note
        f"frames@{DATASET}",
        f"features@{DATASET}",
        f"train@{DATASET}-{VARIANT}-{SEED}",
        f"evaluate@{DATASET}-{VARIANT}-{SEED}",
        f"figures@{DATASET}",
        f"tables@{DATASET}",
    ]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; commit {commit}; {cfg.videos:,} videos")
    print(f"source generated in {generated:.0f} s ({cfg.distinct} distinct clips of {cfg.seconds[0]:g}-{cfg.seconds[1]:g} s)")
    print()
    print("| stage | wall time | peak RSS (largest process) | disk written | files written |")
    print("|---|---:|---:|---:|---:|")
    for stage in stages:
        m = measured_stage(stage, project)
        print(
            f"| {stage} | {m['seconds']:,.0f} s | {m['rss_gib']:.2f} GiB | {m['bytes'] / 1e9:.2f} GB | {m['files']:,} |",
            flush=True,
        )
    again = run(["dvc", "repro", "tables", "figures"], project)
    ran = [line for line in again.splitlines() if line.startswith("Running stage")]
    print(f"\nthen `dvc repro tables figures`: {'nothing to do' if not ran else ran}")
    metrics = json.loads((project / "results" / "metrics" / DATASET / f"{VARIANT}-seed{SEED}.json").read_text())
    print(f"evaluate (capped): {metrics['num_videos']} test videos, {metrics['num_captions']} captions")
    shutil.rmtree(source / "pool")


if __name__ == "__main__":
    main()
