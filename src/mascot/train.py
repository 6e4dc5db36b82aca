"""The train stage: fit the retrieval model on cached tokens, select the checkpoint on val.

The test split is never read here. The epoch with the best validation score
(`train.selection_metric`) is the one saved; every epoch is logged for `dvc plots`. The training
state is saved at every epoch end (and every `train.checkpoint_every` steps) so that an interrupted
run continues exactly where it stopped (see resume.py).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed, resume
from .checkpoint import save_checkpoint
from .clip_model import check_split, create_clip
from .config import Params, TrainConfig
from .devices import autocast, describe, grad_scaler, select_device
from .errors import MascotError
from .evaluate import evaluate_split
from .features import FeatureStore
from .model import RetrievalModel
from .objective import Objective
from .progress import Progress
from .train_log import EPOCH_FIELDS, STEP_FIELDS, TERMS, curve_path, plot_curves, steps_path, write_csv

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed every generator and make reruns bit-identical. Without deterministic algorithms the CPU
    backward of indexing with repeated indices (objective.py gives each frame its caption's tokens)
    adds in parallel with atomic float additions, in an order that varies between runs whenever the
    valid frames of a batch do not split evenly over the threads (benchmarks/train_determinism.py)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, where CUDA has no such kernel


# CLIP4Clip's no-decay list: substrings of parameter names (its BertAdam call, main_task_retrieval.py).
CLIP4CLIP_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def decays(name: str, p: torch.nn.Parameter, rule: str) -> bool:
    """Whether weight decay applies to parameter `name` under `train.no_decay`."""
    if rule == "clip4clip":
        return not any(part in name for part in CLIP4CLIP_NO_DECAY)
    return p.ndim >= 2


def optimizer_for(model: RetrievalModel | Objective, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (betas, eps from `train`); CLIP weights at lr × clip_lr_scale, new modules at lr; weight
    decay except where `train.no_decay` says not."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((model.is_new_module(name), decays(name, p, cfg.no_decay)), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": ps,
                "lr": cfg.lr if new else cfg.lr * cfg.clip_lr_scale,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            }
            for (new, decay), ps in groups.items()
        ],
        betas=tuple(cfg.adam_betas),
        eps=cfg.adam_eps,
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


def warn_random_weights_at_low_lr(params: Params) -> None:
    """Random CLIP weights trained at a fraction of the lr (the paper recipe's clip_lr_scale, meant
    for pretrained weights) stay nearly random: every variant then measures the same."""
    cfg = params.train
    if params.clip.pretrained is None and cfg.clip_lr_scale < 1:
        log.warning(
            "clip.pretrained is null (random CLIP weights) but train.clip_lr_scale = %g trains them at lr %g, the "
            "setting meant for pretrained weights: the random tower barely moves, so the variants measure alike (meanP "
            "and MASCOT gave identical test metrics in such a run) and the numbers say nothing about the method. Set "
            "clip.pretrained (e.g. openai; needs the network once) or, to train from scratch, train.clip_lr_scale: 1.0.",
            cfg.clip_lr_scale,
            cfg.lr * cfg.clip_lr_scale,
        )


def run(
    params: Params,
    features_dir: Path,
    dataset: str,
    variant_name: str,
    seed: int,
    model_out: Path,
    log_out: Path,
    state_dir: Path | None = None,
) -> None:
    """Train, resuming from `state_dir` when it holds the state of this very run."""
    cfg = params.train
    variant = params.variant(variant_name)
    store = FeatureStore.open(features_dir)
    if store.meta["trainable_blocks"] != cfg.trainable_blocks or store.meta["model"] != params.clip.model:
        raise MascotError(
            f"{features_dir} holds tokens of {store.meta['model']} for K={store.meta['trainable_blocks']} trainable blocks, "
            f"but params.yaml asks for {params.clip.model} with K={cfg.trainable_blocks}; rerun the features stage (dvc repro)."
        )
    check_split(params.clip.model, cfg.trainable_blocks, [variant_name] if variant.mask is not None else [])
    train_rows = store.caption_rows("train")
    if len(train_rows) < 2 or len(store.videos("val")) == 0:
        raise MascotError(f"{features_dir}: training needs at least 2 training captions and a non-empty val split.")

    rank, processes = distributed.init_from_env()
    device = select_device(cfg.device)
    log.info("train %s/%s seed %d on %s", dataset, variant_name, seed, describe(device, cfg.precision))
    warn_random_weights_at_low_lr(params)
    seed_everything(seed)
    model = RetrievalModel(create_clip(params.clip), cfg.trainable_blocks, variant, store.meta["num_frames"], cfg.logit_scale_max)
    objective = Objective(model, variant).to(device).train()
    trainer = objective
    if processes > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = optimizer_for(objective, cfg)
    batch = min(cfg.batch_size, len(train_rows))
    steps_per_epoch = len(train_rows) // batch
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_fraction)
    scaler = grad_scaler(device, cfg.precision)
    generator = np.random.default_rng(seed)
    caption_video = store.captions["video_index"].to_numpy()

    run_id = resume.fingerprint(
        {
            "params": params.model_dump(include={"clip", "train", "evaluate"}),
            "variant": variant.model_dump(),
            "seed": seed,
            "features": store.meta,
            "train_rows": len(train_rows),
            "device": device.type,
            "processes": processes,
        }
    )
    # Progress: the next epoch and step within it, that epoch's data order and loss sums, the log and the best epoch.
    progress = {
        "epoch": 1,
        "next_step": 0,
        "step": 0,
        "order": None,
        "sums": {},
        "log_rows": [],
        "step_rows": [],
        "best": -math.inf,
        "best_epoch": 0,
        "best_state": {},
    }
    state = resume.load_state(state_dir, run_id) if state_dir else None
    if state is not None:
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        resume.restore_rng(state["rng"], generator)
        progress = state["progress"]
        log.info(
            "train: resuming %s/%s seed %d at epoch %d, step %d", dataset, variant_name, seed, progress["epoch"], progress["step"]
        )

    def save() -> None:
        if state_dir is not None and rank == 0:
            resume.save_state(state_dir, {
                "fingerprint": run_id, "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": resume.rng_state(generator), "progress": progress,
            })  # fmt: skip

    for epoch in range(progress["epoch"], cfg.epochs + 1):
        start = time.perf_counter()
        if progress["order"] is None:
            progress["order"], progress["sums"], progress["next_step"] = (
                torch.from_numpy(generator.permutation(train_rows)),
                {},
                0,
            )
        order = progress["order"].numpy()
        bar = Progress(steps_per_epoch, f"train {dataset}/{variant_name} epoch {epoch}", "step", initial=progress["next_step"])
        for i in range(progress["next_step"], steps_per_epoch):
            rows = distributed.shard(order[i * batch : (i + 1) * batch], rank, processes)
            tokens, mask = store.video_batch(caption_video[rows])
            with autocast(device, cfg.precision):
                terms = trainer(tokens.to(device), mask.to(device), store.text_batch(rows).to(device))
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise MascotError(
                    f"train {dataset}/{variant_name}: the loss became {loss.item()} at step {progress['step']}; lower train.lr."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            model.clamp_logit_scale()
            values = {name: value.item() for name, value in terms.items()}
            for name, value in values.items():
                progress["sums"][name] = progress["sums"].get(name, 0.0) + value
            progress["step"] += 1
            progress["next_step"] = i + 1
            progress["step_rows"].append(
                {"step": progress["step"], "epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                | {name: round(values[name], 6) if name in values else "" for name in ("loss", *TERMS)}
            )
            bar.update(1, loss=f"{values['loss']:.3f}")
            if cfg.checkpoint_every and progress["step"] % cfg.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                save()
        bar.close()
        val = evaluate_split(model, store, "val", params.evaluate)  # no DSL: selection on plain scores
        score = selection_score(val, cfg.selection_metric)
        progress["log_rows"].append(
            {
                "epoch": epoch,
                "step": progress["step"],
                **{
                    name: round(progress["sums"][name] / steps_per_epoch, 6) if name in progress["sums"] else ""
                    for name in ("loss", *TERMS)
                },
                "lr": optimizer.param_groups[0]["lr"],
                "val_t2v_R1": round(val["t2v"]["R1"], 4),
                "val_v2t_R1": round(val["v2t"]["R1"], 4),
                "val_score": round(score, 4),
            }
        )
        log.info(
            "epoch %d: loss %s, val t2v R@1 %.1f, %s %.2f (%.1f s)",
            epoch,
            progress["log_rows"][-1]["loss"],
            val["t2v"]["R1"],
            cfg.selection_metric,
            score,
            time.perf_counter() - start,
        )
        if score > progress["best"]:
            progress["best"], progress["best_epoch"] = score, epoch
            progress["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        progress["epoch"], progress["order"] = epoch + 1, None
        save()

    if rank > 0:  # every process trained the same weights; the first one writes the outputs
        return
    model.load_state_dict(progress["best_state"])
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
        "best_epoch": progress["best_epoch"],
        "best_val_score": progress["best"],
    }
    save_checkpoint(model.cpu(), meta, model_out)
    write_csv(log_out, EPOCH_FIELDS, progress["log_rows"])
    write_csv(steps_path(log_out), STEP_FIELDS, progress["step_rows"])
    plot_curves(
        curve_path(log_out),
        f"{dataset} / {variant_name} / seed {seed}",
        progress["step_rows"],
        progress["log_rows"],
        progress["best_epoch"],
    )
    if state_dir is not None:
        resume.clear_state(state_dir)
    log.info(
        "train: selected epoch %d (val %s %.2f) → %s", progress["best_epoch"], cfg.selection_metric, progress["best"], model_out
    )
