"""Embedding a split with a trained model, and the evaluate stage (test split, selected checkpoint)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from .atomic import write_json
from .checkpoint import load_checkpoint
from .config import EvaluateConfig, Params
from .devices import autocast, describe, on_device, select_device
from .errors import MascotError
from .features import FeatureStore
from .loader import prefetched
from .metrics import embedding_metrics
from .model import RetrievalModel
from .progress import Progress

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_videos(
    model: RetrievalModel, store: FeatureStore, positions: np.ndarray, cfg: EvaluateConfig, what: str
) -> torch.Tensor:
    """Video embeddings (on the CPU) of the videos at `positions` of the store, computed on the
    model's device in `evaluate.batch_size` batches read ahead by `evaluate.loader_workers` threads."""
    device = next(model.parameters()).device
    chunks = [positions[i : i + cfg.batch_size] for i in range(0, len(positions), cfg.batch_size)]
    out = []
    with autocast(device, cfg.precision), Progress(len(positions), f"embedding {what}", "video") as bar:
        fetch = functools.partial(store.video_batch, encoded=store.decodes_on(cfg.decode_on, "evaluate.decode_on"))
        for chunk, batch in zip(chunks, prefetched(fetch, chunks, cfg.loader_workers, device), strict=True):
            out.append(model.encode_video(*(on_device(t, device) for t in batch)).cpu())
            bar.update(len(chunk))
    return torch.cat(out)


def check_store(checkpoint: Path, meta: dict, store: FeatureStore) -> None:
    """Refuse a features folder made for another model or K than the checkpoint's: its videos would
    enter the tower at the wrong place (tokens of block L - K taken for patch embeddings)."""
    if meta["model"] != store.meta["model"] or meta["trainable_blocks"] != store.meta["trainable_blocks"]:
        raise MascotError(
            f"{checkpoint} was trained on {meta['model']} with K={meta['trainable_blocks']}, but {store.root} was made "
            f"for {store.meta['model']} with K={store.meta['trainable_blocks']}; give the features folder it was trained "
            "on (or rerun the stages, dvc repro)."
        )


def split_rows(store: FeatureStore, split: str, cfg: EvaluateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a split's videos and rows of their captions: all of them, or with
    `evaluate.max_videos` (smoke runs) the first that many videos and their captions."""
    videos, captions = store.videos(split), store.caption_rows(split)
    if cfg.max_videos is not None and len(videos) > cfg.max_videos:
        videos = videos[: cfg.max_videos]
        captions = captions[np.isin(store.captions["video_index"].to_numpy()[captions], videos)]
    return videos, captions


@torch.no_grad()
def embed_split(
    model: RetrievalModel, store: FeatureStore, split: str, cfg: EvaluateConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caption and video embeddings of a split, and each caption's video (row of the video array),
    computed on the model's device (autocast at `evaluate.precision` there when it is a GPU)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    videos, captions = split_rows(store, split, cfg)
    if len(videos) == 0 or len(captions) == 0:
        raise MascotError(f"{store.root}: the `{split}` split has no videos or no captions to evaluate.")
    batch_size = cfg.batch_size
    video_emb = embed_videos(model, store, videos, cfg, f"the {split} videos")
    with autocast(device, cfg.precision):
        text_emb = torch.cat(
            [
                model.encode_text(on_device(store.text_batch(captions[i : i + batch_size]), device)).cpu()
                for i in range(0, len(captions), batch_size)
            ]
        )
    column = {int(p): i for i, p in enumerate(videos)}
    caption_video = np.array([column[int(v)] for v in store.captions["video_index"].to_numpy()[captions]])
    model.train(was_training)
    return text_emb.float().numpy(), video_emb.float().numpy(), caption_video


def evaluate_split(model: RetrievalModel, store: FeatureStore, split: str, cfg: EvaluateConfig, dsl: bool = False) -> dict:
    """Metrics of a split, computed in caption chunks (never the whole captions × videos matrix);
    with `dsl`, also the DSL post-processed metrics, kept apart under "dsl"."""
    text, video, caption_video = embed_split(model, store, split, cfg)
    metrics = embedding_metrics(text, video, caption_video, cfg.chunk_size, cfg.dsl_scale if dsl else None)
    return {**metrics, "num_videos": len(video), "num_captions": len(text)}


def run(params: Params, features_dir: Path, checkpoint: Path, out: Path, frames_dir: Path | None = None) -> None:
    cfg = params.evaluate
    device = select_device(cfg.device, "evaluate.device")
    log.info("evaluate %s on %s", checkpoint, describe(device, cfg.precision))
    store = FeatureStore.open(features_dir, frames_dir)
    model, meta = load_checkpoint(checkpoint)
    check_store(checkpoint, meta, store)
    model.to(device)
    result = evaluate_split(model, store, "test", cfg, dsl=True)
    result.update(
        {k: meta[k] for k in ("dataset", "variant_name", "seed", "best_epoch")}
        | {"selected_on": f"val {meta['selection_metric']}"}
        # training's record on val (foreground.py; the ISC loss of the selected epoch), for the tables
        | {k: meta.get(k) for k in ("foreground", "selected_isc")}
    )
    write_json(out, result)
    log.info(
        "evaluate: t2v R@1 %.1f, v2t R@1 %.1f on %d test videos", result["t2v"]["R1"], result["v2t"]["R1"], result["num_videos"]
    )
