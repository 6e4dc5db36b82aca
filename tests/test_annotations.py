import numpy as np
import pandas as pd
import pytest

from mascot.annotations import COLUMNS, normalize
from mascot.errors import MascotError


def _table(**overrides):
    rows = [
        {
            "video_id": "v1",
            "split": "train",
            "caption_id": "c1",
            "caption": " a cat ",
            "start": np.nan,
            "end": np.nan,
            "video_path": "v1.mp4",
        },
        {
            "video_id": "v0",
            "split": "test",
            "caption_id": "c0",
            "caption": "a dog",
            "start": 1.0,
            "end": 2.0,
            "video_path": "v0.mp4",
        },
    ]
    df = pd.DataFrame(rows)
    for k, v in overrides.items():
        df.loc[0, k] = v
    return df


def test_normalize_orders_and_strips():
    out = normalize(_table(), "x")
    assert tuple(out.columns) == COLUMNS
    assert out["split"].tolist() == ["train", "test"]
    assert out.loc[0, "caption"] == "a cat"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"split": "dev"}, "unknown splits"),
        ({"caption_id": "c0"}, "duplicate caption_id"),
        ({"caption": "  "}, "empty captions"),
        ({"start": 5.0, "end": 1.0}, "start > end"),
        ({"video_id": "v0"}, "more than one split"),
    ],
)
def test_invalid_tables_are_rejected_with_the_reason(overrides, fragment):
    with pytest.raises(MascotError, match=fragment):
        normalize(_table(**overrides), "ann.json")


def test_missing_column():
    with pytest.raises(MascotError, match="lack columns"):
        normalize(_table().drop(columns="video_path"), "ann.json")
