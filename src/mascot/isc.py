"""Informed Semantics Completion (docs/model.md, section "One training step of MASCOT", step 5): a light decoder that predicts masked patches.

Queries are a learnable mask token plus the position embedding of each masked patch; they attend
(cross-attention, open_clip's own residual blocks) to the visible patches of the same frame and to
the caption's token features, so completion is informed by the text. The target is the unmasked
view's patch token at the same position, with gradient stopped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, ResidualAttentionBlock
from torch import nn

from .config import IscConfig
from .errors import ConfigError


class ISCDecoder(nn.Module):
    def __init__(self, cfg: IscConfig, width: int, text_width: int):
        super().__init__()
        if width % cfg.heads:
            raise ConfigError(f"`isc.heads: {cfg.heads}` must divide the vision width {width}; choose a divisor.")
        self.heads = cfg.heads
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.text_proj = nn.Linear(text_width, width)
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(width, cfg.heads, is_cross_attention=True, batch_first=True) for _ in range(cfg.layers)]
        )
        self.ln_out = LayerNorm(width)
        self.head = nn.Linear(width, width)

    def forward(
        self,
        visible: torch.Tensor,
        masked_index: torch.Tensor,
        positions: torch.Tensor,
        text: torch.Tensor,
        text_valid: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the masked patches of n frames.

        visible: (n, P, W) visible patch tokens of the masked view; masked_index: (n, m) positions in
        [0, N) to predict; positions: (N, W) patch position embeddings; text: (n, L, W) the
        caption's token features (through `text_proj`) for each frame, text_valid: (n, L) which of
        them are real tokens.
        Returns (n, m, W).
        """
        n, m = masked_index.shape
        queries = self.mask_token.to(visible.dtype) + positions.to(visible.dtype)[masked_index]
        context = torch.cat([visible, text.to(visible.dtype)], dim=1)
        valid = torch.cat([torch.ones(visible.shape[:2], dtype=torch.bool, device=visible.device), text_valid], dim=1)
        bias = torch.zeros(valid.shape, dtype=visible.dtype, device=visible.device).masked_fill(~valid, float("-inf"))
        bias = bias[:, None, None, :].expand(n, self.heads, m, valid.shape[1]).reshape(n * self.heads, m, valid.shape[1])
        x = queries
        for block in self.blocks:
            x = block(x, k_x=context, v_x=context, attn_mask=bias)
        return self.head(self.ln_out(x))


def completion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cos over the masked positions; the target carries no gradient."""
    return (1 - F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1)).mean()
