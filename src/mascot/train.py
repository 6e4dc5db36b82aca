"""The train stage: fit the retrieval model on cached tokens, select the checkpoint on val.

The test split is never read here. The epoch with the best validation score
(`train.selection_metric`) is the one saved; every epoch is logged for `dvc plots`.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic import atomic_file
from .clip_model import create_clip
from .config import Params, TrainConfig
from .errors import MascotError
from .evaluate import evaluate_split, save_checkpoint
from .features import FeatureStore
from .model import RetrievalModel
from .objective import Objective

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def optimizer_for(model: RetrievalModel | Objective, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; CLIP weights at lr × clip_lr_scale, new modules at lr; no decay on biases, norms, scales."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((model.is_new_module(name), p.ndim >= 2), []).append(p)
    return torch.optim.AdamW(
        [
            {"params": ps, "lr": cfg.lr if new else cfg.lr * cfg.clip_lr_scale, "weight_decay": cfg.weight_decay if decay else 0.0}
            for (new, decay), ps in groups.items()
        ]
    )


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def selection_score(metrics: dict, name: str) -> float:
    if name == "t2v_R1":
        return metrics["t2v"]["R1"]
    return sum(metrics[d][k] for d in ("t2v", "v2t") for k in ("R1", "R5", "R10"))


# No wall-clock column: the log is tracked in git and must be identical when a run is reproduced.
# Loss terms are logged unweighted; the ones a variant does not use stay empty.
TERMS = ("nce", "nce_masked", "kl", "isc")
LOG_FIELDS = ("epoch", "step", "loss", *TERMS, "lr", "val_t2v_R1", "val_v2t_R1", "val_score")


def run(params: Params, features_dir: Path, dataset: str, variant_name: str, seed: int, model_out: Path, log_out: Path) -> None:
    cfg = params.train
    variant = params.variant(variant_name)
    store = FeatureStore.open(features_dir)
    if store.meta["trainable_blocks"] != cfg.trainable_blocks or store.meta["model"] != params.clip.model:
        raise MascotError(
            f"{features_dir} holds tokens of {store.meta['model']} for K={store.meta['trainable_blocks']} trainable blocks, "
            f"but params.yaml asks for {params.clip.model} with K={cfg.trainable_blocks}; rerun the features stage (dvc repro)."
        )
    train_rows = store.caption_rows("train")
    if len(train_rows) < 2 or len(store.videos("val")) == 0:
        raise MascotError(f"{features_dir}: training needs at least 2 training captions and a non-empty val split.")

    seed_everything(seed)
    model = RetrievalModel(create_clip(params.clip), cfg.trainable_blocks, variant, store.meta["num_frames"], cfg.logit_scale_max)
    objective = Objective(model, variant).train()
    optimizer = optimizer_for(objective, cfg)
    batch = min(cfg.batch_size, len(train_rows))
    steps_per_epoch = len(train_rows) // batch
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_fraction)
    generator = np.random.default_rng(seed)
    caption_video = store.captions["video_index"].to_numpy()

    log_rows, best, best_state, step = [], -math.inf, None, 0
    for epoch in range(1, cfg.epochs + 1):
        start, sums = time.perf_counter(), {}
        order = generator.permutation(train_rows)
        bar = tqdm(range(steps_per_epoch), desc=f"train {dataset}/{variant_name} epoch {epoch}", disable=None)
        for i in bar:
            rows = order[i * batch : (i + 1) * batch]
            tokens, mask = store.video_batch(caption_video[rows])
            terms = objective.step(tokens, mask, store.text_batch(rows)).terms
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise MascotError(f"train {dataset}/{variant_name}: the loss became {loss.item()} at step {step}; lower train.lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            model.clamp_logit_scale()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val = evaluate_split(model, store, "val", params.evaluate)  # no DSL: selection on plain scores
        score = selection_score(val, cfg.selection_metric)
        log_rows.append(
            {
                "epoch": epoch,
                "step": step,
                **{name: round(sums[name] / steps_per_epoch, 6) if name in sums else "" for name in ("loss", *TERMS)},
                "lr": optimizer.param_groups[0]["lr"],
                "val_t2v_R1": round(val["t2v"]["R1"], 4),
                "val_v2t_R1": round(val["v2t"]["R1"], 4),
                "val_score": round(score, 4),
            }
        )
        log.info(
            "epoch %d: loss %.4f, val t2v R@1 %.1f, %s %.2f (%.1f s)",
            epoch, log_rows[-1]["loss"], val["t2v"]["R1"], cfg.selection_metric, score, time.perf_counter() - start,
        )
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model.load_state_dict(best_state)
    meta = {
        "dataset": dataset,
        "variant_name": variant_name,
        "variant": variant.model_dump(),
        "seed": seed,
        "model": params.clip.model,
        "pretrained": params.clip.pretrained,
        "trainable_blocks": cfg.trainable_blocks,
        "num_frames": store.meta["num_frames"],
        "logit_scale_max": cfg.logit_scale_max,
        "selection_metric": cfg.selection_metric,
        "best_epoch": best_epoch,
        "best_val_score": best,
    }
    save_checkpoint(model, meta, model_out)
    with atomic_file(log_out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(log_rows)
    log.info("train: selected epoch %d (val %s %.2f) → %s", best_epoch, cfg.selection_metric, best, model_out)
