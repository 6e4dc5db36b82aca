"""The base retrieval model (CLIP4Clip lineage), trained on cached tokens.

docs/model.md, section "Where each part lives", describes it.

Frame embedding = proj(ln_post(CLS)) from the top K vision blocks; the temporal module (`meanP` or
`seqTransf`) pools frames into a video embedding; text embedding = CLIP's EOT feature; similarity =
cosine × CLIP's logit scale (clamped). As in CLIP4Clip, frame embeddings are L2-normalised before
the masked mean, and seqTransf adds a residual connection around its transformer.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from open_clip.transformer import Transformer
from torch import nn

from .clip_model import TextEncoder, VisionPrefix, VisionTop
from .config import VariantConfig
from .errors import MascotError

log = logging.getLogger(__name__)
#: Frames embedded a pass: bounds the float copy of the stem's input for an evaluation batch of 64-frame
#: videos (256 × 64 frames at 224 px would be 10 GB); the tokens it returns are as large as before.
#: No training or evaluation batch of the default reaches it.
STEM_CHUNK = 4096


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x (B, T, D) counting only frames where mask (B, T) is True."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class MeanPooling(nn.Module):
    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(F.normalize(frames, dim=-1), mask)


def _reset(module: nn.Module) -> None:
    for m in module.modules():
        for name in ("reset_parameters", "_reset_parameters"):
            if hasattr(m, name) and m is not module:
                getattr(m, name)()
                break


class SeqTransf(nn.Module):
    """Frame position embedding + transformer + residual (CLIP4Clip's seqTransf).

    Layers are initialised from the first layers of CLIP's text transformer, and the position
    embedding from its token position embedding, when the widths match (as CLIP4Clip does);
    otherwise, and for layers beyond the text depth, from scratch.
    """

    def __init__(self, text: TextEncoder, width: int, num_frames: int, layers: int):
        super().__init__()
        text_blocks = list(text.transformer.resblocks)
        if text.width == width:
            blocks = [copy.deepcopy(text_blocks[min(i, len(text_blocks) - 1)]) for i in range(layers)]
            for b in blocks[len(text_blocks) :]:
                _reset(b)
            self.heads = text_blocks[0].attn.num_heads
            self.transformer = Transformer(width, 0, self.heads, batch_first=True)
            self.transformer.resblocks = nn.ModuleList(blocks)
            self.transformer.layers = layers
            pos = text.positional_embedding.detach()
            self.frame_position = nn.Parameter(
                pos[:num_frames].clone() if len(pos) >= num_frames else torch.randn(num_frames, width) * 0.01
            )
        else:
            log.info("seqTransf: text width %d != embedding width %d, initialising from scratch", text.width, width)
            self.heads = max(1, width // 64)
            self.transformer = Transformer(width, layers, self.heads, batch_first=True)
            self.frame_position = nn.Parameter(torch.randn(num_frames, width) * 0.01)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = frames.shape
        x = frames + self.frame_position[:t].to(frames.dtype)
        # Additive key-padding mask, one (T × T) slice per batch element and head.
        pad = torch.zeros(b, 1, 1, t, dtype=frames.dtype, device=frames.device)
        pad = pad.masked_fill(~mask[:, None, None, :], float("-inf")).expand(b, self.heads, t, t).reshape(b * self.heads, t, t)
        x = self.transformer(x, attn_mask=pad) + frames
        return masked_mean(F.normalize(x, dim=-1), mask)


class RetrievalModel(nn.Module):
    """Text and video encoders over cached tokens (K < L) or frames (K = L), with CLIP's logit scale."""

    def __init__(
        self, clip: nn.Module, trainable_blocks: int, variant: VariantConfig, num_frames: int, logit_scale_max: float = 100.0
    ):
        super().__init__()
        self.vision = VisionTop(clip.visual, trainable_blocks)
        # K = L: the frozen patch embedding, run on the frames themselves (features.py caches nothing then)
        self.stem = VisionPrefix(clip.visual, trainable_blocks) if self.vision.whole_tower else None
        self.text = TextEncoder(clip)
        width = self.vision.proj.shape[1] if self.vision.proj is not None else self.vision.ln_post.normalized_shape[0]
        if variant.temporal == "meanP":
            self.temporal: nn.Module = MeanPooling()
        else:
            self.temporal = SeqTransf(self.text, width, num_frames, variant.temporal_layers)
        self.logit_scale = clip.logit_scale
        self.logit_scale_max = logit_scale_max

    def pool(self, frame_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings (n, D) of the valid frames (mask (B, T) True, in order) → video embeddings (B, D)."""
        b, t = mask.shape
        frames = frame_embeddings.new_zeros(b, t, frame_embeddings.shape[-1])
        frames[mask] = frame_embeddings
        return F.normalize(self.temporal(frames, mask), dim=-1)

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames as the features folder gives them (FeatureStore.video_batch), on the device → tokens
        at the input of the top K blocks: uint8 frames (n, S, S, 3) through the frozen patch
        embedding (K = L), cached tokens (n, 1 + N, W) as they are."""
        if frames.dtype != torch.uint8:
            return frames
        if self.stem is None:
            raise MascotError(
                "frames were given to a model that trains only the top blocks (K < L); it runs on the features "
                "stage's cached tokens."
            )
        if len(frames) <= STEM_CHUNK:
            return self.stem(frames)
        return torch.cat([self.stem(frames[i : i + STEM_CHUNK]) for i in range(0, len(frames), STEM_CHUNK)])

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, ...) as stored (frame_tokens) → video embeddings; padded frames are not computed.

        This is inference for every variant: MASCOT masks only during training (docs/model.md, section "Where each part lives").
        """
        return self.pool(self.vision(self.frame_tokens(frames[mask])), mask)

    def encode_text(self, text_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(text_tokens), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.logit_scale_max)

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(max=torch.log(torch.tensor(self.logit_scale_max)).item())

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the vision and text blocks' activations in the backward pass (train.grad_checkpointing):
        activation memory per frame falls to the blocks' inputs (benchmarks/train_memory.py)."""
        self.vision.blocks.checkpointing = enabled
        self.text.transformer.grad_checkpointing = enabled

    def is_new_module(self, name: str) -> bool:
        """Parameters that are not CLIP's own (CLIP4Clip trains them at the full learning rate)."""
        return name.startswith("temporal.")


def contrastive(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of a (text × video) logit matrix whose pair i ↔ i is the positive."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def infonce(text: torch.Tensor, video: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the in-batch similarity matrix (pair i ↔ i)."""
    return contrastive(scale * text @ video.t())
