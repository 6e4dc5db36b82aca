import subprocess
import sys

import pytest

STAGES = ["download", "annotations", "frames", "features", "train", "evaluate", "tables"]


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "mascot", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_help(stage):
    from mascot.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([stage, "--help"])
    assert info.value.code == 0
