"""The features stage: tokenize the captions and, when K < L, cache the frozen bottom of the vision tower.

docs/model.md, section "Where each part lives": the tower is split at block L - K (K = train.trainable_blocks).
With K < L the cached tokens (fp16, the input of block L - K, CLS first) let training run only the
top K blocks. With K = L (the paper's end-to-end fine-tuning, and every masked variant) the frozen
part is the patch embedding alone, a few per cent of the tower's compute: nothing of the frames is
cached (its tokens would take more disk than the frames), and training, evaluation and the figures
read the frames folder and embed the patches on their device (RetrievalModel.frame_tokens).
Captions are tokenized here in both cases, so training never touches the tokenizer.

Output folder layout (one artifact, replaced atomically):
  vision-{split}-{k:05d}.npy  K < L only: fp16 (videos, num_frames, 1 + N, width); rows follow the frames shards
  index.parquet               video_id, split, shard, row, num_valid (shard: the vision cache's, or at
                              K = L the frames folder's)
  captions.parquet            caption_id, video_id, split, caption, video_index (row of index.parquet)
  text_tokens.npy             int32 (captions, max_words), row i = captions.parquet row i
  meta.json                   model, pretrained, trainable_blocks, shapes; vision: tokens | frames
                              (and frames_index, the digest of the frames index it was made from)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .annotations import read_table
from .atomic import atomic_dir
from .clip_model import VisionPrefix, check_split, create_clip, tokenizer, tokens_per_frame, vision_layers
from .config import Params
from .devices import autocast, describe, on_device, select_device
from .errors import MascotError
from .frame_store import EncodedFrames, decodes_on_device, stored_format
from .frames import INDEX, open_frames
from .loader import prefetched
from .progress import Progress
from .storage import allocated_memmap, check_free, disk_full_is_an_error

log = logging.getLogger(__name__)


def encode_frames(
    prefix: VisionPrefix, frames: torch.Tensor | EncodedFrames, batch_size: int, precision: str = "fp32"
) -> np.ndarray:
    """uint8 frames (n, S, S, 3) → fp16 tokens (n, 1 + N, width), on the prefix's device: the uint8
    frames (or their JPEG files, decoded there) travel as they are stored and are converted there."""
    device = next(prefix.buffers()).device
    out = []
    for i in range(0, len(frames), batch_size):
        with torch.no_grad(), autocast(device, precision):
            out.append(prefix(on_device(frames[i : i + batch_size], device)).to(torch.float16).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float16)


def frames_digest(frames_dir: Path) -> str:
    """What a features folder made at K = L records of its frames folder, to refuse another one: its
    index and its meta.json (format and quality too: the same videos re-extracted as other pixels differ)."""
    digest = hashlib.sha256((Path(frames_dir) / INDEX).read_bytes())
    digest.update((Path(frames_dir) / "meta.json").read_bytes())
    return digest.hexdigest()


def video_groups(num_valid: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive videos whose valid frames fill about one forward pass of `batch_size` frames
    (a video longer than that is a group of its own), so that short videos share a batch."""
    groups, start, filled = [], 0, 0
    for i, n in enumerate(num_valid):
        if i > start and filled + n > batch_size:
            groups.append(np.arange(start, i))
            start, filled = i, 0
        filled += n
    if len(num_valid) > start:
        groups.append(np.arange(start, len(num_valid)))
    return groups


def _check_space(out: Path, shards: dict[str, np.ndarray], tokens_per_frame: tuple[int, ...]) -> None:
    """Fail before writing when the fp16 vision caches cannot fit beside `out`."""
    frames = sum(int(np.prod(f.shape[:2])) for f in shards.values())
    check_free(Path(out).parent, frames * int(np.prod(tokens_per_frame)) * 2, "The features stage")


def cache_vision(params: Params, index: pd.DataFrame, shards: dict, tokens_shape: tuple[int, int], tmp: Path) -> pd.DataFrame:
    """Encode every valid frame through the frozen prefix (K < L) into fp16 shards under `tmp`;
    return the index with the vision shards' names."""
    clip_cfg, k = params.clip, params.train.trainable_blocks
    device = select_device(params.features.device, "features.device")
    batch_size, precision = params.features.batch_size, params.features.precision
    weights = clip_cfg.pretrained or "random (clip.pretrained: null)"
    log.info("features: %s, weights %s, K = %d, on %s", clip_cfg.model, weights, k, describe(device, precision))
    model = create_clip(clip_cfg)
    prefix = VisionPrefix(model.visual, k).eval().to(device)
    keys = []  # (shard, rows, valid frames) of each group of videos encoded together
    for name in shards:
        rows = index[index["shard"] == name]
        row, valid = rows["row"].to_numpy(), rows["num_valid"].to_numpy()
        keys += [(name, row[group], valid[group]) for group in video_groups(valid, batch_size)]
    caches = {
        name: allocated_memmap(tmp / f"vision-{name}", np.float16, (frames.shape[0], frames.shape[1], *tokens_shape))
        for name, frames in shards.items()
    }

    encoded = decodes_on_device(params.features.decode_on, stored_format(shards), "features.decode_on")

    def group_frames(key: tuple[str, np.ndarray, np.ndarray]) -> torch.Tensor | EncodedFrames:
        name, row, valid = key
        if encoded:
            shape = (int(valid.sum()), *shards[name].shape[2:])
            return EncodedFrames.gather([(shards[name], r, slice(v)) for r, v in zip(row, valid, strict=True)], shape)
        return torch.from_numpy(np.concatenate([shards[name][r, :v] for r, v in zip(row, valid, strict=True)]))

    batches = prefetched(group_frames, keys, params.features.loader_workers, device)
    with Progress(int(index["num_valid"].sum()), "features", "frame") as progress:
        for (name, row, valid), batch in zip(keys, batches, strict=True):
            tokens = encode_frames(prefix, batch, batch_size, precision)
            for r, v, offset in zip(row, valid, np.cumsum(valid) - valid, strict=True):
                caches[name][r, :v] = tokens[offset : offset + v]
            progress.update(int(valid.sum()))
    for cache in caches.values():
        cache.flush()
    return index.assign(shard=index["shard"].map(lambda s: f"vision-{s}"))


def run(params: Params, annotations_path: Path, frames_dir: Path, out: Path) -> None:
    clip_cfg, k = params.clip, params.train.trainable_blocks
    check_split(clip_cfg.model, k, params.masked_variants())
    whole_tower = k == vision_layers(clip_cfg.model)
    index, shards = open_frames(frames_dir)
    meta_frames = json.loads((Path(frames_dir) / "meta.json").read_text())
    tokens_shape = tokens_per_frame(clip_cfg.model)

    annotations = read_table(annotations_path)
    video_index = pd.Series(np.arange(len(index)), index=index["video_id"].to_numpy())
    captions = annotations[annotations["video_id"].isin(video_index.index)].reset_index(drop=True)
    dropped = len(annotations) - len(captions)
    if dropped:
        log.warning("features: %d captions dropped because their video failed to decode (see frames failures.json)", dropped)
    captions = captions[["caption_id", "video_id", "split", "caption"]].assign(
        video_index=video_index.loc[captions["video_id"]].to_numpy()
    )
    tokenize = tokenizer(clip_cfg.model, params.features.max_words)

    if not whole_tower:
        _check_space(out, shards, tokens_shape)
    with disk_full_is_an_error(Path(out).parent, "features"), atomic_dir(out) as tmp:
        if whole_tower:
            log.info("features: K = L = %d, training embeds the frames' patches itself: no vision cache", k)
            feature_index = index
        else:
            feature_index = cache_vision(params, index, shards, tokens_shape, tmp)
        feature_index.to_parquet(tmp / "index.parquet", index=False)
        captions.to_parquet(tmp / "captions.parquet", index=False)
        tokens = tokenize(captions["caption"].tolist()) if len(captions) else torch.zeros(0, params.features.max_words)
        np.save(tmp / "text_tokens.npy", tokens.numpy().astype(np.int32))
        meta = {
            "model": clip_cfg.model,
            "pretrained": clip_cfg.pretrained,
            "trainable_blocks": k,
            "num_frames": int(meta_frames["num_frames"]),
            "tokens_per_frame": tokens_shape[0],
            "width": tokens_shape[1],
            "max_words": params.features.max_words,
            "vision": "frames" if whole_tower else "tokens",
        }
        if whole_tower:
            meta["frames_index"] = frames_digest(frames_dir)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    log.info("features: %d videos, %d captions cached in %s", len(index), len(captions), out)


@dataclass
class FeatureStore:
    """Read access to a features folder: videos (cached tokens, or frames at K = L) with frame masks, caption tokens."""

    root: Path
    meta: dict
    index: pd.DataFrame
    captions: pd.DataFrame
    text_tokens: np.ndarray
    shards: dict[str, np.ndarray]
    video_format: str  # tokens (K < L), or at K = L the frames' format: raw | jpeg | webp

    @classmethod
    def open(cls, root: Path, frames_dir: Path | None = None) -> FeatureStore:
        """The features folder; at K = L (meta `vision: frames`) the video batches come from
        `frames_dir` (by default the sibling `frames` folder, as the pipeline lays them out), the
        frames folder it was made from (refused when it is another one)."""
        root = Path(root)
        frames_dir = Path(frames_dir) if frames_dir is not None else root.parent / "frames"
        if not (root / "meta.json").is_file():
            raise MascotError(f"{root}: not a features folder (no meta.json); run the features stage first.")
        meta = json.loads((root / "meta.json").read_text())
        index = pd.read_parquet(root / "index.parquet")
        if meta.get("vision", "tokens") == "tokens":
            shards = {name: np.load(root / name, mmap_mode="r") for name in index["shard"].unique()}
        elif not (frames_dir / INDEX).is_file() or frames_digest(frames_dir) != meta["frames_index"]:
            what = (
                "has no frames index"
                if not (frames_dir / INDEX).is_file()
                else "is another frames folder (its index or meta.json differs)"
            )
            raise MascotError(
                f"{root} holds no video tokens (K = L: the model embeds the frames itself) and reads the frames folder it "
                f"was made from, but {frames_dir} {what}. Give that folder (--frames), or rerun the features stage on this "
                "one (dvc repro)."
            )
        else:
            shards = open_frames(frames_dir)[1]
        return cls(
            root=root,
            meta=meta,
            index=index,
            captions=pd.read_parquet(root / "captions.parquet"),
            text_tokens=np.load(root / "text_tokens.npy"),
            shards=shards,
            video_format="tokens" if meta.get("vision", "tokens") == "tokens" else stored_format(shards),
        )

    def videos(self, split: str) -> np.ndarray:
        """Positions (in index.parquet) of the videos of a split."""
        return np.flatnonzero(self.index["split"].to_numpy() == split)

    def caption_rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.captions["split"].to_numpy() == split)

    def decodes_on(self, setting: str, key: str) -> bool:
        """Whether batches should carry the JPEG files, for the device to decode (`key`: <stage>.decode_on)."""
        return decodes_on_device(setting, self.video_format, key)

    def video_batch(self, positions: np.ndarray, encoded: bool = False) -> tuple[torch.Tensor | EncodedFrames, torch.Tensor]:
        """The videos as stored, cached tokens (B, T, 1 + N, width) fp16 or at K = L frames
        (B, T, S, S, 3) uint8 (decoded here when compressed, or with `encoded` left as JPEG files for
        the device, EncodedFrames), for RetrievalModel.frame_tokens on the device; and the frame mask
        (B, T) bool."""
        rows = self.index.iloc[positions]
        pairs = list(zip(rows["shard"], rows["row"]))  # noqa: B905 -- two columns of one table
        if encoded and self.video_format != "jpeg":
            raise ValueError(f"{self.root}: only JPEG frames travel encoded; these videos are stored as {self.video_format}")
        if encoded:
            shape = (len(rows), *self.shards[pairs[0][0]].shape[1:])
            tokens = EncodedFrames.gather([(self.shards[s], r, slice(None)) for s, r in pairs], shape)
        else:
            tokens = torch.from_numpy(np.stack([self.shards[s][r] for s, r in pairs]))
        mask = np.arange(tokens.shape[1])[None, :] < rows["num_valid"].to_numpy()[:, None]
        return tokens, torch.from_numpy(mask)

    def text_batch(self, caption_rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.text_tokens[caption_rows].astype(np.int64))

    def pairs(
        self, caption_rows: np.ndarray, encoded: bool = False
    ) -> tuple[torch.Tensor | EncodedFrames, torch.Tensor, torch.Tensor]:
        """A training batch: the captions' videos (tokens, frame mask) and the captions' tokens."""
        tokens, mask = self.video_batch(self.captions["video_index"].to_numpy()[caption_rows], encoded)
        return tokens, mask, self.text_batch(caption_rows)
