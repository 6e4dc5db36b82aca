"""The train stage: fit the retrieval model (on frames at K = L, cached tokens below), select the checkpoint on val.

The test split is never read here. The epoch with the best validation score
(`train.selection_metric`) is the one saved; every epoch is logged for `dvc plots`, after a row
for the model the run starts from (epoch 0: the pretrained or random CLIP before any step, never
selected). A masked variant on a dataset that knows its foreground also logs where its masks
fall (foreground.py). The training
state is saved at every epoch end (and every `train.checkpoint_every` steps) so that an interrupted
run continues exactly where it stopped (see resume.py).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import distributed, resume
from .checkpoint import save_checkpoint
from .clip_model import DEFAULT_NORMALIZATION, check_split, create_clip, normalization
from .config import Params, TrainConfig, VariantConfig
from .devices import autocast, describe, grad_scaler, on_device, select_device
from .errors import ConfigError, MascotError
from .evaluate import evaluate_split
from .features import FeatureStore
from .fitting import cosine_with_warmup, seed_everything
from .foreground import SHARES, diagnose
from .loader import prefetched
from .model import RetrievalModel
from .objective import Objective
from .progress import Progress
from .train_log import EPOCH_FIELDS, STEP_FIELDS, TERMS, curve_path, plot_curves, steps_path, write_csv

log = logging.getLogger(__name__)


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


def file_digest(path: Path) -> str | None:
    """sha256 of a file (None for a name that is not a file, such as an open_clip tag)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


@dataclass
class TrainState:
    """Where a run stands, all of it saved for resume: the next epoch and the next step within it,
    that epoch's data order and loss sums (kept to resume mid-epoch), the global step, the logs,
    and the best epoch so far with its weights (the one written at the end)."""

    epoch: int = 1
    next_step: int = 0
    step: int = 0
    order: torch.Tensor | None = None  # this epoch's permutation of the training rows; None: not drawn yet
    sums: dict[str, float] = field(default_factory=dict)
    log_rows: list[dict] = field(default_factory=list)
    step_rows: list[dict] = field(default_factory=list)
    best: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_saved(self) -> dict:
        """Plain data for the state file (which loads with weights_only=True). Shallow, unlike
        dataclasses.asdict, which would deep-copy the best weights at every save."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_saved(cls, saved: dict) -> TrainState:
        return cls(**saved)


@dataclass
class Job:
    """What a run trains and where: fixed from its start to its end."""

    params: Params
    dataset: str
    variant_name: str
    variant: VariantConfig
    seed: int
    store: FeatureStore
    train_rows: np.ndarray
    device: torch.device
    rank: int
    processes: int
    foreground: pd.DataFrame | None = None  # per-frame boxes (annotations stage); None or empty: no diagnostic

    @property
    def diagnoses_masks(self) -> bool:
        return self.variant.mask is not None and self.foreground is not None and not self.foreground.empty

    @property
    def cfg(self) -> TrainConfig:
        return self.params.train

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.variant_name}"

    @property
    def batch(self) -> int:
        return min(self.cfg.batch_size, len(self.train_rows))

    @property
    def steps_per_epoch(self) -> int:
        return min(len(self.train_rows) // self.batch, self.cfg.max_steps or math.inf)

    def fingerprint(self) -> str:
        """Everything that determines the run: a saved state is resumed only when this matches."""
        return resume.fingerprint(
            {
                "params": self.params.model_dump(
                    include={"clip", "train", "evaluate"},
                    exclude={"train": {"loader_workers", "checkpoint_every"}, "evaluate": {"loader_workers"}},
                ),
                "variant": self.variant.model_dump(),
                "seed": self.seed,
                "features": self.store.meta,
                "train_rows": len(self.train_rows),
                "device": self.device.type,
                "processes": self.processes,
                # the bytes behind the names: a pretrained file rewritten by the pretrain stage, the boxes
                "weights": file_digest(Path(self.params.clip.pretrained)) if self.params.clip.pretrained else None,
                "foreground": table_digest(self.foreground) if self.diagnoses_masks else None,
            }
        )


@dataclass
class Fit:
    """The model and what updates it: with TrainState, all that a resumed run restores."""

    model: RetrievalModel
    objective: Objective
    trainer: torch.nn.Module  # the objective, wrapped in DistributedDataParallel when several processes train
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    generator: np.random.Generator  # draws each epoch's data order

    def state_dict(self) -> dict:
        return {
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": resume.rng_state(self.generator),
        }

    def load_state_dict(self, saved: dict) -> None:
        self.objective.load_state_dict(saved["objective"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        resume.restore_rng(saved["rng"], self.generator)


def listed_in(params: Params, variant_name: str) -> str:
    """The key that lists a variant, for error messages; the train stage's own `--variant` when
    neither list has it (a run started by hand)."""
    if variant_name in params.variants:
        return "variants"
    return "ablation.variants" if variant_name in params.ablation.variants else "train --variant"


def check_inputs(
    params: Params, features_dir: Path, store: FeatureStore, variant_name: str, variant: VariantConfig
) -> np.ndarray:
    """Refuse, before any work, features cached for another model or K, a masked variant at K < L,
    and splits too small to train and select on; return the training caption rows."""
    cfg = params.train
    if store.meta["trainable_blocks"] != cfg.trainable_blocks or store.meta["model"] != params.clip.model:
        raise MascotError(
            f"{features_dir} holds tokens of {store.meta['model']} for K={store.meta['trainable_blocks']} trainable blocks, "
            f"but params.yaml asks for {params.clip.model} with K={cfg.trainable_blocks}; rerun the features stage (dvc repro)."
        )
    masked = {listed_in(params, variant_name): [variant_name]} if variant.mask is not None else {}
    check_split(params.clip.model, cfg.trainable_blocks, masked)
    store.decodes_on(cfg.decode_on, "train.decode_on")  # a `device` setting for frames the device cannot decode: refused now
    store.decodes_on(params.evaluate.decode_on, "evaluate.decode_on")
    train_rows = store.caption_rows("train")
    if len(train_rows) < 2 or len(store.videos("val")) == 0:
        raise MascotError(f"{features_dir}: training needs at least 2 training captions and a non-empty val split.")
    return train_rows


def build(job: Job) -> Fit:
    """Model, objective, optimizer, lr schedule, loss scaler and data-order generator, in the order
    that fixes their random initialisation (call after seed_everything)."""
    cfg = job.cfg
    clip = create_clip(job.params.clip)
    if normalization(clip) != DEFAULT_NORMALIZATION:
        raise ConfigError(
            f"`clip.pretrained: {job.params.clip.pretrained}` expects pixel mean/std {normalization(clip)}, not open_clip's "
            f"default {DEFAULT_NORMALIZATION}, which a checkpoint is rebuilt with (checkpoint.py) when evaluated; such "
            "weights are not supported yet."
        )
    model = RetrievalModel(clip, cfg.trainable_blocks, job.variant, job.store.meta["num_frames"], cfg.logit_scale_max)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    objective = Objective(model, job.variant).to(job.device).train()
    trainer = objective
    if job.processes > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[job.device.index] if job.device.type == "cuda" else None
        )
    optimizer = optimizer_for(objective, cfg)
    scheduler = cosine_with_warmup(optimizer, job.steps_per_epoch * cfg.epochs, cfg.warmup_fraction)
    scaler = grad_scaler(job.device, cfg.precision)
    return Fit(model, objective, trainer, optimizer, scheduler, scaler, np.random.default_rng(job.seed))


def resume_or_start(job: Job, fit: Fit, state_dir: Path | None, run_id: str) -> TrainState:
    """The saved state of this very run, restored into `fit`, or a fresh start."""
    saved = resume.load_state(state_dir, run_id) if state_dir else None
    if saved is None:
        return TrainState()
    fit.load_state_dict(saved)
    state = TrainState.from_saved(saved["progress"])
    log.info("train: resuming %s seed %d at epoch %d, step %d", job.name, job.seed, state.epoch, state.step)
    return state


def state_saver(job: Job, fit: Fit, state: TrainState, state_dir: Path | None, run_id: str) -> Callable[[], None]:
    """Save everything resume needs (the first process only; a no-op without `state_dir`)."""

    def save() -> None:
        if state_dir is not None and job.rank == 0:
            resume.save_state(state_dir, {"fingerprint": run_id, **fit.state_dict(), "progress": state.to_saved()})

    return save


def forward_backward(job: Job, fit: Fit, step: int, tokens: torch.Tensor, mask: torch.Tensor, text: torch.Tensor) -> dict:
    """The step's loss terms, with their gradients in .grad: the whole batch in one graph, or
    `train.grad_cache_chunk` pairs at a time (Objective.cached_step, which moves each chunk to the
    device itself). A non-finite loss stops the run."""
    cfg = job.cfg
    if cfg.grad_cache_chunk:
        fit.optimizer.zero_grad(set_to_none=True)
        terms = fit.objective.cached_step(
            tokens, mask, text, cfg.grad_cache_chunk, lambda: autocast(job.device, cfg.precision), fit.scaler.scale, job.device
        )
    else:
        with autocast(job.device, cfg.precision):
            terms = fit.trainer(*(on_device(t, job.device) for t in (tokens, mask, text)))
    loss = terms["loss"]
    if not torch.isfinite(loss):
        raise MascotError(f"train {job.name}: the loss became {loss.item()} at step {step}; lower train.lr.")
    if not cfg.grad_cache_chunk:
        fit.optimizer.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
    return terms


def train_epoch(job: Job, fit: Fit, state: TrainState, save: Callable[[], None]) -> None:
    """The steps of epoch `state.epoch` from `state.next_step` on (all of them unless resumed
    mid-epoch); its data order is drawn on entry unless a resumed state holds it."""
    cfg, store, batch, steps = job.cfg, job.store, job.batch, job.steps_per_epoch
    if state.order is None:
        state.order, state.sums, state.next_step = torch.from_numpy(fit.generator.permutation(job.train_rows)), {}, 0
    order = state.order.numpy()
    # this process's caption rows of each remaining step; the loader's threads read their batches ahead
    keys = [distributed.shard(order[i * batch : (i + 1) * batch], job.rank, job.processes) for i in range(state.next_step, steps)]
    encoded = store.decodes_on(cfg.decode_on, "train.decode_on")
    batches = prefetched(functools.partial(store.pairs, encoded=encoded), keys, cfg.loader_workers, job.device)
    bar = Progress(steps, f"train {job.name} epoch {state.epoch}", "step", initial=state.next_step)
    for i, (tokens, mask, text) in zip(range(state.next_step, steps), batches, strict=True):
        terms = forward_backward(job, fit, state.step, tokens, mask, text)
        fit.scaler.unscale_(fit.optimizer)
        torch.nn.utils.clip_grad_norm_(fit.objective.parameters(), cfg.grad_clip)
        fit.scaler.step(fit.optimizer)
        fit.scaler.update()
        fit.scheduler.step()
        fit.model.clamp_logit_scale()
        values = {name: value.item() for name, value in terms.items()}
        for name, value in values.items():
            state.sums[name] = state.sums.get(name, 0.0) + value
        state.step += 1
        state.next_step = i + 1
        state.step_rows.append(
            {"step": state.step, "epoch": state.epoch, "lr": fit.optimizer.param_groups[0]["lr"]}
            | {name: round(values[name], 6) if name in values else "" for name in ("loss", *TERMS)}
        )
        bar.update(1, loss=f"{values['loss']:.3f}")
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and i + 1 < steps:
            save()
    bar.close()


def validation_row(job: Job, fit: Fit, epoch: int, step: int) -> dict:
    """The model's validation columns of the epoch log: R@1 both ways, the selection score, and
    where a masked variant's masks fall (empty where not measured)."""
    # no DSL: selection on plain scores; on the training device, at evaluate.precision
    val = evaluate_split(fit.model, job.store, "val", job.params.evaluate)
    shares = (
        diagnose(fit.model, job.variant.mask, job.store, job.foreground, "val", job.params.evaluate)
        if job.diagnoses_masks
        else None
    )
    return {
        "epoch": epoch,
        "step": step,
        "val_t2v_R1": round(val["t2v"]["R1"], 4),
        "val_v2t_R1": round(val["v2t"]["R1"], 4),
        "val_score": round(selection_score(val, job.cfg.selection_metric), 4),
    } | {f"val_{name}": shares[name] if shares else "" for name in SHARES}


def log_start(job: Job, fit: Fit, state: TrainState) -> None:
    """Epoch 0 of the log: the model the run starts from, before any step (never selected)."""
    state.log_rows.append(validation_row(job, fit, 0, 0) | {name: "" for name in ("loss", *TERMS, "lr")})
    log.info("epoch 0 (before training): val t2v R@1 %.1f", state.log_rows[-1]["val_t2v_R1"])


def validate_and_select(job: Job, fit: Fit, state: TrainState, started: float) -> None:
    """Score the epoch on val, log it, and keep its weights when it is the best so far (val only:
    the test split is never read in training)."""
    cfg = job.cfg
    row = validation_row(job, fit, state.epoch, state.step)
    score = row["val_score"]
    state.log_rows.append(
        row
        | {name: round(state.sums[name] / job.steps_per_epoch, 6) if name in state.sums else "" for name in ("loss", *TERMS)}
        | {"lr": fit.optimizer.param_groups[0]["lr"]}
    )
    log.info(
        "epoch %d: loss %s, val t2v R@1 %.1f, %s %.2f (%.1f s)",
        state.epoch,
        state.log_rows[-1]["loss"],
        row["val_t2v_R1"],
        cfg.selection_metric,
        score,
        time.perf_counter() - started,
    )
    if score > state.best:
        state.best, state.best_epoch = score, state.epoch
        state.best_state = {k: v.detach().cpu().clone() for k, v in fit.model.state_dict().items()}


def write_outputs(job: Job, model: RetrievalModel, state: TrainState, model_out: Path, log_out: Path) -> None:
    """The selected epoch's checkpoint (self-describing), the epoch and step logs, and the curves."""
    cfg = job.cfg
    model.load_state_dict(state.best_state)
    rows = {row["epoch"]: row for row in state.log_rows}
    meta = {
        "dataset": job.dataset,
        "variant_name": job.variant_name,
        "variant": job.variant.model_dump(),
        "seed": job.seed,
        "model": job.params.clip.model,
        "pretrained": job.params.clip.pretrained,
        "trainable_blocks": cfg.trainable_blocks,
        "num_frames": job.store.meta["num_frames"],
        "logit_scale_max": cfg.logit_scale_max,
        "selection_metric": cfg.selection_metric,
        "best_epoch": state.best_epoch,
        "best_val_score": state.best,
        # where the masks fall on val, before training and at the selected epoch (foreground.py); None: not measured
        "foreground": {
            "start": {name: rows[0][f"val_{name}"] for name in SHARES},
            "selected": {name: rows[state.best_epoch][f"val_{name}"] for name in SHARES},
        }
        if job.diagnoses_masks
        else None,
        "selected_isc": rows[state.best_epoch]["isc"] if rows[state.best_epoch]["isc"] != "" else None,
    }
    save_checkpoint(model.cpu(), meta, model_out)
    write_csv(log_out, EPOCH_FIELDS, state.log_rows)
    write_csv(steps_path(log_out), STEP_FIELDS, state.step_rows)
    title = f"{job.dataset} / {job.variant_name} / seed {job.seed}"
    plot_curves(curve_path(log_out), title, state.step_rows, state.log_rows, state.best_epoch)


def run(
    params: Params,
    features_dir: Path,
    dataset: str,
    variant_name: str,
    seed: int,
    model_out: Path,
    log_out: Path,
    state_dir: Path | None = None,
    frames_dir: Path | None = None,
    foreground_path: Path | None = None,
) -> None:
    """Train, resuming from `state_dir` when it holds the state of this very run; at K = L on the
    frames of `frames_dir` (FeatureStore.open); masked variants measure their masks against the
    boxes of `foreground_path` (foreground.py) where it has any."""
    variant = params.variant(variant_name)
    store = FeatureStore.open(features_dir, frames_dir)
    train_rows = check_inputs(params, features_dir, store, variant_name, variant)
    rank, processes = distributed.init_from_env(cuda=select_device(params.train.device).type == "cuda")
    if processes != params.train.processes:
        raise ConfigError(
            f"train runs in {processes} process(es) but `train.processes` is {params.train.processes}: set that key and run "
            "the stage as it is (`python -m mascot train …` starts its own processes), not under a launcher."
        )
    device = select_device(params.train.device)
    foreground = pd.read_parquet(foreground_path) if foreground_path is not None else None
    job = Job(params, dataset, variant_name, variant, seed, store, train_rows, device, rank, processes, foreground)
    log.info("train %s seed %d on %s", job.name, seed, describe(device, params.train.precision))
    warn_random_weights_at_low_lr(params)
    seed_everything(seed)
    fit = build(job)
    run_id = job.fingerprint()
    state = resume_or_start(job, fit, state_dir, run_id)
    save = state_saver(job, fit, state, state_dir, run_id)
    if not state.log_rows:
        log_start(job, fit, state)
    while state.epoch <= job.cfg.epochs:
        started = time.perf_counter()
        train_epoch(job, fit, state, save)
        validate_and_select(job, fit, state, started)
        state.epoch, state.order = state.epoch + 1, None
        save()
    if rank > 0:  # every process trained the same weights; the first one writes the outputs
        return
    write_outputs(job, fit.model, state, model_out, log_out)
    if state_dir is not None:
        resume.clear_state(state_dir)
    log.info("train: selected epoch %d (val %s %.2f) → %s", state.best_epoch, job.cfg.selection_metric, state.best, model_out)
