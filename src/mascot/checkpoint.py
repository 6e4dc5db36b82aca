"""The selected model on disk: the train stage writes it, the evaluate stage reads it.

A checkpoint holds the retrieval model's weights and the metadata needed to rebuild it (model name,
K, variant, frames, logit-scale cap; plus what was selected and how). Loading never unpickles
objects (`weights_only=True`): the model is rebuilt from the metadata and the weights are copied in.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_file
from .clip_model import create_clip
from .config import ClipConfig, VariantConfig
from .errors import MascotError
from .model import RetrievalModel


def save_checkpoint(model: RetrievalModel, meta: dict, path: Path) -> None:
    """Write the weights and `meta` atomically (the file appears complete or not at all)."""
    with atomic_file(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)


def load_checkpoint(path: Path) -> tuple[RetrievalModel, dict]:
    """Rebuild the model from a checkpoint's own metadata (no pickled objects are loaded), in eval mode."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MascotError(f"{path}: checkpoint not found; run the train stage first.") from None
    meta = ckpt["meta"]
    clip = create_clip(ClipConfig(model=meta["model"], pretrained=None))
    model = RetrievalModel(
        clip, meta["trainable_blocks"], VariantConfig.model_validate(meta["variant"]), meta["num_frames"], meta["logit_scale_max"]
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise MascotError(
            f"{path}: its weights do not fit the model its metadata describes ({str(exc).splitlines()[0]}); it was "
            "written by an older revision (before K = L trained from the frames, it had no patch embedding): rerun its "
            "train stage (dvc repro)."
        ) from None
    return model.eval(), meta
