"""The training objective of a variant (docs/model.md, section "One training step of MASCOT"), and the training-only heads it owns.

  L = L_nce(full) + λ_dual · (L_nce(v_h) + L_nce(v_l)) / 2 + λ_kl · L_kl + λ_isc · L_isc

A variant without `mask` is the base model: L = L_nce(full). In eval mode nothing is masked and
only L_nce(full) is computed, so validation losses and inference are the base model's.
The ISC decoder lives here, not in the retrieval model: checkpoints hold only what inference uses.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clip_model import TowerOutput, masking_needs_whole_tower
from .config import MaskConfig, VariantConfig
from .devices import on_device
from .distributed import gather, world
from .errors import ConfigError
from .isc import ISCDecoder, completion_loss
from .masking import InformedMasks, informed_masks, patch_scores
from .model import RetrievalModel, contrastive

VIEWS = ("high", "low")


def distribution_kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) ‖ softmax(logits)), averaged over the text→video rows and the
    video→text columns; the target side carries no gradient."""
    target_logits = target_logits.detach()

    def kl(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="batchmean")

    return (kl(target_logits, logits) + kl(target_logits.t(), logits.t())) / 2


def dual_kl(logits: dict[str, torch.Tensor], anchor: str) -> torch.Tensor:
    """The two masked views teach each other (symmetric KL); with anchor `full` both are also
    pulled towards the unmasked view's distribution, which receives no gradient."""
    loss = (distribution_kl(logits["high"], logits["low"]) + distribution_kl(logits["low"], logits["high"])) / 2
    if anchor == "full":
        loss = loss + (distribution_kl(logits["full"], logits["high"]) + distribution_kl(logits["full"], logits["low"])) / 2
    return loss


@dataclass
class Step:
    """One batch's loss terms (unweighted, plus the weighted total `loss`) and what produced them."""

    terms: dict[str, torch.Tensor]
    views: dict[str, TowerOutput]
    masks: InformedMasks | None


@dataclass
class Encoded:
    """What a set of pairs gives on its own, before the batch couples them: the normalized text
    embeddings and each view's video embeddings (one row a pair), and the ISC term, a mean over
    the set's `frames` valid frames (None without ISC)."""

    text: torch.Tensor
    videos: dict[str, torch.Tensor]
    isc: torch.Tensor | None
    frames: int
    views: dict[str, TowerOutput]
    masks: InformedMasks | None


def view_masks(model: RetrievalModel, cfg: MaskConfig, full: TowerOutput, text_per_frame: torch.Tensor) -> InformedMasks:
    """The high- and low-informed masks of each frame from its unmasked pass (`full`, run with
    attention when the score is cls_attn) and its caption's embedding (for text_sim)."""
    patch_features = model.vision.project(full.patches) if cfg.score == "text_sim" else full.patches
    return informed_masks(patch_scores(cfg, full.cls_attention, patch_features, text_per_frame), cfg.ratio)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class Objective(nn.Module):
    def __init__(self, model: RetrievalModel, variant: VariantConfig):
        super().__init__()
        self.model = model
        self.variant = variant
        masking = variant.mask is not None
        if masking and not model.vision.whole_tower:
            raise ConfigError(masking_needs_whole_tower(len(model.vision.blocks.blocks), model.vision.depth))
        self.decoder = (
            ISCDecoder(variant.isc, model.vision.width, model.text.width) if masking and variant.isc.weight > 0 else None
        )

    def is_new_module(self, name: str) -> bool:
        """Heads that are not CLIP's (the temporal module, the ISC decoder) train at the full lr."""
        return self.model.is_new_module(name.removeprefix("model.")) if name.startswith("model.") else True

    def forward(self, tokens: torch.Tensor, frame_mask: torch.Tensor, text_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms (what DistributedDataParallel wraps; `step` also returns the views)."""
        return self.step(tokens, frame_mask, text_tokens).terms

    def step(self, tokens: torch.Tensor, frame_mask: torch.Tensor, text_tokens: torch.Tensor) -> Step:
        """tokens (B, T, 1+N, W) cached or frames (B, T, S, S, 3) uint8 (K = L), frame_mask (B, T),
        text_tokens (B, L): pair i is video i, caption i."""
        encoded = self.encode(tokens, frame_mask, text_tokens)
        terms = self.batch_terms(encoded.text, encoded.videos, self.model.scale())
        if encoded.isc is not None:
            terms["isc"] = encoded.isc
        return Step({**terms, "loss": self.total(terms)}, encoded.views, encoded.masks)

    def encode(self, tokens: torch.Tensor, frame_mask: torch.Tensor, text_tokens: torch.Tensor) -> Encoded:
        """Everything a pair contributes that depends on that pair alone (masks, views, ISC)."""
        model, cfg = self.model, self.variant
        masking = self.training and cfg.mask is not None
        valid = model.frame_tokens(tokens[frame_mask])
        full = model.vision.run(valid, attention=masking and cfg.mask.score == "cls_attn")
        text_feature, text_states = model.text(text_tokens, return_tokens=True)
        text = F.normalize(text_feature, dim=-1)
        videos = {"full": model.pool(full.embedding, frame_mask)}
        views = {"full": full}
        if not masking:
            return Encoded(text, videos, None, len(valid), views, None)

        frame_video = frame_mask.nonzero()[:, 0]  # the batch row (video, caption) of each valid frame
        masks = view_masks(model, cfg.mask, full, text[frame_video])
        # Both masked views keep the same number of tokens: one batched pass encodes them.
        both = model.vision.run(valid.repeat(2, 1, 1), keep=torch.cat([masks.high.visible, masks.low.visible]))
        for i, name in enumerate(VIEWS):
            part = slice(i * len(valid), (i + 1) * len(valid))
            views[name] = TowerOutput(both.embedding[part], both.patches[part], None)
            videos[name] = model.pool(views[name].embedding, frame_mask)
        isc = self.completion(views, masks, text_tokens, text_states, frame_video) if self.decoder is not None else None
        return Encoded(text, videos, isc, len(valid), views, masks)

    def batch_terms(self, text: torch.Tensor, videos: dict[str, torch.Tensor], scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms that couple the pairs of the global batch (embeddings gathered over processes,
        identity in one): the contrastive losses and the masked views' KL."""
        text_all = gather(text)
        logits = {name: scale * text_all @ gather(video).t() for name, video in videos.items()}
        terms = {"nce": contrastive(logits["full"])}
        if "high" in logits:
            terms["nce_masked"] = (contrastive(logits["high"]) + contrastive(logits["low"])) / 2
            terms["kl"] = dual_kl(logits, self.variant.dual.anchor)
        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """L = L_nce + λ_dual · L_nce(masked) + λ_kl · L_kl + λ_isc · L_isc, over the terms present."""
        if "nce_masked" not in terms:
            return terms["nce"]
        cfg = self.variant
        loss = terms["nce"] + cfg.dual.weight * terms["nce_masked"] + cfg.dual.kl_weight * terms["kl"]
        if "isc" in terms:
            loss = loss + cfg.isc.weight * terms["isc"]
        return loss

    def cached_step(
        self,
        tokens: torch.Tensor,
        frame_mask: torch.Tensor,
        text_tokens: torch.Tensor,
        chunk: int,
        autocast: Callable[[], AbstractContextManager],
        scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
        device: torch.device | None = None,
    ) -> dict[str, torch.Tensor]:
        """The step's loss terms and gradients (accumulated into .grad; backward included) with the
        activations of `chunk` pairs at a time: gradient caching (Gao et al., 2021). Pass 1 encodes
        every chunk without a graph; the batch terms are differentiated with respect to the
        embeddings only; pass 2 re-encodes each chunk (same random masks: the generator is
        replayed) and back-propagates those embedding gradients plus its share of the ISC term.
        The same loss and gradients as `step` up to float rounding, for any chunk (random masks:
        where the generator draws a chunk's masks as it would within the whole batch, as on the
        CPU; on CUDA the draws may differ, same distribution). Tokens may stay on the CPU: each
        chunk moves to `device` when encoded, and pass 1 keeps only the embeddings, so memory
        follows the chunk, not the batch. `scale_loss` is the fp16 loss scaler's `scale`."""
        if world()[1] > 1:
            raise ConfigError("`train.grad_cache_chunk` works in one process; with several, set it to 0.")
        device = device or tokens.device

        def chunk_of(part: slice) -> tuple[torch.Tensor, ...]:
            return tuple(on_device(t[part], device) for t in (tokens, frame_mask, text_tokens))

        parts = [slice(i, i + chunk) for i in range(0, len(tokens), chunk)]
        states, encoded = [], []
        with torch.no_grad():
            for part in parts:
                states.append(_rng_state(device))
                with autocast():
                    e = self.encode(*chunk_of(part))
                encoded.append(Encoded(e.text, e.videos, None, e.frames, {}, None))  # the embeddings only
        text = torch.cat([e.text for e in encoded]).detach().requires_grad_()
        videos = {name: torch.cat([e.videos[name] for e in encoded]).detach().requires_grad_() for name in encoded[0].videos}
        with autocast():
            terms = self.batch_terms(text, videos, self.model.scale())
            coupled = self.total(terms)
        scale_loss(coupled).backward()
        frames = sum(e.frames for e in encoded)
        isc = []
        for part, state in zip(parts, states, strict=True):
            _set_rng_state(state, device)
            with autocast():
                e = self.encode(*chunk_of(part))
                surrogate = (e.text * text.grad[part]).sum()
                for name, video in e.videos.items():
                    surrogate = surrogate + (video * videos[name].grad[part]).sum()
                if e.isc is not None:
                    share = e.isc * (e.frames / frames)  # the batch's ISC is the mean over all valid frames
                    surrogate = surrogate + scale_loss(self.variant.isc.weight * share)
                    isc.append(share.detach())
            surrogate.backward()
        terms = {name: value.detach() for name, value in terms.items()}
        if isc:
            terms["isc"] = torch.stack(isc).sum()
        return {**terms, "loss": self.total(terms)}

    def completion(
        self,
        views: dict[str, TowerOutput],
        masks: InformedMasks,
        text_tokens: torch.Tensor,
        text_states: torch.Tensor,
        frame_video: torch.Tensor,
    ) -> torch.Tensor:
        """L_isc over the masked positions of the reconstructed views (`isc.views`); the targets
        are the unmasked view's patches (`views["full"]`), without gradient."""
        full = views["full"]
        positions = self.model.vision.patch_positions
        text_valid = torch.arange(text_tokens.shape[1], device=text_tokens.device) <= text_tokens.argmax(dim=-1, keepdim=True)
        text = self.decoder.text_proj(text_states)[frame_video]
        losses = []
        for name in ("high",) if self.variant.isc.views == "high" else VIEWS:
            masked = masks.view(name).masked
            prediction = self.decoder(views[name].patches, masked, positions, text, text_valid[frame_video])
            target = torch.gather(full.patches, 1, masked.unsqueeze(-1).expand(-1, -1, full.patches.shape[-1]))
            losses.append(completion_loss(prediction, target))
        return torch.stack(losses).mean()
