"""The frames stage: decode every video once into shards (JPEG files or raw uint8), in parallel, resumably.

Output folder layout (one artifact, replaced atomically):
  {split}-{k:05d}.npy   the frames of up to shard_size videos, in `frames.format` (frame_store.py: raw
                        uint8 (videos, num_frames, size, size, 3), memory-mappable, or the JPEG/WebP
                        files of the frames with their offsets in {split}-{k:05d}.offsets.npy)
  index.parquet         video_id, split, shard, row, num_valid (frames past num_valid are padding),
                        decoder, substituted (unreadable frames replaced by their nearest readable one)
  failures.json         videos that could not be decoded, with the reason
  repairs.json          videos decord could not decode (PyAV did), or with replaced frames
  (the index's `decoder` column says which route decoded each video: decord or pyav)
  meta.json             num_frames, image_size, format, quality

Shards are the unit of work and of resumption. Each finished shard lands in the sibling folder
`.<out>.partial/` (its files, then a small .json record, each renamed into place), keyed by a
fingerprint of its videos (paths, spans, file sizes and mtimes) and the decoding settings. An
interrupted run (SIGINT, SIGTERM, a crash) leaves the finished shards there; the rerun decodes only
the others, and the assembled folder is byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .annotations import SPLITS, read_table, segment_bounds
from .atomic import atomic_file, replace_dir, write_json
from .config import Params
from .errors import MascotError
from .frame_store import ShardWriter, offsets_name, open_shard, shard_files
from .progress import Progress
from .storage import check_free, disk_full_is_an_error
from .video import VideoReadError, decoder_messages, read_clip

log = logging.getLogger(__name__)
INDEX = "index.parquet"
FAILURES = "failures.json"
REPAIRS = "repairs.json"
META = "meta.json"
INDEX_COLUMNS = ["video_id", "split", "shard", "row", "num_valid", "decoder", "substituted"]
#: Bump when decoding changes pixels or what the index records: finished shards of older code are redone.
DECODER_VERSION = 3
#: Bytes a compressed frame may take at most, as a fraction of a raw one, for the free-space check
#: (measured at quality 95: 1/3 of raw on the 64-px synthetic frames, 1/8 on real 224-px ones; docs/benchmarks.md "Frame formats").
COMPRESSED_AT_MOST = 0.5


def video_table(annotations: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per video with its time span; all captions of a video must share the span."""
    spans = annotations.groupby("video_id")[["start", "end", "video_path", "split"]].nunique(dropna=False)
    conflicting = spans.index[(spans > 1).any(axis=1)].tolist()
    if conflicting:
        raise MascotError(
            f"{source}: captions of the same video disagree on start/end/video_path/split (e.g. {conflicting[:5]}). "
            "Frames are extracted per video; give each clip its own video_id (as LSMDC does) or use paragraph mode."
        )
    return annotations.drop_duplicates("video_id")[["video_id", "split", "start", "end", "video_path"]].reset_index(drop=True)


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.npy"


@dataclass(frozen=True)
class Shard:
    """One unit of work: up to `shard_size` videos of one split."""

    name: str
    split: str
    videos: tuple[tuple[str, str, float, float], ...]  # (video_id, video_path, start, end)
    fingerprint: str


def _file_identity(path: Path) -> list:
    try:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    except FileNotFoundError:
        return [None, None]


@dataclass(frozen=True)
class Storage:
    """How a shard is stored (frames.format, frames.quality; the quality of raw frames is moot)."""

    format: str = "raw"
    quality: int = 95

    def key(self) -> list:
        return [self.format] if self.format == "raw" else [self.format, self.quality]


def plan_shards(
    videos: pd.DataFrame,
    video_root: Path,
    num_frames: int,
    size: int,
    shard_size: int,
    decoder: str = "auto",
    storage: Storage = Storage(),
) -> list[Shard]:
    shards = []
    for split in SPLITS:
        rows = videos[videos["split"] == split]
        for k, start in enumerate(range(0, len(rows), shard_size)):
            chunk = tuple(
                (v.video_id, v.video_path, float(v.start), float(v.end))
                for v in rows.iloc[start : start + shard_size].itertuples(index=False)
            )
            key = [
                DECODER_VERSION,
                decoder,
                *storage.key(),
                num_frames,
                size,
                [[*c, *_file_identity(video_root / c[1])] for c in chunk],
            ]
            digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
            shards.append(Shard(shard_name(split, k), split, chunk, digest))
    return shards


def _record_path(work: Path, shard: Shard) -> Path:
    return work / (shard.name.removesuffix(".npy") + ".json")


def _is_done(work: Path, shard: Shard, fmt: str) -> bool:
    record = _record_path(work, shard)
    if not (record.is_file() and all((work / f).is_file() for f in shard_files(shard.name, fmt))):
        return False
    try:
        return json.loads(record.read_text())["fingerprint"] == shard.fingerprint
    except (json.JSONDecodeError, KeyError):
        return False


def decode_shard(job: tuple[Shard, str, str, int, int, str, Storage]) -> str:
    """Decode one shard into `work`: its files first, then its record (the record marks it done)."""
    shard, video_root, work, num_frames, size, decoder, storage = job
    video_root, work = Path(video_root), Path(work)
    _record_path(work, shard).unlink(missing_ok=True)  # a record of an older plan must not vouch for half-replaced files
    index, failures, repairs, messages = [], [], [], []
    with atomic_file(work / shard.name) as tmp, decoder_messages() as said:
        writer = ShardWriter(tmp, storage.format, storage.quality, len(shard.videos), num_frames, size)
        for row, (video_id, video_path, start, end) in enumerate(shard.videos):
            try:
                clip = read_clip(video_root / video_path, *segment_bounds(start, end), num_frames, size, decoder=decoder)
            except VideoReadError as exc:
                failures.append({"video_id": video_id, "video_path": video_path, "error": str(exc)})
                continue
            finally:
                if text := said():
                    messages.append({"video_id": video_id, "video_path": video_path, "text": text})
            writer.write(row, clip.frames, clip.num_valid)
            index.append([video_id, shard.split, shard.name, row, clip.num_valid, clip.decoder, len(clip.substituted)])
            if clip.fell_back or clip.substituted:  # decord failed, or frames were lost
                repairs.append(
                    {
                        "video_id": video_id,
                        "video_path": video_path,
                        "decoder": clip.decoder,
                        "substituted": [list(s) for s in clip.substituted],
                    }
                )
        writer.close(work / offsets_name(shard.name))
    write_json(
        _record_path(work, shard),
        {"fingerprint": shard.fingerprint, "index": index, "failures": failures, "repairs": repairs, "messages": messages},
    )
    return shard.name


def _worker_init() -> None:
    # Only the parent reacts to Ctrl-C / SIGTERM; it stops the workers itself. One thread per
    # worker: the parallelism is the workers.
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_shards(
    todo: list[Shard],
    video_root: Path,
    work: Path,
    num_frames: int,
    size: int,
    workers: int,
    total: int,
    decoder: str = "auto",
    storage: Storage = Storage(),
) -> None:
    """Decode the shards in `todo` with `workers` processes; SIGTERM is handled like Ctrl-C."""
    jobs = [(s, str(video_root), str(work), num_frames, size, decoder, storage) for s in todo]
    sizes = {s.name: len(s.videos) for s in todo}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = Progress(total, "frames", "video", initial=total - sum(sizes.values()))
    pool = None
    try:
        if workers <= 1:
            for job in jobs:
                progress.update(sizes[decode_shard(job)])
        else:
            # spawn, not fork: a forked child of a process that already ran torch's OpenMP kernels hangs
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
            for name in pool.imap_unordered(decode_shard, jobs):
                progress.update(sizes[name])
            pool.close()
            pool.join()
    except BaseException:
        if pool is not None:
            pool.terminate()  # half-written shards are temp files; finished ones stay for the rerun
            pool.join()
        raise
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, previous)


def failure_message(failures: list[dict], total: int, threshold: float, manifest: Path) -> str:
    listed = "; ".join(f"{f['video_path']} ({f['error']})" for f in failures[:20])
    more = f"; and {len(failures) - 20} more" if len(failures) > 20 else ""
    return (
        f"{len(failures)} of {total} videos ({len(failures) / total:.1%}) could not be decoded, more than "
        f"frames.max_failed_fraction = {threshold:.1%}: {listed}{more}. The full list is in {manifest}. "
        "Replace or re-download these files and rerun (decoded shards are kept and reused), or raise "
        "frames.max_failed_fraction to train without them."
    )


def resolve_workers(setting: int | str, shards: int) -> int:
    """Processes for `frames.workers`: `auto` is one per core this process may use, at most one per
    shard; an explicit number is capped at the cores (more only compete for them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if setting == "auto":
        return max(1, min(cores, shards))
    if setting > cores:
        log.warning("frames.workers = %d, but this process may use %d cores: decoding with %d workers", setting, cores, cores)
    return max(1, min(setting, cores, shards))


def log_decoder_messages(messages: list[dict], limit: int = 20) -> None:
    """FFmpeg's own messages, each with the video it was decoding."""
    for m in messages[:limit]:
        lines = m["text"].splitlines()
        more = f" (and {len(lines) - 5} more lines)" if len(lines) > 5 else ""
        log.warning("%s (%s): the decoder said: %s%s", m["video_id"], m["video_path"], " | ".join(lines[:5]), more)
    if len(messages) > limit:
        log.warning("... and decoder messages for %d more videos", len(messages) - limit)


def work_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def run(params: Params, annotations_path: Path, video_root: Path, out: Path) -> None:
    cfg = params.frames
    out, video_root = Path(out), Path(video_root)
    from .clip_model import image_size  # here, not at import: the decoding workers do without open_clip

    size = image_size(params.clip.model)
    videos = video_table(read_table(annotations_path), str(annotations_path))
    manifest = out.with_name(out.name + ".failures.json")
    manifest.unlink(missing_ok=True)
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob(".*.tmp-*"):  # temp files of a killed run
        stale.unlink()
    storage = Storage(cfg.format, cfg.quality)
    shards = plan_shards(videos, video_root, cfg.num_frames, size, cfg.shard_size, cfg.decoder, storage)
    todo = [s for s in shards if not _is_done(work, s, cfg.format)]
    if len(todo) < len(shards):
        log.info("frames: resuming, %d of %d shards already decoded in %s", len(shards) - len(todo), len(shards), work)
    raw_bytes = sum(len(s.videos) for s in todo) * cfg.num_frames * size * size * 3
    check_free(work, int(raw_bytes * (1 if cfg.format == "raw" else COMPRESSED_AT_MOST)), "The frames stage")
    workers = resolve_workers(cfg.workers, len(todo))
    stored = "uint8 frames" if cfg.format == "raw" else f"{cfg.format} frames at quality {cfg.quality}"
    log.info(
        "frames: decoding %d videos on the CPU, %d worker process(es), %s", sum(len(s.videos) for s in todo), workers, stored
    )
    with disk_full_is_an_error(work, "frames"):
        run_shards(todo, video_root, work, cfg.num_frames, size, workers, len(videos), cfg.decoder, storage)

    records = [json.loads(_record_path(work, s).read_text()) for s in shards]
    log_decoder_messages([m for r in records for m in r.get("messages", [])])
    index = pd.DataFrame([row for r in records for row in r["index"]], columns=INDEX_COLUMNS)
    failures = [f for r in records for f in r["failures"]]
    repairs = [f for r in records for f in r["repairs"]]
    if failures:
        log.warning("%d videos could not be decoded, e.g. %s", len(failures), failures[0])
    if repairs:
        log.info("%d videos needed the sequential decoder or replaced frames (listed in %s)", len(repairs), REPAIRS)
    if len(failures) > cfg.max_failed_fraction * len(videos):
        write_json(manifest, failures)
        raise MascotError(failure_message(failures, len(videos), cfg.max_failed_fraction, manifest))
    keep = {f for s in shards for f in shard_files(s.name, cfg.format)}
    for path in work.iterdir():  # records and shards of an older plan
        if path.name not in keep:
            path.unlink()
    index.to_parquet(work / INDEX, index=False)
    (work / FAILURES).write_text(json.dumps(failures, indent=1) + "\n")
    (work / REPAIRS).write_text(json.dumps(repairs, indent=1) + "\n")
    meta = {"num_frames": cfg.num_frames, "image_size": size, "format": cfg.format, "quality": cfg.quality}
    (work / META).write_text(json.dumps(meta, indent=1) + "\n")
    replace_dir(work, out)
    log.info("frames: %d videos in %s, %d failed, %d repaired", len(index), out, len(failures), len(repairs))


def open_frames(frames_dir: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The index and the shards of a frames folder, each read as a uint8 (videos, T, S, S, 3) array
    whatever its format (frame_store.py)."""
    frames_dir = Path(frames_dir)
    try:
        index = pd.read_parquet(frames_dir / INDEX)
    except FileNotFoundError:
        raise MascotError(f"{frames_dir}: no {INDEX}; run the frames stage first.") from None
    meta = json.loads((frames_dir / META).read_text())
    fmt = meta.get("format", "raw")  # folders of earlier revisions hold raw frames only
    return index, {name: open_shard(frames_dir / name, fmt, meta["image_size"]) for name in index["shard"].unique()}


def video_frames(index: pd.DataFrame, shards: dict[str, np.ndarray], video_id: str) -> np.ndarray:
    """The valid frames (num_valid, S, S, 3) of one video, from open_frames' output with the index
    keyed by video_id."""
    row = index.loc[video_id]
    return shards[row["shard"]][row["row"], : row["num_valid"]]
