"""The tables stage: the paper's layout, per dataset, from every metrics JSON of the runs.

Rows are methods/variants, columns both directions' R@1/R@5/R@10/MdR/MnR; each cell is the mean
over seeds, with ± the sample standard deviation when there are several. Every number is read from
a metrics file written by the evaluate stage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .atomic import atomic_dir
from .config import Params
from .errors import MascotError
from .metrics import METRICS

log = logging.getLogger(__name__)
DIRECTIONS = {"t2v": "Text→Video", "v2t": "Video→Text"}
SHORT = {"t2v": "T→V", "v2t": "V→T"}


def collect(metrics_dir: Path) -> pd.DataFrame:
    """One row per run: dataset, variant, seed and every `{direction}_{metric}` value."""
    rows = []
    for path in sorted(Path(metrics_dir).rglob("*.json")):
        data = json.loads(path.read_text())
        try:
            row = {"dataset": data["dataset"], "variant": data["variant_name"], "seed": data["seed"], "test_videos": data["num_videos"]}
            row |= {f"{d}_{m}": float(data[d][m]) for d in DIRECTIONS for m in METRICS}
        except KeyError as exc:
            raise MascotError(f"{path}: not a metrics file of the evaluate stage (missing {exc}); remove it or rerun evaluate.") from None
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame, variant_order: list[str]) -> pd.DataFrame:
    """Mean, std and seed count per (dataset, variant), variants in the order of params.yaml."""
    value_cols = [f"{d}_{m}" for d in DIRECTIONS for m in METRICS]
    grouped = runs.groupby(["dataset", "variant"])
    table = grouped[value_cols].mean().join(grouped[value_cols].std(ddof=1).add_suffix("_std"))
    table["seeds"] = grouped.size()
    table["test_videos"] = grouped["test_videos"].first()
    order = {v: i for i, v in enumerate(variant_order)}
    table = table.reset_index()
    table["_o"] = table["variant"].map(lambda v: order.get(v, len(order)))
    return table.sort_values(["dataset", "_o", "variant"]).drop(columns="_o").reset_index(drop=True)


def _cell(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.1f}" if seeds < 2 or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def display_table(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Formatted cells with two-level (direction, metric) columns."""
    columns = pd.MultiIndex.from_tuples([("", "Method"), ("", "Seeds")] + [(DIRECTIONS[d], m) for d in DIRECTIONS for m in METRICS])
    rows = []
    for r in table.itertuples(index=False):
        r = r._asdict()
        cells = [_cell(r[f"{d}_{m}"], r[f"{d}_{m}_std"], r["seeds"]) for d in DIRECTIONS for m in METRICS]
        rows.append([labels.get(r["variant"], r["variant"]), str(r["seeds"])] + cells)
    return pd.DataFrame(rows, columns=columns)


def to_markdown(dataset: str, shown: pd.DataFrame, test_videos: int) -> str:
    """A GitHub table with one header row (Markdown has no column groups)."""
    header = ["Method", "Seeds"] + [f"{SHORT[d]} {m}" for d in DIRECTIONS for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False)]
    note = (
        f"Measured by this pipeline on the `{dataset}` test split ({test_videos} videos); R@k in %, MdR/MnR ranks "
        "(lower is better); mean ± std over seeds. No post-processing (DSL, QB-Norm)."
    )
    return f"# {dataset}\n\n{note}\n\n" + "\n".join(lines) + "\n"


def run(params: Params, metrics_dir: Path, out: Path) -> None:
    runs = collect(metrics_dir)
    if runs.empty:
        raise MascotError(f"{metrics_dir}: no metrics files found; run the evaluate stage first.")
    table = aggregate(runs, list(params.variants))
    labels = {name: v.label or name for name, v in params.variant_defs.items()}
    with atomic_dir(out) as tmp:
        for dataset, part in table.groupby("dataset", sort=True):
            shown = display_table(part, labels)
            (tmp / f"{dataset}.md").write_text(to_markdown(dataset, shown, int(part["test_videos"].max())))
            part.drop(columns="dataset").to_csv(tmp / f"{dataset}.csv", index=False, float_format="%.4f")
            latex = shown.to_latex(index=False, escape=True, column_format="ll" + "r" * (len(shown.columns) - 2), multicolumn_format="c")
            (tmp / f"{dataset}.tex").write_text(latex.replace("±", r"$\pm$").replace("→", r"$\rightarrow$"))
    log.info("tables: %d datasets → %s", table["dataset"].nunique(), out)
