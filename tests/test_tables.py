import json
import re

import pandas as pd
import pytest

from mascot import tables
from mascot.cli import main
from mascot.errors import MascotError
from mascot.published import load_published

from .conftest import REPO


def _values(r1):
    return {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "MdR": 3.0, "MnR": 5.5}


def _write(metrics_dir, variant, seed, r1, dataset="synthetic", dsl_r1=None):
    data = {
        "dataset": dataset,
        "variant_name": variant,
        "seed": seed,
        "num_videos": 48,
        "num_captions": 96,
        "t2v": _values(r1),
        "v2t": _values(r1),
    }
    if dsl_r1 is not None:
        data["dsl"] = {"t2v": _values(dsl_r1), "v2t": _values(dsl_r1), "scale": 100.0}
    path = metrics_dir / dataset / f"{variant}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _params(tiny_params, **update):
    ablation = tiny_params.ablation.model_copy(update={"variants": ["random_masks", "attention_masks", "isc_both", "isc_high"]})
    return tiny_params.model_copy(
        update={"seeds": [0, 1], "variants": ["meanP", "seqTransf", "mascot"], "ablation": ablation} | update
    )


def test_tables_mean_std_order_and_layout(tmp_path, tiny_params):
    metrics = tmp_path / "metrics"
    _write(metrics, "seqTransf", 0, 40.0)
    _write(metrics, "meanP", 0, 30.0)
    _write(metrics, "meanP", 1, 34.0)
    _write(metrics, "mascot", 0, 50.0)
    _write(metrics, "random_masks", 0, 45.0)
    _write(metrics, "meanP", 7, 99.0)  # a seed that is no longer configured: stale, left out
    _write(metrics, "mascot_ratio25", 0, 99.0)  # a variant in neither `variants` nor `ablation.variants`: left out
    out = tmp_path / "tables"
    tables.run(_params(tiny_params), "synthetic", [metrics / "synthetic"], out / "synthetic")
    # the default writes `tables:` (main); the ablation stage writes `ablation.tables` elsewhere
    mechanism = ["mechanism.csv", "mechanism.md"]  # where masks fall: every stage writes it (foreground.py)
    assert sorted(p.name for p in (out / "synthetic").iterdir()) == ["main.csv", "main.md", "main.tex", *mechanism]
    tables.run(_params(tiny_params), "synthetic", [metrics / "synthetic"], out / "ablation", ablation=True)
    assert sorted(p.name for p in (out / "ablation").iterdir()) == sorted(
        [f"{t}.{ext}" for t in ("ablation", "mask_ratio", "mask_score") for ext in ("md", "csv", "tex")] + mechanism
    )
    md = (out / "synthetic" / "main.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| CLIP4Clip-meanP (baseline)",
        "| CLIP4Clip-seqTransf (baseline)",
        "| MASCOT (meanP)",
    ]
    assert "32.0 ± 2.8" in rows[0] and "| 2 |" in rows[0] and "99.0" not in md
    ablation = (out / "ablation" / "ablation.md").read_text()
    assert ablation.index("CLIP4Clip-meanP") < ablation.index("+ random masks") < ablation.index("MASCOT (meanP)")
    assert "45.0" in ablation and "99.0" not in ablation
    csv = pd.read_csv(out / "synthetic" / "main.csv")
    assert csv.loc[0, "t2v_R1"] == 32.0 and csv.loc[0, "seeds"] == 2
    assert r"$\pm$" in (out / "synthetic" / "main.tex").read_text()
    assert "Published" not in md  # the synthetic dataset has no published results


def test_main_table_of_a_real_dataset_shows_published_rows_apart(tmp_path, tiny_params):
    metrics = tmp_path / "metrics"
    _write(metrics, "meanP", 0, 30.0, dataset="msrvtt")
    params = _params(tiny_params, datasets=["msrvtt"])
    out = tmp_path / "tables"
    tables.run(params, "msrvtt", [metrics / "msrvtt"], out / "msrvtt", REPO / "references" / "published.yaml")
    md = (out / "msrvtt" / "main.md").read_text()
    lines = md.splitlines()
    separator = next(i for i, line in enumerate(lines) if "Published (not measured here)" in line)
    measured = next(i for i, line in enumerate(lines) if line.startswith("| CLIP4Clip-meanP"))
    assert measured < separator
    clip4clip = next(line for line in lines[separator:] if line.startswith("| CLIP4Clip (ViT-B/32)"))
    assert "| published | 44.5 | 71.4 | 81.6 | 2.0 | 15.3 | 42.7 |" in clip4clip
    xpool = next(line for line in lines[separator:] if line.startswith("| X-Pool (ViT-B/32)"))
    assert xpool.rstrip(" |").endswith("| – | – | – | – | –")  # a direction the source does not give
    mascot = next(line for line in lines[separator:] if line.startswith("| MASCOT (ViT-B/32)"))
    assert tables.NOT_TRANSCRIBED in mascot and not any(ch.isdigit() for ch in mascot.split("|", 2)[2].replace("B/32", ""))
    assert "VidLA" in md and "Fang et al., MASCOT" in md  # every published value has its source
    tex = (out / "msrvtt" / "main.tex").read_text()
    assert "Published (not measured here)" in tex and "44.5" in tex
    tables.run(params, "msrvtt", [metrics / "msrvtt"], out / "ablation", REPO / "references" / "published.yaml", ablation=True)
    assert "Published" not in (out / "ablation" / "ablation.md").read_text()  # published rows: main table only


def test_published_reference_file_is_valid_and_strict(tmp_path):
    rows = load_published(REPO / "references" / "published.yaml")
    assert {"msrvtt", "lsmdc", "activitynet", "didemo"} <= set(rows)
    assert all(r.source for rs in rows.values() for r in rs)
    assert any(r.method == "MASCOT" and not r.transcribed for r in rows["lsmdc"])
    for dataset, entries in rows.items():
        assert any(r.transcribed for r in entries), f"{dataset}: no published baseline"
        for r in (r for r in entries if r.transcribed):
            # A reader can find every number: a paper's table, or a README pinned to a commit.
            assert re.search(r"Table \d|/blob/[0-9a-f]{40}/", r.source), (dataset, r.method, r.source)
            for direction in (r.t2v, r.v2t):
                recalls = [v for v in (direction.R1, direction.R5, direction.R10) if v is not None]
                assert recalls == sorted(recalls) and all(0 < v <= 100 for v in recalls), (dataset, r.method)  # a typo guard
    bad = tmp_path / "published.yaml"
    bad.write_text("msrvtt:\n  - {method: X, backbone: ViT-B/32, t2v: {R1: 40.0}}\n")
    with pytest.raises(MascotError, match=r"published.yaml: entry 0 of `msrvtt`.*source"):
        load_published(bad)
    bad.write_text("msrvtt:\n  - {method: X, backbone: B, source: s, transcribed: false, t2v: {R1: 40.0}}\n")
    with pytest.raises(MascotError, match="transcribed"):
        load_published(bad)


def test_dsl_rows_are_listed_apart_and_labelled(tmp_path, tiny_params):
    metrics = tmp_path / "metrics"
    _write(metrics, "meanP", 0, 30.0, dsl_r1=36.0)
    _write(metrics, "mascot", 0, 32.0, dsl_r1=39.0)
    out = tmp_path / "tables"
    tables.run(_params(tiny_params), "synthetic", [metrics / "synthetic"], out / "synthetic")
    lines = (out / "synthetic" / "main.md").read_text().splitlines()
    heading = next(i for i, line in enumerate(lines) if "Post-processed: DSL" in line)
    plain = [i for i, line in enumerate(lines) if line.startswith(("| CLIP4Clip-meanP (baseline) |", "| MASCOT (meanP) |"))]
    dsl = [line for line in lines[heading:] if " + DSL |" in line]
    assert plain and max(plain) < heading and len(dsl) == 2
    assert dsl[0].startswith("| CLIP4Clip-meanP (baseline) + DSL | 1 | 36.0 |")
    assert not any("36.0" in lines[i] for i in plain)  # post-processed numbers never reach plain rows
    csv = pd.read_csv(out / "synthetic" / "main.csv")
    assert list(csv["post"]) == ["none", "none", "dsl", "dsl", "none"]  # and seqTransf, not run
    assert list(csv["status"]) == ["measured"] * 4 + ["not run"]
    assert "Post-processed" in (out / "synthetic" / "main.tex").read_text()


def test_tables_without_metrics_fail(tmp_path, tiny_params):
    with pytest.raises(MascotError, match="no metrics"):
        tables.run(tiny_params, "synthetic", [tmp_path], tmp_path / "out")


def test_every_table_states_its_settings_and_marks_rows_not_run(tmp_path, tiny_params):
    metrics = tmp_path / "metrics"
    _write(metrics, "meanP", 0, 30.0)
    _write(metrics, "meanP", 1, 31.0)
    _write(metrics, "mascot", 1, 50.0)
    params = _params(tiny_params, variants=["meanP", "mascot"])
    out = tmp_path / "tables"
    tables.run(params, "synthetic", [metrics / "synthetic"], out)
    tables.run(params, "synthetic", [metrics / "synthetic"], out / "ablation", ablation=True)
    setting = (
        "Settings of the measured rows: backbone mascot-tiny, pretrained weights none (random weights), 1 epoch "
        "(checkpoint selected on val), K = 4 trained vision blocks, 4 frames and 32 words, batch 8, lr 0.0005 "
        "(CLIP weights 0.0005), test split 48 videos / 96 captions, seeds 0, 1."
    )
    for folder, name, line in (
        (out, "main", setting),
        (out / "ablation", "ablation", setting),
        (out / "ablation", "mask_ratio", setting),
        (out / "ablation", "mask_score", setting),
    ):
        md = (folder / f"{name}.md").read_text()
        assert line in md and md.index(line) < md.index("| Method")
        assert (folder / f"{name}.tex").read_text().startswith(f"% {line}\n")
    ablation = (out / "ablation" / "ablation.md").read_text().splitlines()
    rows = [line.split(" | ")[:3] for line in ablation if line.startswith("| ") and not line.startswith("| Method")]
    assert rows == [
        ["| CLIP4Clip-meanP (baseline)", "2", "30.5 ± 0.7"],
        ["| + random masks", "–", "not run"],
        ["| + attention masks", "–", "not run"],
        ["| + ISC (both views)", "–", "not run"],
        ["| + ISC emphasis shift", "–", "not run"],
        ["| MASCOT (meanP)", "1", "50.0"],
    ]
    assert "not run" in (out / "ablation" / "ablation.tex").read_text()
    csv = pd.read_csv(out / "ablation" / "ablation.csv")
    assert list(csv["status"]) == ["measured"] * 2 + ["not run"] * 4
    measured = csv[csv["status"] == "measured"].iloc[0]
    assert (measured["backbone"], measured["epochs"], measured["trainable_blocks"], measured["test_captions"]) == (
        "mascot-tiny",
        1,
        4,
        96,
    )
    assert str(measured["seed_list"]) == "0 1" and pd.isna(csv.loc[csv["status"] == "not run", "t2v_R1"]).all()


def test_tables_of_other_datasets_survive(tmp_path, tiny_params):
    """One tables stage per dataset, each owning only its folder: DVC deletes a stage's outputs before
    it runs, so a run over msrvtt must not own (and delete) results/tables/synthetic."""
    from dvc.repo import Repo

    from .project_copy import copy_project, set_param

    metrics = tmp_path / "metrics"
    _write(metrics, "meanP", 0, 33.0, dataset="synthetic")
    _write(metrics, "meanP", 0, 21.0, dataset="msrvtt")
    out = tmp_path / "tables"
    tables.run(_params(tiny_params), "synthetic", [metrics / "synthetic"], out / "synthetic")
    before = {p.name: p.read_bytes() for p in (out / "synthetic").iterdir()}
    tables.run(_params(tiny_params, datasets=["msrvtt"]), "msrvtt", [metrics / "msrvtt"], out / "msrvtt")
    assert {p.name: p.read_bytes() for p in (out / "synthetic").iterdir()} == before
    assert "| 21.0 |" in (out / "msrvtt" / "main.md").read_text() and "33.0" not in (out / "msrvtt" / "main.md").read_text()

    repo = copy_project(tmp_path / "repo")
    set_param(repo, "datasets", ["msrvtt"])
    with Repo(repo) as r:
        owned = {s.name: [o.def_path for o in s.outs] for s in r.index.stages if s.name.startswith("tables")}
        deps = {
            s.name: [d.def_path for d in s.deps if d.def_path.startswith("results")]
            for s in r.index.stages
            if s.name.startswith("tables")
        }
    assert owned == {"tables@msrvtt": ["results/tables/msrvtt"], "tables_ablation@msrvtt": ["results/ablation/tables/msrvtt"]}
    assert deps == {
        "tables@msrvtt": ["results/metrics/msrvtt"],
        "tables_ablation@msrvtt": ["results/metrics/msrvtt", "results/ablation/metrics/msrvtt"],
    }


def test_latex_table_is_one_tabular_with_escaped_cells_and_labelled_sections():
    row = ["A_b & c 50%", "3"] + ["9.0 ± 1.3"] * 10
    sections = {"": [row], tables.POST_HEADING: [row], tables.PUBLISHED_HEADING: []}
    tex = tables.to_latex(sections, ["[1] Someone et al., a #1 paper"], "Settings: x")
    assert tex.startswith("% Settings: x\n")
    lines = tex.splitlines()[1:]
    assert lines[0] == r"\begin{tabular}{llrrrrrrrrrr}" and lines.count(r"\end{tabular}") == 1
    assert (
        lines[2]
        == r"\multicolumn{2}{c}{} & \multicolumn{5}{c}{Text$\rightarrow$Video} & \multicolumn{5}{c}{Video$\rightarrow$Text} \\"
    )
    body = [line for line in lines if line.startswith(r"A\_b")]
    assert body == [r"A\_b \& c 50\% & 3 & " + " & ".join([r"9.0 $\pm$ 1.3"] * 10) + r" \\"] * 2
    assert all(line.count(" & ") == 11 for line in body)  # one cell per column: the label's & is escaped
    heading = lines.index(rf"\multicolumn{{12}}{{l}}{{\emph{{{tables.POST_HEADING}}}}} \\")
    assert lines[heading - 1] == r"\midrule" and "Published" not in tex  # empty sections leave no heading
    assert lines[-2:] == [r"\end{tabular}", "% [1] Someone et al., a #1 paper"] and tex.endswith("\n")


def test_synthetic_tables_show_the_ceiling_and_real_ones_do_not(tmp_path, tiny_params, tiny_raw):
    metrics = tmp_path / "metrics"
    for dataset in ("synthetic", "msrvtt"):
        _write(metrics, "meanP", 0, 30.0, dataset=dataset)
    params = _params(tiny_params, seeds=[0], datasets=["synthetic", "msrvtt"])
    ceiling = tmp_path / "ceiling.json"  # as the annotations stage writes it
    args = ["annotations", "--dataset", "synthetic", "--raw", str(tiny_raw), "--out", str(tmp_path / "a.parquet")]
    assert main(["--params", str(REPO / "params.yaml"), *args, "--ceiling", str(ceiling)]) == 0
    tables.run(params, "synthetic", [metrics / "synthetic"], tmp_path / "syn", ceiling_path=ceiling)
    tables.run(params, "synthetic", [metrics / "synthetic"], tmp_path / "abl", ablation=True, ceiling_path=ceiling)
    for md in [tmp_path / "syn" / "main.md", *(m for m in (tmp_path / "abl").glob("*.md") if m.stem != tables.MECHANISM_TABLE)]:
        text = md.read_text()
        assert tables.CEILING_HEADING in text and tables.CEILING_LABEL in text, md
    ceiling = pd.read_csv(tmp_path / "syn" / "main.csv").set_index("status").loc["ceiling"]
    assert 0 < ceiling["t2v_R1"] <= 100 and ceiling["t2v_R10"] >= ceiling["t2v_R1"] and pd.isna(ceiling["t2v_MdR"])
    (tmp_path / "none.json").write_text(json.dumps({"dataset": "msrvtt", "split": "test", "ceiling": None}))
    tables.run(params, "msrvtt", [metrics / "msrvtt"], tmp_path / "real", ceiling_path=tmp_path / "none.json")  # no row
    assert tables.CEILING_HEADING not in (tmp_path / "real" / "main.md").read_text()
