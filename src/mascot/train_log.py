"""What a training run leaves to look at: per-epoch and per-step CSV logs (rendered by `dvc plots
show`) and a training-curve image. No wall-clock columns: the logs are tracked in git and must be
identical when a run is reproduced (throughput is shown live in the progress bar)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_file  # noqa: E402

# Loss terms are logged unweighted; the ones a variant does not use stay empty.
TERMS = ("nce", "nce_masked", "kl", "isc")
# Epoch 0 is the model before training. val_fg_*: where a masked variant's masks fall (foreground.py), empty elsewhere.
FOREGROUND_FIELDS = ("val_fg_high", "val_fg_low", "val_fg_chance", "val_fg_best")
EPOCH_FIELDS = ("epoch", "step", "loss", *TERMS, "lr", "val_t2v_R1", "val_v2t_R1", "val_score", *FOREGROUND_FIELDS)
STEP_FIELDS = ("step", "epoch", "loss", *TERMS, "lr")


def steps_path(epoch_log: Path) -> Path:
    return epoch_log.with_name(epoch_log.stem + ".steps.csv")


def curve_path(epoch_log: Path) -> Path:
    return epoch_log.with_suffix(".png")


def write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(path: Path, title: str, step_rows: list[dict], epoch_rows: list[dict], best_epoch: int) -> None:
    """Loss terms per step (left), validation R@1 per epoch from epoch 0 (the starting model) with
    the selected epoch (middle), and where a masked variant's masks fall (right, when measured)."""
    foreground = bool(epoch_rows) and epoch_rows[0]["val_fg_high"] != ""
    fig, axes = plt.subplots(1, 3 if foreground else 2, figsize=(15 if foreground else 10, 3.6), dpi=100)
    left, right = axes[0], axes[1]
    steps = [r["step"] for r in step_rows]
    for name in ("loss", *TERMS):
        values = [r[name] for r in step_rows]
        if values and values[0] != "":
            left.plot(steps, values, label=name, linewidth=1)
    left.set(xlabel="step", ylabel="loss term (unweighted)", title="training loss")
    left.legend(fontsize=8)
    epochs = [r["epoch"] for r in epoch_rows]
    right.plot(epochs, [r["val_t2v_R1"] for r in epoch_rows], marker="o", label="text→video R@1")
    right.plot(epochs, [r["val_v2t_R1"] for r in epoch_rows], marker="o", label="video→text R@1")
    right.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"selected (epoch {best_epoch})")
    right.set(xlabel="epoch (0: before training)", ylabel="R@1 (%)", title="validation")
    right.legend(fontsize=8)
    if foreground:
        for name, label in (("high", "high-informed mask"), ("low", "low-informed mask"), ("chance", "chance (random mask)")):
            axes[2].plot(epochs, [r[f"val_fg_{name}"] for r in epoch_rows], marker="o", label=label)
        axes[2].set(
            xlabel="epoch (0: before training)", ylabel="masked patches on foreground (%)", title="where masks fall (val)"
        )
        axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
