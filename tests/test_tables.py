import json

import pandas as pd

from mascot import tables


def _write(metrics_dir, variant, seed, r1):
    values = {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "MdR": 3.0, "MnR": 5.5}
    data = {"dataset": "synthetic", "variant_name": variant, "seed": seed, "num_videos": 48, "t2v": values, "v2t": values}
    path = metrics_dir / "synthetic" / f"{variant}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_tables_mean_std_and_order(tmp_path, tiny_params):
    metrics = tmp_path / "metrics"
    _write(metrics, "seqTransf", 0, 40.0)
    _write(metrics, "meanP", 0, 30.0)
    _write(metrics, "meanP", 1, 34.0)
    out = tmp_path / "tables"
    tables.run(tiny_params, metrics, out)
    assert sorted(p.name for p in out.iterdir()) == ["synthetic.csv", "synthetic.md", "synthetic.tex"]
    md = (out / "synthetic.md").read_text()
    lines = [l for l in md.splitlines() if l.startswith("| CLIP4Clip")]
    assert lines[0].startswith("| CLIP4Clip-meanP") and "32.0 ± 2.8" in lines[0] and "| 2 |" in lines[0]
    assert lines[1].startswith("| CLIP4Clip-seqTransf") and "40.0" in lines[1]
    csv = pd.read_csv(out / "synthetic.csv")
    assert csv.loc[0, "t2v_R1"] == 32.0 and csv.loc[0, "seeds"] == 2
    assert r"$\pm$" in (out / "synthetic.tex").read_text()


def test_tables_without_metrics_fail(tmp_path, tiny_params):
    import pytest

    from mascot.errors import MascotError

    with pytest.raises(MascotError, match="no metrics"):
        tables.run(tiny_params, tmp_path, tmp_path / "out")
