"""Decoding: a fixed number of frames sampled uniformly over a time span, at the model's input size.

Sampling takes the centre frame of `num_frames` equal bins over [start, end]. A span shorter than
`num_frames` decoded frames returns every frame it has and reports how many are valid; the caller
stores that count so that padded frames are masked, never mistaken for (black) content.

Two routes get the frames, with the same pixels (tests hold them to each other and to FFmpeg).
decord seeks to the keyframe before each sampled frame and decodes from there; PyAV decodes in
order, skipping the non-reference frames nobody needs. Which is faster depends on the file: with
keyframes every second or two on a long video, seeking skips most of it; with one keyframe every
few hundred frames, every sampled frame needs nearly all the frames before it anyway and the
in-order pass, which skips frames, wins (docs/benchmarks.md, "Frame extraction"). `decoder: auto`
therefore reads the container's keyframe index (demuxing, no decoding) and takes decord only where
seeking decodes fewer frames than the in-order pass would (`seeking_pays`).

decord cannot open a container without a duration, and one undecodable frame fails its whole
batch. For those videos the sequential PyAV pass takes over as a fallback: it decodes in order, replaces a frame that cannot be
decoded by the nearest readable one (and reports the substitution), and applies the display
rotation (decord 0.6.0 applies it too; tests hold both routes to FFmpeg's own rotated output).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class VideoReadError(Exception):
    """A video could not be decoded; the message says why."""


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # (num_frames, size, size, 3) uint8; rows >= num_valid are zero padding
    num_valid: int
    decoder: str = "decord"  # decord | pyav (the sequential route)
    fell_back: bool = False  # decord was tried and failed; PyAV decoded the video
    #: (sampled frame index, index of the readable frame used instead) for every unreadable frame
    substituted: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def sample_indices(total: int, fps: float, start: float | None, end: float | None, num_frames: int) -> list[int]:
    """Indices of the frames to decode: the centres of `num_frames` equal bins over the span.

    Returns fewer than `num_frames` indices (every frame of the span) when the span is shorter.
    """
    if total <= 0:
        raise VideoReadError("the video has no frames")
    first = 0 if start is None else min(total - 1, max(0, math.floor(start * fps)))
    last = total - 1 if end is None else min(total - 1, max(first, math.ceil(end * fps) - 1))
    available = last - first + 1
    if available <= num_frames:
        return list(range(first, last + 1))
    return [first + math.floor((i + 0.5) * available / num_frames) for i in range(num_frames)]


def crop_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Where resize_center_crop puts an (h, w) frame: the resized (height, width) and the crop's
    (top, left) in it (foreground.py maps boxes with it)."""
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    return nh, nw, (nh - size) // 2, (nw - size) // 2


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to `size` (bicubic, antialiased, as CLIP's preprocessing) and centre-crop."""
    x = torch.from_numpy(np.require(frames, requirements=["C", "W"])).permute(0, 3, 1, 2).float()
    nh, nw, top, left = crop_geometry(*x.shape[-2:], size)
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    x = x[:, :, top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:300]


def _clip(frames: np.ndarray, n_indices: int, num_frames: int, size: int, **info) -> Clip:
    out = np.zeros((num_frames, size, size, 3), np.uint8)
    out[:n_indices] = resize_center_crop(frames, size)
    return Clip(out, n_indices, **info)


def _read_decord(path: Path, start: float | None, end: float | None, num_frames: int, size: int) -> Clip:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    indices = sample_indices(len(reader), reader.get_avg_fps(), start, end, num_frames)
    return _clip(reader.get_batch(indices).asnumpy(), len(indices), num_frames, size)


def _rgb(frame) -> np.ndarray:
    """A PyAV frame as RGB, turned as its display matrix says (rotation in degrees, counter-clockwise)."""
    image = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.rot90(image, k=turns) if turns else image


SKIPPABLE_CODECS = ("h264", "hevc")


class _Unordered(Exception):
    """Decoded frames carry out-of-order timestamps (packed B-frames in AVI): count them instead."""


def _decode(path: Path, rank: dict[int, int] | None, targets: set[int], skip: bool) -> tuple[dict[int, np.ndarray], set[int]]:
    """Decode `path` in order; the RGB frames of `targets` and the indices of the decoded frames.

    Undecodable packets are skipped, not fatal. A frame's index is the rank of its timestamp, so a
    lost frame does not shift the ones after it; with `rank=None` (or when the timestamps are not
    increasing, see _Unordered) it is the frame's position in the decoder's output. With `skip`,
    non-reference frames that are not targets are not decoded at all (FFmpeg's skip_frame=NONREF):
    no other frame depends on them, so the targets' pixels are unchanged, and decoding is faster.
    """
    import av

    got, readable, counter, last = {}, set(), 0, None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # Only where timestamps identify frames reliably (not, e.g., packed B-frames in AVI).
        skip = skip and rank is not None and stream.codec_context.name in SKIPPABLE_CODECS
        wanted_pts = {p for p, i in rank.items() if i in targets} if skip else set()
        stream.thread_type = "SLICE" if skip else "AUTO"  # frame threads would apply skip_frame late
        codec = stream.codec_context
        for packet in container.demux(stream):
            if skip:
                codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue
            for frame in frames:
                if rank is None:
                    index = counter
                elif frame.pts is None or frame.pts not in rank or (last is not None and frame.pts <= last):
                    raise _Unordered
                else:
                    index, last = rank[frame.pts], frame.pts
                counter += 1
                readable.add(index)
                if index in targets and index not in got:
                    got[index] = _rgb(frame)
            if len(got) == len(targets):
                break
    return got, readable


@dataclass(frozen=True)
class StreamIndex:
    """What demuxing (no decoding) says of a video stream: its frames in display order and which
    of them are keyframes."""

    pts: list[int]  # presentation timestamps of the frames, sorted
    keyframes: list[int]  # positions in `pts` of the keyframes, sorted
    fps: float
    codec: str = ""


def stream_index(path: Path) -> StreamIndex:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoReadError("no video stream")
        stream = container.streams.video[0]
        packets = {p.pts: p.is_keyframe for p in container.demux(stream) if p.pts is not None and p.size}
        rate = stream.average_rate
        time_base = float(stream.time_base)
        codec = stream.codec_context.name
    if not packets:
        raise VideoReadError("no video packets")
    pts = sorted(packets)
    seconds = (pts[-1] - pts[0]) * time_base
    fps = float(rate) if rate else (len(pts) - 1) / seconds if seconds > 0 else 1.0
    return StreamIndex(pts, [i for i, p in enumerate(pts) if packets[p]], fps, codec)


def frames_decoded_seeking(indices: list[int], keyframes: list[int]) -> int:
    """Frames decoded to reach `indices` by seeking (decord): each sampled frame is decoded from the
    keyframe at or before it, or onward from the previous sampled frame when that lies between."""
    decoded, position = 0, -1
    for target in sorted(set(indices)):
        i = bisect.bisect_right(keyframes, target) - 1
        keyframe = keyframes[i] if i >= 0 else 0
        start = position + 1 if keyframe <= position < target else keyframe
        decoded += target - start + 1
        position = target
    return decoded


#: For codecs whose non-reference frames the in-order pass skips (SKIPPABLE_CODECS), seeking must
#: save at least this fraction of the in-order pass's frames to pay: skipping made that pass
#: 1.2-1.4x faster than decord where both decode about as many frames (docs/benchmarks.md, "Frame
#: extraction"). A rule of thumb from those measurements, not a model of each stream's frame types.
SEEKING_MUST_SAVE = 0.2


def seeking_pays(index: StreamIndex, indices: list[int]) -> bool:
    """Whether seeking (decord) decodes clearly fewer frames than one in-order pass up to the last
    sampled frame (PyAV, which for H.264/HEVC in addition skips the non-reference frames)."""
    margin = SEEKING_MUST_SAVE if index.codec in SKIPPABLE_CODECS else 0.0
    return frames_decoded_seeking(indices, index.keyframes) < (1 - margin) * (max(indices) + 1)


def _read_sequential(
    path: Path, start: float | None, end: float | None, num_frames: int, size: int, index: StreamIndex | None = None
) -> Clip:
    """PyAV: demux to count and time the frames (unless `index` is given), decode in order, replace
    unreadable frames."""
    index = index or stream_index(path)
    pts = index.pts
    indices = sample_indices(len(pts), index.fps, start, end, num_frames)
    rank = {p: i for i, p in enumerate(pts)}
    try:
        got, readable = _decode(path, rank, set(indices), skip=True)
        if len(got) < len(set(indices)):  # some frame is unreadable: find every readable one
            got, readable = _decode(path, rank, set(indices), skip=False)
    except _Unordered:
        rank = None
        got, readable = _decode(path, rank, set(indices), skip=False)
    if not readable:
        raise VideoReadError("no frame could be decoded")
    # An unreadable sampled frame is replaced by the nearest readable one (the earlier on a tie).
    substituted = {w: min(readable, key=lambda r: (abs(r - w), r)) for w in indices if w not in got}
    if substituted:
        extra, _ = _decode(path, rank, set(substituted.values()), skip=False)
        got.update({w: extra[r] for w, r in substituted.items()})
    frames = np.stack([got[i] for i in indices])
    return _clip(frames, len(indices), num_frames, size, decoder="pyav", substituted=tuple(sorted(substituted.items())))


def read_clip(
    path: str | Path, start: float | None, end: float | None, num_frames: int, size: int, *, decoder: str = "auto"
) -> Clip:
    """Decode `num_frames` uniformly sampled frames of `path`, resized and centre-cropped.

    `decoder="auto"` takes the faster route for this file (decord where seeking pays, else PyAV in
    order) and falls back to PyAV when decord fails; "decord" and "pyav" force a route (tests and
    benchmarks compare them; a forced decord still falls back).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError("file not found")
    if path.stat().st_size == 0:
        raise VideoReadError("empty file (0 bytes)")
    index = None
    if decoder == "auto":
        with contextlib.suppress(Exception):  # an unreadable index: decord, then the fallback, say why
            index = stream_index(path)
            if not seeking_pays(index, sample_indices(len(index.pts), index.fps, start, end, num_frames)):
                decoder = "pyav"
    first = None
    if decoder != "pyav":
        try:
            return _read_decord(path, start, end, num_frames, size)
        except VideoReadError:
            raise
        except Exception as exc:  # decord raises plain RuntimeError/DECORDError subclasses
            first = f"decord: {_reason(exc)}"
    try:
        clip = _read_sequential(path, start, end, num_frames, size, index)
    except VideoReadError as exc:
        raise VideoReadError("; ".join(filter(None, [first, f"PyAV: {exc}"]))) from None
    except Exception as exc:  # PyAV raises av.FFmpegError subclasses and friends
        raise VideoReadError("; ".join(filter(None, [first, f"PyAV: {_reason(exc)}"]))) from None
    return dataclasses.replace(clip, fell_back=first is not None)


@contextlib.contextmanager
def decoder_messages() -> Iterator[Callable[[], str]]:
    """Capture what this process writes to its stderr (FFmpeg inside decord and PyAV writes there
    directly, naming no file); yield a function that returns the text written since its last call,
    so that each message can be attributed to the video being decoded."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        read = 0

        def since_last() -> str:
            nonlocal read
            sys.stderr.flush()
            end = os.fstat(buffer.fileno()).st_size
            data = os.pread(buffer.fileno(), end - read, read) if end > read else b""
            read = end
            return data.decode(errors="replace").strip()

        try:
            yield since_last
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
