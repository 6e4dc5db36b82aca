"""Attention-based video masking (docs/model.md, section "One training step of MASCOT", step 2): which patches of each frame each view drops.

A score per patch ranks the patches of every frame; the high-informed mask covers the ⌈ρN⌉
highest-scoring patches, the low-informed mask the ⌈ρN⌉ lowest. Both are computed without
gradient from the unmasked pass of the current model, so masking costs no extra forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import MaskConfig


@dataclass
class ViewMask:
    """Patch indices (n, m) under the mask and (n, N - m) left visible, per frame."""

    masked: torch.Tensor
    visible: torch.Tensor


@dataclass
class InformedMasks:
    high: ViewMask  # the most informative patches are masked (reconstructing them is the hard, useful task)
    low: ViewMask  # the least informative (background) patches are masked

    def view(self, name: str) -> ViewMask:
        return getattr(self, name)


def masked_count(ratio: float, num_patches: int) -> int:
    """⌈ρN⌉, kept below N so that every masked view still sees one patch."""
    return min(num_patches - 1, max(1, math.ceil(ratio * num_patches - 1e-9)))


@torch.no_grad()
def patch_scores(
    cfg: MaskConfig,
    cls_attention: torch.Tensor | None,
    patch_features: torch.Tensor,
    text_features: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scores (n, N), higher = more informative.

    cls_attention: (n, N) last-block CLS→patch attention; patch_features: (n, N, D) projected patch
    tokens; text_features: (n, D) the caption feature of each frame's video.
    """
    if cfg.score == "cls_attn":
        if cls_attention is None:
            raise ValueError("mask.score cls_attn needs the CLS attention of the unmasked pass")
        return cls_attention.float()
    if cfg.score == "text_sim":
        return torch.einsum("npd,nd->np", F.normalize(patch_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1))
    n, num = patch_features.shape[:2]
    return torch.rand(n, num, generator=generator, device=patch_features.device)


def informed_masks(scores: torch.Tensor, ratio: float) -> InformedMasks:
    """High- and low-informed masks from per-frame scores (n, N); ties keep patch order."""
    n, num = scores.shape
    m = masked_count(ratio, num)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ascending = order.flip(1)
    return InformedMasks(
        high=ViewMask(masked=order[:, :m], visible=order[:, m:].sort(dim=1).values),
        low=ViewMask(masked=ascending[:, :m], visible=ascending[:, m:].sort(dim=1).values),
    )
