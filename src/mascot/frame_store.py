"""How a frames shard lies on disk (`frames.format`), and how every stage reads it back.

raw    {split}-{k}.npy: uint8 (videos, T, S, S, 3), memory-mapped; 3·S² bytes a frame, no decoding.
jpeg   {split}-{k}.npy: uint8, the image files of every frame one after another, and
webp   {split}-{k}.offsets.npy: int64 (videos, T + 1); frame t of video v is the file
       bytes[offsets[v, t]:offsets[v, t + 1]] (empty for padding frames, which read back as zeros).
       Encoded at `frames.quality` (JPEG without chroma subsampling), decoded when read: by the loader
       threads, which run while the model computes (loader.py), or, JPEG only, on the stage's device
       in one call per batch (`<stage>.decode_on`, EncodedFrames: nvJPEG on a GPU).

Either format reads the same way, `shard[v]` or `shard[v, :n]` → uint8 (n, S, S, 3), so the stages
do not know which one they read. docs/benchmarks.md, "Frame formats", has the bytes a frame, the
decode rate and the pixel error of each; the README's disk table is computed from those bytes.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_file
from .errors import ConfigError
from .storage import allocated_memmap

FORMATS = ("raw", "jpeg", "webp")


def offsets_name(shard: str) -> str:
    return shard.removesuffix(".npy") + ".offsets.npy"


def shard_files(shard: str, fmt: str) -> list[str]:
    """The files of one shard, the one the index names first."""
    return [shard] if fmt == "raw" else [shard, offsets_name(shard)]


def encode_image(frame: np.ndarray, fmt: str, quality: int) -> bytes:
    """One uint8 (S, S, 3) frame → the bytes of its image file."""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: full colour resolution
    else:
        Image.fromarray(frame).save(buffer, format="WEBP", quality=quality, method=4)
    return buffer.getvalue()


def decode_frame(data: np.ndarray) -> np.ndarray:
    """The bytes of one image file → uint8 (S, S, 3) (Pillow's libjpeg-turbo / libwebp, which decode
    without holding the GIL)."""
    with Image.open(io.BytesIO(data.tobytes())) as image:
        return np.asarray(image.convert("RGB"))


class ShardWriter:
    """Writes one shard of `videos` × `num_frames` frames, row by row, at `path` (a temp name that
    the caller renames into place; the offsets of a compressed shard are renamed first). Encoded
    frames go to a spool file as they come, so memory holds one frame, not the shard."""

    def __init__(self, path: Path, fmt: str, quality: int, videos: int, num_frames: int, size: int):
        self.path, self.fmt, self.quality = Path(path), fmt, quality
        if fmt == "raw":
            self.array = allocated_memmap(self.path, np.uint8, (videos, num_frames, size, size, 3))
        else:
            self.spool = tempfile.TemporaryFile(dir=self.path.parent)
            self.offsets = np.zeros((videos, num_frames + 1), np.int64)
            self.end = 0

    def write(self, row: int, frames: np.ndarray, num_valid: int) -> None:
        if self.fmt == "raw":
            self.array[row] = frames
            return
        start = self.end
        for t in range(num_valid):
            self.end += self.spool.write(encode_image(frames[t], self.fmt, self.quality))
            self.offsets[row, t + 1] = self.end
        self.offsets[row, 0] = start
        self.offsets[row, num_valid + 1 :] = self.end

    def close(self, offsets_path: Path) -> None:
        """Flush the frames; a compressed shard also writes its offsets (atomically) to `offsets_path`."""
        if self.fmt == "raw":
            self.array.flush()
            del self.array
            return
        with atomic_file(offsets_path) as tmp, open(tmp, "wb") as f:
            np.save(f, self.offsets, allow_pickle=False)
        with self.spool, open(self.path, "wb") as f:  # the .npy np.save would write, from the spool
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (self.end,)})
            self.spool.seek(0)
            shutil.copyfileobj(self.spool, f, 1 << 20)


class EncodedShard:
    """A compressed shard, read like the raw array: shard[v] or shard[v, frames] (a slice)."""

    def __init__(self, path: Path, size: int, fmt: str):
        self.format = fmt
        self.data = np.load(path, mmap_mode="r")
        self.offsets = np.load(Path(path).with_name(offsets_name(Path(path).name)))
        self.shape = (self.offsets.shape[0], self.offsets.shape[1] - 1, size, size, 3)

    def files(self, row: int, frames: slice = slice(None)) -> list[np.ndarray | None]:
        """The image files of frames `frames` of video `row` (views of the memory map; None: padding)."""
        bounds = self.offsets[row]
        return [self.data[bounds[t] : bounds[t + 1]] if bounds[t + 1] > bounds[t] else None for t in range(self.shape[1])[frames]]

    def __getitem__(self, key) -> np.ndarray:
        row, frames = key if isinstance(key, tuple) else (key, slice(None))
        files = self.files(row, frames)
        out = np.zeros((len(files), *self.shape[2:]), np.uint8)
        for j, data in enumerate(files):
            if data is not None:
                out[j] = decode_frame(data)
        return out


class EncodedFrames:
    """JPEG frames not yet decoded, standing for the uint8 array (..., S, S, 3) of `shape` they decode
    to: `files` holds one uint8 tensor (the file's bytes) per frame in row-major order, None for a
    padding frame (zeros). The loader threads hand these over so that the stage decodes a whole batch
    on its device in one call (torchvision's decode_jpeg: nvJPEG on CUDA; on the CPU libjpeg-turbo,
    the same pixels as Pillow's). Slicing the first axis selects rows, as it does on the array."""

    def __init__(self, files: list[torch.Tensor | None], shape: tuple[int, ...]):
        if len(files) != int(np.prod(shape[:-3])):
            raise ValueError(f"{len(files)} files for frames of shape {shape}")
        self.files, self.shape = files, tuple(shape)

    @classmethod
    def gather(cls, shard_rows: list[tuple[EncodedShard, int, slice]], shape: tuple[int, ...]) -> EncodedFrames:
        """The files of (shard, row, frames) in order, copied out of the memory maps, shaped `shape`."""
        files = [
            None if data is None else torch.from_numpy(np.array(data))
            for shard, row, frames in shard_rows
            for data in shard.files(row, frames)
        ]
        return cls(files, shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> EncodedFrames:
        if not isinstance(rows, slice):
            raise TypeError(f"EncodedFrames selects rows by a slice, not {type(rows).__name__}")
        per_row = int(np.prod(self.shape[1:-3]))
        picked = range(self.shape[0])[rows]
        files = [f for r in picked for f in self.files[r * per_row : (r + 1) * per_row]]
        return EncodedFrames(files, (len(picked), *self.shape[1:]))

    def decode(self, device: torch.device) -> torch.Tensor:
        """uint8 (*shape) on `device`, every present frame decoded in one call."""
        from torchvision.io import ImageReadMode, decode_jpeg  # here: the frames stage's workers never decode

        out = torch.zeros(self.shape, dtype=torch.uint8, device=device)
        present = [i for i, f in enumerate(self.files) if f is not None]
        if present:
            if device.type == "cuda":
                # torchvision's CUDA decoder writes on a stream of its own that does not wait for this one
                # (pytorch/vision PR #9606): let queued kernels finish with memory it may be handed
                torch.cuda.current_stream(device).synchronize()
            images = decode_jpeg([self.files[i] for i in present], mode=ImageReadMode.RGB, device=device)
            out.view(-1, *self.shape[-3:])[torch.tensor(present, device=device)] = torch.stack(images).permute(0, 2, 3, 1)
        return out


def decodes_on_device(setting: str, fmt: str, key: str) -> bool:
    """Whether a stage reading frames of format `fmt` (raw, jpeg, webp, or tokens: cached, K < L)
    hands their JPEG files to its device to decode (`key`: <stage>.decode_on); raw frames and
    tokens have nothing to decode, and WebP decodes on the CPU only."""
    if setting == "device" and fmt == "webp":
        raise ConfigError(
            f"`{key}: device` decodes JPEG frames only (torchvision's decode_jpeg), but the frames are stored as webp; "
            f"set `{key}: loader`, or re-extract the frames with `frames.format: jpeg`."
        )
    return setting == "device" and fmt == "jpeg"


def stored_format(shards: dict) -> str:
    """raw, jpeg or webp: the format of open_frames' shards."""
    first = next(iter(shards.values()), None)
    return first.format if isinstance(first, EncodedShard) else "raw"


def open_shard(path: Path, fmt: str, size: int) -> np.ndarray | EncodedShard:
    return np.load(path, mmap_mode="r") if fmt == "raw" else EncodedShard(path, size, fmt)
