"""The tables stage, one per dataset: one table per entry of `tables:` in params.yaml (main,
ablation, sweeps), from the metrics JSON files of the dataset's current runs.

Rows are variants, columns both directions' R@1/R@5/R@10/MdR/MnR; each cell is the mean over seeds,
with ± the sample standard deviation when there are several. A variant of a table that was not run
is a "not run" row, never left out. Every table states the settings of its measured rows (backbone,
weights, epochs, K, test size, seeds): a line in Markdown, a comment in LaTeX, columns in CSV.
Measured numbers are read from the evaluate stage's metrics files; DSL post-processed rows follow
under their own separator (never mixed with plain ones); where the dataset knows which captions fit
which videos (the synthetic generator), every table shows the test split's ceiling below another
(DatasetSource.ceiling, written by the annotations stage); the main table of a real dataset also shows published rows from the
reference file (references/published.yaml), below another separator and with their sources.

Beside them, mechanism.{md,csv}: for every masked variant of the stage, where its masks fall on the
validation split's foreground before training and at the selected epoch, beside chance and the
best possible share (foreground.py; only where the dataset knows its foreground), and the ISC loss
of the selected epoch.

Layout: results/tables/<dataset>/<table>.{md,csv,tex}, one folder per dataset and stage, so that a
run over some datasets leaves the tables of the others alone.
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
from .published import PublishedRow, load_published

log = logging.getLogger(__name__)
DIRECTIONS = {"t2v": "Text→Video", "v2t": "Video→Text"}
SHORT = {"t2v": "T→V", "v2t": "V→T"}
VALUE_COLUMNS = [f"{d}_{m}" for d in DIRECTIONS for m in METRICS]
MAIN_TABLE = "main"  # the table that also shows published rows
NOT_TRANSCRIBED = "not yet transcribed"
NOT_RUN = "not run"
POST_HEADING = "Post-processed: DSL (dual softmax over all test queries), not comparable to the rows above"
PUBLISHED_HEADING = "Published (not measured here)"
CEILING_HEADING = "Ceiling of this test split: a perfect model that cannot tell apart the videos a caption fits (not a run)"
CEILING_LABEL = "Oracle (generator attributes; expected R@k)"
MECHANISM_TABLE = "mechanism"
#: The mechanism table's columns: the training record the evaluate stage copies into each metrics file.
MECHANISM_COLUMNS = {
    "start_fg_high": "High mask on foreground, before training (%)",
    "fg_high": "High mask on foreground, selected epoch (%)",
    "start_fg_low": "Low mask on foreground, before training (%)",
    "fg_low": "Low mask on foreground, selected epoch (%)",
    "fg_chance": "Chance: a random mask (%)",
    "fg_best": "Best possible (%)",
    "isc": "ISC loss on training batches, selected epoch's mean",
}


def mechanism_record(data: dict) -> dict[str, float]:
    """MECHANISM_COLUMNS of one metrics file (NaN where a run has no such record)."""
    fg = data.get("foreground") or {}
    selected, start = fg.get("selected") or {}, fg.get("start") or {}
    values = {name: selected.get(name) for name in ("fg_high", "fg_low", "fg_chance", "fg_best")}
    values |= {"start_fg_high": start.get("fg_high"), "start_fg_low": start.get("fg_low"), "isc": data.get("selected_isc")}
    return {k: float("nan") if v is None else float(v) for k, v in values.items()}


def collect(*metrics_dirs: Path) -> pd.DataFrame:
    """One row per run and post-processing (`none`, or `dsl` when the metrics file has DSL
    metrics): dataset, variant, seed, post and every `{direction}_{metric}` value."""
    rows = []
    for path in sorted(p for d in metrics_dirs for p in Path(d).rglob("*.json")):
        data = json.loads(path.read_text())
        try:
            run = {
                "dataset": data["dataset"],
                "variant": data["variant_name"],
                "seed": data["seed"],
                "test_videos": data["num_videos"],
                "test_captions": data["num_captions"],
            }
            for post, values in (("none", data), ("dsl", data.get("dsl"))):
                if values is not None:
                    rows.append(
                        run
                        | {"post": post}
                        | {f"{d}_{m}": float(values[d][m]) for d in DIRECTIONS for m in METRICS}
                        | mechanism_record(data)
                    )
        except KeyError as exc:
            raise MascotError(
                f"{path}: not a metrics file of the evaluate stage (missing {exc}); remove it or rerun evaluate."
            ) from None
    return pd.DataFrame(rows)


def current_runs(runs: pd.DataFrame, params: Params, variants: list[str]) -> pd.DataFrame:
    """Only runs of the datasets, variants and seeds that params.yaml asks for (stale metrics files
    of removed variants or seeds stay on disk but never reach a table)."""
    if runs.empty:
        return runs
    keep = runs["dataset"].isin(params.datasets) & runs["variant"].isin(variants) & runs["seed"].isin(params.seeds)
    return runs[keep]


def aggregate(runs: pd.DataFrame, variant_order: list[str]) -> pd.DataFrame:
    """Mean, std and seed count per (dataset, variant, post), plain rows first, variants in the given order."""
    grouped = runs.groupby(["dataset", "post", "variant"])
    table = grouped[VALUE_COLUMNS].mean().join(grouped[VALUE_COLUMNS].std(ddof=1).add_suffix("_std"))
    table["seeds"] = grouped.size()
    table["test_videos"] = grouped["test_videos"].first()
    table["test_captions"] = grouped["test_captions"].first()
    order = {v: i for i, v in enumerate(variant_order)}
    table = table.reset_index()
    table["_o"] = table["variant"].map(lambda v: order.get(v, len(order)))
    table["_p"] = table["post"] != "none"
    return table.sort_values(["dataset", "_p", "_o", "variant"]).drop(columns=["_o", "_p"]).reset_index(drop=True)


def _cell(mean: float, std: float, seeds: int, digits: int = 1) -> str:
    return f"{mean:.{digits}f}" if seeds < 2 or pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def settings(params: Params, runs: pd.DataFrame) -> dict[str, str]:
    """The settings the measured rows were run with: the run's params and, from the metrics
    files, the test split's size and the seeds."""

    def values(column: str) -> str:
        return " or ".join(f"{int(v):,}" for v in sorted(runs[column].unique()))

    return {
        "backbone": params.clip.model,
        "pretrained": params.clip.pretrained or "none (random weights)",
        "epochs": str(params.train.epochs),
        "trainable_blocks": str(params.train.trainable_blocks),
        "frames": str(params.frames.num_frames),
        "words": str(params.features.max_words),
        "batch_size": str(params.train.batch_size),
        "lr": f"{params.train.lr:g}",
        "clip_lr": f"{params.train.lr * params.train.clip_lr_scale:g}",
        "test_videos": values("test_videos"),
        "test_captions": values("test_captions"),
        "seed_list": " ".join(str(s) for s in sorted(runs["seed"].unique())),
    }


def _count(n: str, noun: str) -> str:
    return f"{n} {noun}" if n == "1" else f"{n} {noun}s"


def settings_line(s: dict[str, str] | None) -> str:
    if s is None:
        return "No row of this table was run."
    return (
        f"Settings of the measured rows: backbone {s['backbone']}, pretrained weights {s['pretrained']}, "
        f"{_count(s['epochs'], 'epoch')} (checkpoint selected on val), K = {s['trainable_blocks']} trained vision blocks, "
        f"{s['frames']} frames and {s['words']} words, batch {s['batch_size']}, lr {s['lr']} (CLIP weights {s['clip_lr']}), "
        f"test split {s['test_videos']} videos / {s['test_captions']} captions, seeds {s['seed_list'].replace(' ', ', ')}."
    )


def not_run_row(label: str) -> list[str]:
    return [label, "–"] + [NOT_RUN] * len(VALUE_COLUMNS)


def measured_rows(table: pd.DataFrame, labels: dict[str, str]) -> tuple[list[list[str]], list[list[str]]]:
    """Formatted rows without post-processing, and the DSL rows (labelled as post-processed)."""
    plain, post = [], []
    for r in table.itertuples(index=False):
        r = r._asdict()
        cells = [_cell(r[c], r[f"{c}_std"], r["seeds"]) for c in VALUE_COLUMNS]
        label = labels.get(r["variant"], r["variant"])
        if r["post"] == "none":
            plain.append([label, str(r["seeds"])] + cells)
        else:
            post.append([f"{label} + DSL", str(r["seeds"])] + cells)
    return plain, post


def published_rows(rows: list[PublishedRow]) -> tuple[list[list[str]], list[str]]:
    """Formatted published rows (method [n] (backbone), 'published', values) and their footnotes."""
    sources: list[str] = []
    out = []
    for row in rows:
        if row.source not in sources:
            sources.append(row.source)
        label = f"{row.method} ({row.backbone}) [{sources.index(row.source) + 1}]"
        if not row.transcribed:
            cells = [NOT_TRANSCRIBED] * len(VALUE_COLUMNS)
        else:
            cells = ["–" if row.value(d, m) is None else f"{row.value(d, m):.1f}" for d in DIRECTIONS for m in METRICS]
        out.append([label, "published"] + cells)
    return out, [f"[{i}] {s}" for i, s in enumerate(sources, 1)]


def ceiling_row(ceiling: dict) -> list[str]:
    """The ceiling's R@k cells; ranks are left out (–)."""
    cells = [f"{ceiling[d][m]:.1f}" if m in ceiling[d] else "–" for d in DIRECTIONS for m in METRICS]
    return [CEILING_LABEL, "–"] + cells


def to_markdown(title: str, sections: dict[str, list[list[str]]], notes: list[str], setting: str) -> str:
    """A GitHub table with one header row (Markdown has no column groups); post-processed and
    published rows follow, each under its own separator row."""
    header = ["Method", "Seeds"] + [f"{SHORT[d]} {m}" for d in DIRECTIONS for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for heading, rows in sections.items():
        if heading and rows:
            lines.append(f"| **{heading}** |" + " |" * (len(header) - 1))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    intro = (
        "Measured rows: this pipeline on the test split; R@k in %, MdR/MnR ranks "
        "(lower is better); mean ± std over seeds. The first rows have no post-processing; DSL rows "
        "re-weight each score by a softmax over all test queries and are listed apart."
    )
    footer = (
        (
            "\n\nPublished rows are read from references/published.yaml, not measured here:\n\n"
            + "\n".join(f"- {n}" for n in notes)
        )
        if notes
        else ""
    )
    return f"# {title}\n\n{intro}\n\n{setting}\n\n" + "\n".join(lines) + footer + "\n"


LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\rightarrow$"}


def latex_text(text: str) -> str:
    """Text as LaTeX: special characters escaped, ± and → as math symbols."""
    return "".join(LATEX_ESCAPES.get(c) or LATEX_SYMBOLS.get(c, c) for c in text)


def to_latex(sections: dict[str, list[list[str]]], notes: list[str], setting: str) -> str:
    """A booktabs tabular: a column group per direction, then each section's rows (a section with a
    heading below its own rule and an italic heading row); the settings and sources as LaTeX comments."""
    width = 2 + len(VALUE_COLUMNS)
    groups = " & ".join(rf"\multicolumn{{{len(METRICS)}}}{{c}}{{{latex_text(DIRECTIONS[d])}}}" for d in DIRECTIONS)
    lines = [
        f"% {setting}",
        rf"\begin{{tabular}}{{ll{'r' * len(VALUE_COLUMNS)}}}",
        r"\toprule",
        rf"\multicolumn{{2}}{{c}}{{}} & {groups} \\",
        " & ".join(["Method", "Seeds", *(m for _ in DIRECTIONS for m in METRICS)]) + r" \\",
        r"\midrule",
    ]
    for heading, rows in sections.items():
        if heading and rows:
            lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\emph{{{latex_text(heading)}}}}} \\"]
        lines += [" & ".join(latex_text(cell) for cell in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    comments = [f"% {''.join(LATEX_SYMBOLS.get(c, c) for c in note)}" for note in notes]
    return "\n".join(lines + comments) + "\n"


def mechanism_table(runs: pd.DataFrame, labels: dict[str, str], variants: list[str], dataset: str) -> tuple[str, pd.DataFrame]:
    """Markdown and CSV of MECHANISM_COLUMNS, mean ± std over seeds, for the variants with a record."""
    plain = runs[(runs["post"] == "none") & runs[list(MECHANISM_COLUMNS)].notna().any(axis=1)]
    order = {v: i for i, v in enumerate(variants)}
    grouped = plain.groupby("variant")
    names = sorted(grouped.groups, key=lambda v: order.get(v, len(order)))
    header = ["Method", "Seeds", *MECHANISM_COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    csv_rows = []
    for name in names:
        group = grouped.get_group(name)
        cells = []
        for column in MECHANISM_COLUMNS:
            values = group[column].dropna()
            mean, std = values.mean(), values.std(ddof=1)
            digits = 3 if column == "isc" else 1
            cells.append("–" if values.empty else _cell(mean, std, len(values), digits))
            csv_rows.append({"variant": name, "column": column, "mean": mean, "std": std, "seeds": len(values)})
        lines.append("| " + " | ".join([labels.get(name, name), str(len(group))] + cells) + " |")
    intro = (
        "Where each masked variant's masks fall on the validation split's foreground (src/mascot/foreground.py): the "
        "share of the patches a mask drops that the foreground box overlaps, averaged over frames, in %; mean ± std "
        "over seeds. Chance is the share of all patches on the foreground (a random mask's expected share); best "
        "possible is min(1, foreground patches / masked patches). Before training: the model the run starts from. The "
        "ISC loss (1 − cosine of the reconstructed and the unmasked view's patch tokens) is the mean over the selected "
        "epoch's training steps, of the views the variant reconstructs (`isc.views`)."
    )
    body = "\n".join(lines) if names else "No masked run of this dataset has a foreground record (real datasets have none)."
    return f"# {dataset}: {MECHANISM_TABLE}\n\n{intro}\n\n{body}\n", pd.DataFrame(
        csv_rows, columns=["variant", "column", "mean", "std", "seeds"]
    )


def _ceiling_columns(ceiling: dict) -> dict[str, float]:
    return {f"{d}_{m}": value for d in DIRECTIONS for m, value in ceiling[d].items()}


def run(
    params: Params,
    dataset: str,
    metrics_dirs: list[Path],
    out: Path,
    published_path: Path | None = None,
    ablation: bool = False,
    ceiling_path: Path | None = None,
) -> None:
    """Write the tables of `dataset` (from the metrics files under `metrics_dirs`) into the folder `out`:
    `tables:` over `variants`, or with `ablation` the `ablation.tables` over `variants` + `ablation.variants`.
    With `ceiling_path` (the annotations stage's ceiling.json), every table also shows the test
    split's ceiling where the dataset knows it."""
    variants = params.variants + params.ablation.variants if ablation else params.variants
    table_defs = params.ablation.tables if ablation else params.tables
    runs = current_runs(collect(*metrics_dirs), params, variants)
    runs = runs[runs["dataset"] == dataset] if not runs.empty else runs
    if runs.empty:
        where = ", ".join(map(str, metrics_dirs))
        raise MascotError(f"{where}: no metrics files of the configured runs of {dataset} found; run the evaluate stage first.")
    published = load_published(published_path) if published_path else {}
    ceiling = json.loads(Path(ceiling_path).read_text())["ceiling"] if ceiling_path is not None else None
    labels = {name: v.label or name for name, v in params.variant_defs.items()}
    with atomic_dir(out) as tmp:
        for name, rows_of in table_defs.items():
            measured = runs[runs["variant"].isin(rows_of)]
            part = aggregate(measured, rows_of) if not measured.empty else pd.DataFrame(columns=["variant", "post"])
            plain, post = measured_rows(part, labels) if not measured.empty else ([], [])
            ran = list(part.loc[part["post"] == "none", "variant"])
            rows = iter(plain)
            plain = [next(rows) if v in ran else not_run_row(labels.get(v, v)) for v in rows_of]
            extra, notes = published_rows(published.get(dataset, [])) if name == MAIN_TABLE else ([], [])
            sections = {
                "": plain,
                POST_HEADING: post,
                CEILING_HEADING: [ceiling_row(ceiling)] if ceiling else [],
                PUBLISHED_HEADING: extra,
            }
            setting = settings(params, measured) if not measured.empty else None
            (tmp / f"{name}.md").write_text(to_markdown(f"{dataset}: {name}", sections, notes, settings_line(setting)))
            (tmp / f"{name}.tex").write_text(to_latex(sections, notes, settings_line(setting)))
            missing = pd.DataFrame(
                {"post": "none", "variant": [v for v in rows_of if v not in ran], "seeds": 0, "status": NOT_RUN}
            )
            measured_csv = part.drop(columns="dataset", errors="ignore").assign(status="measured", **(setting or {}))
            bound = pd.DataFrame(
                [{"post": "none", "variant": "oracle_ceiling", "status": "ceiling"} | _ceiling_columns(ceiling)]
                if ceiling
                else []
            )
            pd.concat([measured_csv, missing, bound], ignore_index=True).to_csv(
                tmp / f"{name}.csv", index=False, float_format="%.4f"
            )
        order = list(dict.fromkeys(v for rows_of in table_defs.values() for v in rows_of))  # the tables' own row order
        text, frame = mechanism_table(runs, labels, order, dataset)
        (tmp / f"{MECHANISM_TABLE}.md").write_text(text)
        frame.to_csv(tmp / f"{MECHANISM_TABLE}.csv", index=False, float_format="%.4f")
    log.info("tables: %s for %s → %s", _count(str(len(table_defs)), "table"), dataset, out)
