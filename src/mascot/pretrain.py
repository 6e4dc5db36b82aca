"""The pretrain stage: the embedded default's CLIP, pretrained on image–caption pairs before it sees a video.

The paper fine-tunes a CLIP pretrained on image–text pairs, and MASCOT picks its masks with that
model's attention. A tiny CLIP from random weights would start with attention that is noise, so the
embedded default first pretrains its `clip.model` contrastively (CLIP's symmetric InfoNCE, every
weight trained) on a pool of still images the synthetic generator draws from the same world (the
shapes, colours and sizes of its videos, over backgrounds of the same kind), each with a caption
of what it shows. No frame of the retrieval splits is among them: each image has its own random
stream, apart from every video's (synthetic.render_still). Motion is not in a still, so the
captions name colour, shape and size only.

Outputs: `<out>/clip.pt`, an open_clip checkpoint ({"state_dict": ...}, GELU as the tiny config is
built) that `clip.pretrained` names, and a metrics file with the zero-shot retrieval of held-out
images (every colour × shape × size combination, `pretrain.eval_renders` times, one 80-way
retrieval per render: chance R@1 = 1 / 80), before and after pretraining, and the loss per epoch.
A preset with other weights (`clip.pretrained: openai`, say) does not pretrain: the stage writes
only a note and a metrics file saying so.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_dir, write_json
from .clip_model import TextEncoder, create_clip, tokenizer, visual_normalization
from .config import ClipConfig, Params, PretrainConfig
from .datasets.synthetic import PALETTE, SHAPES, SIZES, SyntheticConfig, draw_attributes, render_still
from .errors import MascotError
from .fitting import cosine_with_warmup, seed_everything
from .metrics import embedding_metrics
from .model import contrastive
from .progress import Progress
from .video import resize_center_crop

log = logging.getLogger(__name__)
CHECKPOINT = "clip.pt"
#: Captions of the pretraining pool: what a still shows (no motion). The held-out set uses the first,
#: which names every attribute, so each of its 80 captions fits one combination.
STILL_TEMPLATES = (
    "a {size} {colour} {shape}",
    "a {colour} {shape} over a busy background",
    "a {shape} coloured {colour}",
)
POOL, HELD_OUT = 0, 1  # the two image streams: np.random.default_rng([STREAM, pretrain.seed, kind, index])
STREAM = 0x5711


def _render(job: tuple[SyntheticConfig, int, int, int, dict | None]) -> tuple[np.ndarray, str]:
    """Still number `index` of a stream and its caption (NumPy only: the workers never start torch)."""
    cfg, seed, kind, index, attrs = job
    rng = np.random.default_rng([STREAM, seed, kind, index])
    attrs = attrs or draw_attributes(rng)
    template = STILL_TEMPLATES[0] if kind == HELD_OUT else STILL_TEMPLATES[int(rng.integers(len(STILL_TEMPLATES)))]
    return render_still(rng, cfg, attrs), template.format(**attrs)


def combinations() -> list[dict]:
    """Every colour × shape × size, with a fixed motion (a still does not show it)."""
    return [{"colour": c, "shape": s, "size": z, "motion": "right"} for c, s, z in itertools.product(PALETTE, SHAPES, SIZES)]


def render(cfg: SyntheticConfig, seed: int, kind: int, attrs: list[dict | None], size: int) -> tuple[np.ndarray, list[str]]:
    """Images (n, size, size, 3) uint8, resized and centre-cropped as the frames stage does, and
    captions of one stream; drawn in parallel (the same for any worker count)."""
    jobs = [(cfg, seed, kind, i, a) for i, a in enumerate(attrs)]
    with ProcessPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_render, jobs, chunksize=256))
    images = np.concatenate(
        [resize_center_crop(np.stack([r[0] for r in results[i : i + 1024]]), size) for i in range(0, len(results), 1024)]
    )
    return images, [r[1] for r in results]


def _normalized(images: torch.Tensor, visual: torch.nn.Module) -> torch.Tensor:
    """uint8 (n, S, S, 3) → the tower's input, with the pixel statistics the retrieval stages use for it."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in visual_normalization(visual))
    return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std


class ImageText(torch.nn.Module):
    """CLIP's two towers as pretraining uses them: normalized image and caption embeddings."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip
        self.text = TextEncoder(clip)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.clip.encode_image(_normalized(images, self.clip.visual)), dim=-1), F.normalize(
            self.text(tokens), dim=-1
        )


@torch.no_grad()
def zero_shot(model: ImageText, images: np.ndarray, tokens: torch.Tensor, renders: int) -> dict:
    """Text→image and image→text R@k of the held-out set, one retrieval over the combinations per
    render, averaged over renders."""
    was_training = model.training
    model.eval()
    image_emb, text_emb = model(torch.from_numpy(images), tokens)
    model.train(was_training)
    per = len(images) // renders
    runs = [
        embedding_metrics(text_emb[r * per : (r + 1) * per].numpy(), image_emb[r * per : (r + 1) * per].numpy(), np.arange(per))
        for r in range(renders)
    ]
    return {d: {m: round(float(np.mean([run[d][m] for run in runs])), 4) for m in ("R1", "R5", "R10")} for d in ("t2v", "v2t")}


def run(params: Params, out: Path, metrics_out: Path) -> None:
    cfg: PretrainConfig = params.pretrain
    checkpoint = Path(out) / CHECKPOINT
    if params.clip.pretrained is None or Path(params.clip.pretrained).resolve() != checkpoint.resolve():
        note = f"clip.pretrained is {params.clip.pretrained!r}, not {checkpoint}: nothing is pretrained here."
        with atomic_dir(out) as tmp:
            (tmp / "NOT_PRETRAINED.txt").write_text(note + "\n")
        write_json(metrics_out, {"pretrained": False, "note": note})
        log.info("pretrain: %s", note)
        return
    synthetic = params.dataset("synthetic") if "synthetic" in params.data else SyntheticConfig()
    model_cfg = ClipConfig(model=params.clip.model, pretrained=None, init_seed=params.clip.init_seed)
    clip = create_clip(model_cfg)
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    tokenize = tokenizer(params.clip.model, params.features.max_words)
    log.info("pretrain: rendering %d pool images and %d held-out ones", cfg.images, len(combinations()) * cfg.eval_renders)
    images, captions = render(synthetic, cfg.seed, POOL, [None] * cfg.images, size)
    held_images, held_captions = render(synthetic, cfg.seed, HELD_OUT, combinations() * cfg.eval_renders, size)
    tokens, held_tokens = tokenize(captions), tokenize(held_captions)

    seed_everything(cfg.seed)
    model = ImageText(clip).train()
    before = zero_shot(model, held_images, held_tokens, cfg.eval_renders)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_fraction)
    generator = np.random.default_rng(cfg.seed)
    epochs = []
    for epoch in range(1, cfg.epochs + 1):
        order = generator.permutation(len(images))
        total = 0.0
        bar = Progress(steps_per_epoch, f"pretrain epoch {epoch}", "step")
        for i in range(steps_per_epoch):
            rows = np.sort(order[i * cfg.batch_size : (i + 1) * cfg.batch_size])
            image_emb, text_emb = model(torch.from_numpy(images[rows]), tokens[rows])
            loss = contrastive(clip.logit_scale.exp().clamp(max=100.0) * text_emb @ image_emb.t())
            if not torch.isfinite(loss):
                raise MascotError(f"pretrain: the loss became {loss.item()} at epoch {epoch}; lower pretrain.lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(max=math.log(100.0))
            total += loss.item()
            bar.update(1, loss=f"{loss.item():.3f}")
        bar.close()
        epochs.append({"epoch": epoch, "loss": round(total / steps_per_epoch, 6)})
        log.info("pretrain epoch %d: loss %.4f", epoch, epochs[-1]["loss"])
    after = zero_shot(model, held_images, held_tokens, cfg.eval_renders)
    log.info(
        "pretrain: zero-shot text→image R@1 %.1f (random weights %.1f, chance %.2f)",
        after["t2v"]["R1"],
        before["t2v"]["R1"],
        100 / len(combinations()),
    )
    with atomic_dir(out) as tmp:
        torch.save({"state_dict": clip.state_dict()}, tmp / CHECKPOINT)
    write_json(
        metrics_out,
        {
            "pretrained": True,
            "model": params.clip.model,
            "images": cfg.images,
            "epochs": epochs,
            "steps": steps_per_epoch * cfg.epochs,
            "held_out": {
                "combinations": len(combinations()),
                "renders": cfg.eval_renders,
                "chance_R1": round(100 / len(combinations()), 4),
            },
            # the directions are named as the retrieval metrics name them: t2v = text → image, v2t = image → text
            "zero_shot": after,
            "random_weights": before,
        },
    )
