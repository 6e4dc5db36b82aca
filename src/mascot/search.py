"""`python -m mascot search`: poke a trained model with a free-text query.

A checkpoint (train stage), a features folder (features stage) and a query give the top-k videos of
a split by cosine similarity of the query's embedding with each video's, the same similarity the
metrics rank by (without the logit scale, which does not change the order). With the annotations
table the video files are named; with the frames folder a contact sheet (one row of sampled frames
per retrieved video) is drawn.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .annotations import read_table
from .atomic import atomic_file
from .checkpoint import load_checkpoint
from .clip_model import tokenizer
from .config import Params
from .devices import autocast, describe, on_device, select_device
from .errors import MascotError
from .evaluate import check_store, embed_videos
from .features import FeatureStore
from .model import RetrievalModel

log = logging.getLogger(__name__)


@torch.no_grad()
def top_videos(model: RetrievalModel, store: FeatureStore, query: str, split: str, k: int, params: Params) -> pd.DataFrame:
    """rank, video_id, score (cosine similarity) of the `k` videos of `split` closest to `query`."""
    positions = store.videos(split)
    if len(positions) == 0:
        raise MascotError(f"{store.root}: the `{split}` split has no videos; choose one of {sorted(set(store.index['split']))}.")
    if not query.strip():
        raise MascotError("search: the query is empty; give a sentence describing the video, e.g. 'a red circle moving up'.")
    model.eval()
    device = next(model.parameters()).device
    text = tokenizer(store.meta["model"], store.meta["max_words"])([query])
    with autocast(device, params.evaluate.precision):  # as evaluate embeds captions
        query_emb = model.encode_text(on_device(text, device)).float().cpu()
    videos = embed_videos(model, store, positions, params.evaluate, f"the {split} videos").float()
    scores = (videos @ query_emb[0]).numpy()
    best = np.argsort(-scores, kind="stable")[:k]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(best) + 1),
            "video_id": store.index["video_id"].to_numpy()[positions[best]],
            "score": scores[best].round(4),
            "position": positions[best],
        }
    )


def contact_sheet(frames_dir: Path, store: FeatureStore, hits: pd.DataFrame, query: str, out: Path) -> None:
    """One row of sampled frames per retrieved video, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .frames import open_frames, video_frames

    index, shards = open_frames(frames_dir)
    by_id = index.set_index("video_id")
    columns = int(by_id["num_valid"].max())
    fig, axes = plt.subplots(len(hits), columns, figsize=(1.6 * columns, 1.7 * len(hits)), squeeze=False)
    for axes_row, hit in zip(axes, hits.itertuples(), strict=True):
        if hit.video_id not in by_id.index:
            raise MascotError(
                f"{frames_dir}: video {hit.video_id} is not in this frames folder; give the one the features came from."
            )
        frames = video_frames(by_id, shards, hit.video_id)
        for j, ax in enumerate(axes_row):
            ax.axis("off")
            if j < len(frames):
                ax.imshow(frames[j])
        axes_row[0].set_title(f"{hit.rank}. {hit.video_id}  {hit.score:.3f}", loc="left", fontsize=8)
    fig.suptitle(f"query: {query}", fontsize=9)
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def run(
    params: Params,
    checkpoint: Path,
    features_dir: Path,
    query: str,
    k: int = 5,
    split: str = "test",
    annotations: Path | None = None,
    frames_dir: Path | None = None,
    sheet: Path | None = None,
) -> pd.DataFrame:
    """Print (and return) the top-k table; draw the contact sheet when `sheet` is given."""
    device = select_device(params.evaluate.device, "evaluate.device")
    store = FeatureStore.open(features_dir, frames_dir)
    model, meta = load_checkpoint(checkpoint)
    check_store(checkpoint, meta, store)
    log.info("search: %s on %s", checkpoint, describe(device, params.evaluate.precision))
    hits = top_videos(model.to(device), store, query, split, k, params)
    if annotations is not None:
        paths = read_table(annotations).drop_duplicates("video_id").set_index("video_id")["video_path"]
        hits["video_path"] = hits["video_id"].map(paths)
    if sheet is not None:
        contact_sheet(frames_dir or Path(features_dir).parent / "frames", store, hits, query, sheet)
        log.info("search: contact sheet written to %s", sheet)
    print(hits.drop(columns="position").to_string(index=False))
    return hits
