import subprocess
import sys

import pytest
import yaml

from mascot import presets

from .conftest import REPO

STAGES = ["download", "annotations", "frames", "features", "train", "evaluate", "tables"]
COMMANDS = [*STAGES, "preset"]


def mascot(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mascot", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_command():
    out = mascot("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    from mascot.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0


def test_preset_lists_the_presets_and_prints_exp_run_overrides():
    listed = mascot("preset", "--list")
    assert listed.returncode == 0 and listed.stdout.split() == presets.names()
    assert mascot("preset").stdout == listed.stdout  # no name: the list
    printed = mascot("preset", "msrvtt-vit-b-32")
    assert printed.returncode == 0 and printed.stdout.split() == presets.exp_run_args("msrvtt-vit-b-32")


def test_preset_apply_rewrites_the_params_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    out = mascot("--params", str(params), "preset", "lsmdc-vit-b-16", "--apply")
    assert out.returncode == 0, out.stderr
    expected = presets.apply(yaml.safe_load((REPO / "params.yaml").read_text()), "lsmdc-vit-b-16")
    assert yaml.safe_load(params.read_text()) == expected
    assert "preset lsmdc-vit-b-16 applied" in out.stdout + out.stderr


def test_unknown_preset_is_one_paragraph_without_traceback():
    out = mascot("preset", "msrvtt-rn50")
    assert out.returncode == 2
    assert "Unknown preset `msrvtt-rn50`" in out.stderr and "Traceback" not in out.stderr
