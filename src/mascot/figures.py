"""The figures stage, one per dataset: pictures to look at beside the tables (DVC image plots).

masks.png      the masked variant `figures.masked` at its selected checkpoint (seed `figures.seed`):
               `figures.videos` fixed validation videos (the first ones of the split), three frames
               each, with the patches its high-informed and its low-informed mask drop darkened,
               computed as in training (objective.view_masks, from that model's unmasked pass).
retrieval.png  `figures.queries` fixed test captions (the first caption of each of the first test
               videos): the top `figures.top_k` test videos of the baseline `figures.baseline` and of
               the masked variant, a middle frame each, the correct video framed in green.

`dvc plots show` renders both with the training curves; `dvc plots diff` compares them across
experiments.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_dir
from .checkpoint import load_checkpoint
from .config import Params, VariantConfig
from .devices import autocast, on_device, select_device
from .errors import MascotError
from .evaluate import check_store, embed_videos, split_rows
from .features import FeatureStore
from .frames import open_frames, video_frames
from .model import RetrievalModel
from .objective import view_masks

log = logging.getLogger(__name__)
DROPPED, CORRECT = (0.0, 0.0, 0.0), "#12a012"  # dropped patches are darkened: a colour would mix with the content's


def shaded(frame: np.ndarray, dropped: np.ndarray, grid: int, colour: tuple[float, float, float]) -> np.ndarray:
    """The frame (S, S, 3) uint8 as floats in [0, 1], the patches `dropped` (indices into the
    grid × grid patches, row-major, as the tower orders them) blended 60 % towards `colour`."""
    image = frame.astype(np.float32) / 255
    step = frame.shape[0] // grid
    for index in np.asarray(dropped).tolist():
        r, c = divmod(index, grid)
        block = image[r * step : (r + 1) * step, c * step : (c + 1) * step]
        block[:] = 0.4 * block + 0.6 * np.asarray(colour, np.float32)
    return image


@torch.no_grad()
def masks_figure(
    model: RetrievalModel, variant, store: FeatureStore, index, shards: dict, count: int, name: str, encoded: bool = False
):
    """The masks of `variant` on the first `count` validation videos; `encoded`: the model's frames
    decoded on its device (evaluate.decode_on: device), as validation decodes them."""
    if variant.mask is None:  # a pipeline without a masked variant: say so rather than draw nothing
        fig = plt.figure(figsize=(6, 1))
        fig.text(0.5, 0.5, f"figures.masked `{name}` trains without masks: no masks to show", ha="center", va="center")
        return fig
    device = next(model.parameters()).device
    positions = store.videos("val")[:count]
    grid = int(round((store.meta["tokens_per_frame"] - 1) ** 0.5))
    fig, axes = plt.subplots(len(positions), 6, figsize=(9, 1.6 * len(positions) + 0.6), squeeze=False)
    for axes_row, position in zip(axes, positions, strict=True):
        tokens, frame_mask = store.video_batch(np.array([position]), encoded)
        valid = model.frame_tokens(on_device(tokens, device)[0][on_device(frame_mask, device)[0]])
        full = model.vision.run(valid, attention=variant.mask.score == "cls_attn")
        caption_row = np.flatnonzero(store.captions["video_index"].to_numpy() == position)[0]
        text = model.encode_text(on_device(store.text_batch(np.array([caption_row])), device)).float()
        masks = view_masks(model, variant.mask, full, text.expand(len(valid), -1))
        video_id = store.index["video_id"].iloc[position]
        frames = video_frames(index, shards, video_id)
        picks = sorted({0, len(valid) // 2, len(valid) - 1})
        picks += [picks[-1]] * (3 - len(picks))
        for j, t in enumerate(picks):
            for k, name in enumerate(("high", "low")):
                ax = axes_row[2 * j + k]
                ax.imshow(shaded(frames[t], masks.view(name).masked[t].cpu().numpy(), grid, DROPPED))
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{video_id} f{t}: {name}" if j == k == 0 else f"f{t}: {name}", fontsize=7, loc="left")
    fig.suptitle(
        f"{variant.mask.score} masks, ratio {variant.mask.ratio}: the patches each view drops are darkened",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


@torch.no_grad()
def retrieval_figure(models: dict[str, RetrievalModel], store: FeatureStore, index, shards: dict, params: Params):
    cfg = params.figures
    videos = split_rows(store, "test", params.evaluate)[0]
    video_of = store.captions["video_index"].to_numpy()
    rows = [np.flatnonzero(video_of == v)[0] for v in videos[: cfg.queries]]
    k = min(cfg.top_k, len(videos))
    lines = len(rows) * len(models)
    fig, axes = plt.subplots(lines, k, figsize=(1.6 * k, 1.85 * lines + 0.75), squeeze=False)
    ranked = {}  # per model: the top k test videos of each query, from one pass over the test split
    for label, model in models.items():
        device = next(model.parameters()).device
        model.eval()
        video_emb = embed_videos(model, store, videos, params.evaluate, f"the test videos ({label})").float()
        with autocast(device, params.evaluate.precision):
            text = model.encode_text(on_device(store.text_batch(np.array(rows)), device)).float().cpu()
        ranked[label] = torch.argsort(text @ video_emb.t(), dim=1, descending=True, stable=True)[:, :k].numpy()
    line = 0
    for q, row in enumerate(rows):
        for label in models:
            best = ranked[label][q]
            for ax, column in zip(axes[line], best, strict=True):
                video_id = store.index["video_id"].iloc[videos[column]]
                frames = video_frames(index, shards, video_id)
                ax.imshow(frames[len(frames) // 2])
                ax.set_xticks([])
                ax.set_yticks([])
                correct = videos[column] == video_of[row]
                for spine in ax.spines.values():
                    spine.set_edgecolor(CORRECT if correct else "#bbbbbb")
                    spine.set_linewidth(4 if correct else 0.5)
            axes[line][0].set_title(f"{label}: “{store.captions['caption'].iloc[row]}”", fontsize=7, loc="left")
            line += 1
    fig.suptitle(f"top {k} test videos per query (correct video framed in green)", fontsize=8)
    # no tight_layout: it would shrink the thumbnails to fit the row titles, which may overhang
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - 0.75 / fig.get_figheight(), wspace=0.06, hspace=0.3)
    return fig


def run(params: Params, dataset: str, features_dir: Path, frames_dir: Path, models_dir: Path, out: Path) -> None:
    cfg = params.figures
    device = select_device(params.evaluate.device, "evaluate.device")
    store = FeatureStore.open(features_dir, frames_dir)
    index, shards = open_frames(frames_dir)
    index = index.set_index("video_id")
    loaded, trained_with = {}, {}
    for name in (cfg.baseline, cfg.masked):
        path = Path(models_dir) / f"{name}-seed{cfg.seed}.pt"
        model, meta = load_checkpoint(path)
        if meta["dataset"] != dataset:
            raise MascotError(f"{path} was trained on {meta['dataset']}, not {dataset}; rerun its train stage (dvc repro).")
        check_store(path, meta, store)
        loaded[name] = model.to(device)
        trained_with[name] = VariantConfig.model_validate(meta["variant"])  # the masks it trained with
    labels = {name: params.variant_defs[name].label or name for name in loaded}
    torch.manual_seed(cfg.seed)  # random-score masks (an ablation's) are drawn reproducibly
    with atomic_dir(out) as tmp:
        for file, fig in (
            (
                "masks.png",
                masks_figure(
                    loaded[cfg.masked],
                    trained_with[cfg.masked],
                    store,
                    index,
                    shards,
                    cfg.videos,
                    cfg.masked,
                    store.decodes_on(params.evaluate.decode_on, "evaluate.decode_on"),
                ),
            ),
            ("retrieval.png", retrieval_figure({labels[n]: m for n, m in loaded.items()}, store, index, shards, params)),
        ):
            fig.savefig(tmp / file, format="png", dpi=72)
            plt.close(fig)
    log.info("figures: masks of %s, retrievals of %s and %s → %s", cfg.masked, cfg.baseline, cfg.masked, out)
