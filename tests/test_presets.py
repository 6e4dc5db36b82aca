import copy

import pytest
import yaml

from mascot import presets
from mascot.config import parse_params
from mascot.errors import ConfigError

from .conftest import REPO

PROTOCOL = {"msrvtt": (12, 32), "lsmdc": (12, 32), "activitynet": (64, 64), "didemo": (64, 64)}


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def test_there_is_a_preset_per_dataset_and_backbone():
    assert sorted(presets.names()) == sorted(f"{d}-{b}" for d in PROTOCOL for b in ("vit-b-32", "vit-b-16"))


@pytest.mark.parametrize("name", sorted(f"{d}-{b}" for d in PROTOCOL for b in ("vit-b-32", "vit-b-16")))
def test_every_preset_validates_with_the_protocol(name):
    raw = presets.apply(yaml.safe_load((REPO / "params.yaml").read_text()), name)
    params = parse_params(raw)
    dataset = name.split("-")[0]
    assert params.datasets == [dataset]
    assert (params.frames.num_frames, params.features.max_words) == PROTOCOL[dataset]
    assert params.clip.model == ("ViT-B-32-quickgelu" if name.endswith("32") else "ViT-B-16-quickgelu")
    assert (params.train.adam_betas, params.train.adam_eps, params.train.no_decay) == ((0.9, 0.98), 1e-6, "clip4clip")
    assert params.clip.pretrained == "openai" and params.train.lr == 1e-4 and params.train.epochs == 5


def test_apply_in_place_changes_only_preset_keys_and_keeps_comments(tmp_path):
    original = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(original)
    presets.apply_in_place(path, "didemo-vit-b-16")
    text = path.read_text()
    assert "# The only configuration of the pipeline" in text and "source_dir: null" in text
    before, after = yaml.safe_load(original), yaml.safe_load(text)
    expected = copy.deepcopy(before)
    presets.apply(expected, "didemo-vit-b-16")
    assert after == expected
    changed = [line for line in text.splitlines() if line not in original.splitlines()]
    assert len(changed) <= len(presets.overrides("didemo-vit-b-16"))


def test_exp_run_arguments_round_trip():
    args = presets.exp_run_args("msrvtt-vit-b-32")
    assert args[::2] == ["-S"] * (len(args) // 2)
    parsed = dict(a.split("=", 1) for a in args[1::2])
    assert {k: yaml.safe_load(v) for k, v in parsed.items()} == presets.overrides("msrvtt-vit-b-32")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown preset `msrvtt-rn50`; presets are msrvtt-vit-b-32"):
        presets.overrides("msrvtt-rn50")
