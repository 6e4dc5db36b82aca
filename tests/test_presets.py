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


def test_exp_run_puts_the_users_overrides_after_the_presets(monkeypatch):
    from mascot.cli import main

    ran = []
    monkeypatch.setattr("subprocess.run", lambda cmd, **kw: ran.append(cmd) or type("P", (), {"returncode": 0})())
    assert main(["preset", "msrvtt-vit-b-32", "--exp-run", "--temp", "-S", "clip.pretrained=null"]) == 0
    (cmd,) = ran
    assert cmd[:3] == ["dvc", "exp", "run"] and cmd[-3:] == ["--temp", "-S", "clip.pretrained=null"]
    settings = [a for a in cmd[3:] if a.startswith("clip.pretrained=")]
    assert settings == ["clip.pretrained=openai", "clip.pretrained=null"]  # the user's is the later one


@pytest.mark.slow
def test_dvc_keeps_the_later_override_and_temp_leaves_params_untouched(tmp_path):
    """The premise of --exp-run, checked on DVC itself: of two -S for one key the later wins, and
    `--temp` runs without rewriting params.yaml (a workspace run leaves the values in it)."""
    import shutil
    import sys

    from .project_copy import GIT, sh

    (tmp_path / "presets").mkdir()
    shutil.copy(REPO / "presets" / "presets.yaml", tmp_path / "presets")
    shutil.copy(REPO / "params.yaml", tmp_path)
    show = "import yaml; p = yaml.safe_load(open('params.yaml')); print(p['clip']['pretrained'], p['train']['epochs'])"
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"show": {"cmd": f'python -c "{show}" > out.txt', "params": ["clip", "train"], "outs": ["out.txt"]}}}
        )
    )
    sh(["git", "init", "-q"], tmp_path)
    sh(["dvc", "init", "-q"], tmp_path)
    sh([*GIT, "add", "-A"], tmp_path)
    sh([*GIT, "commit", "-qm", "init"], tmp_path)
    original = (tmp_path / "params.yaml").read_bytes()
    mascot = [sys.executable, "-m", "mascot", "preset", "msrvtt-vit-b-32", "--exp-run"]
    sh([*mascot, "--temp", "-S", "clip.pretrained=null"], tmp_path)
    assert (tmp_path / "params.yaml").read_bytes() == original and not (tmp_path / "out.txt").exists()
    sh([*mascot, "-S", "clip.pretrained=null"], tmp_path)
    assert (tmp_path / "out.txt").read_text().split() == ["None", "5"]  # the user's null, the preset's epochs
    assert (tmp_path / "params.yaml").read_bytes() != original  # a workspace run leaves its values in params.yaml


def test_apply_leaves_no_stale_comment_and_says_what_to_do_next(tmp_path, capsys):
    from mascot.cli import main

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    assert main(["--params", str(path), "preset", "lsmdc-vit-b-16", "--apply"]) == 0
    text = path.read_text()
    for stale in ("# random weights;", "peaks at epochs 4-6", "train it at full lr", "mascot-tiny.json", "# decoding processes"):
        assert stale not in text
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if ":" in line}
    for key in ("pretrained", "epochs", "clip_lr_scale", "model", "workers", "checkpoint_every"):
        assert lines[key].endswith("# preset lsmdc-vit-b-16"), lines[key]
    assert "# MASCOT's settings" in text and "dsl_scale: 100.0         # DSL" in text  # other comments stay
    assert "  precision: bf16        # autocast on CUDA" in text  # a key the preset sets to its current value keeps its comment
    out = capsys.readouterr().out
    assert "data.lsmdc.source_dir" in out and "needs the network once" in out and "dvc repro" in out
