"""The figures stage: the pictures exist, show something, and shade exactly the dropped patches."""

import numpy as np
import pytest
from PIL import Image

from mascot import figures, train
from mascot.errors import ConfigError, MascotError


def test_shading_covers_exactly_the_dropped_patches():
    frame = np.zeros((8, 8, 3), np.uint8)  # a 4 × 4 grid of 2 × 2-pixel patches
    out = figures.shaded(frame, np.array([0, 5]), 4, (1.0, 0.0, 0.0))
    hit = out[..., 0] > 0
    expected = np.zeros((8, 8), bool)
    expected[0:2, 0:2] = True  # patch 0: row 0, column 0
    expected[2:4, 2:4] = True  # patch 5: row 1, column 1
    assert np.array_equal(hit, expected) and np.allclose(out[hit], [0.6, 0.0, 0.0])


def test_figures_of_a_tiny_run(tmp_path, tiny_features, tiny_frames, tiny_params, decode_calls):
    models = tmp_path / "models"
    for variant in ("meanP", "mascot"):
        train.run(
            tiny_params, tiny_features, "synthetic", variant, 0, models / f"{variant}-seed0.pt", tmp_path / f"{variant}.csv"
        )
    out = tmp_path / "figures"
    figures.run(tiny_params, "synthetic", tiny_features, tiny_frames, models, out)
    assert sorted(p.name for p in out.iterdir()) == ["masks.png", "retrieval.png"]
    for name in ("masks.png", "retrieval.png"):
        image = np.asarray(Image.open(out / name).convert("RGB"), dtype=np.float32)
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 20, name  # not blank
    with pytest.raises(MascotError, match="trained on synthetic, not msrvtt"):
        figures.run(tiny_params, "msrvtt", tiny_features, tiny_frames, models, tmp_path / "other")
    # decoding on the device (here the CPU: Pillow's pixels) draws the same pictures
    device = tiny_params.model_copy(update={"evaluate": tiny_params.evaluate.model_copy(update={"decode_on": "device"})})
    decode_calls.clear()
    figures.run(device, "synthetic", tiny_features, tiny_frames, models, tmp_path / "device")
    assert len(decode_calls) > tiny_params.figures.videos  # the masks figure's videos, then the retrieval figure's batches
    for name in ("masks.png", "retrieval.png"):
        assert (tmp_path / "device" / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"masked": "seqTransf"}, "not in `variants`"),
        ({"baseline": "seqTransf"}, "not in `variants`"),
        ({"seed": 9}, "not in `seeds`"),
    ],
)
def test_figures_settings_name_trained_runs(update, message):
    from mascot.config import parse_params

    from .conftest import tiny_params_dict

    raw = tiny_params_dict()
    raw["figures"].update(update)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_without_a_masked_variant_the_mask_figure_says_so(tiny_params):
    fig = figures.masks_figure(None, tiny_params.variant("meanP"), None, None, {}, 4, "meanP")
    assert "no masks to show" in fig.texts[0].get_text()
