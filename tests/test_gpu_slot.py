import subprocess
import sys

import pytest

from mascot.gpu_slot import gpu_slot, main

PRINT_DEVICE = [sys.executable, "-c", "import os, time; time.sleep(0.5); print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"]


def test_concurrent_jobs_get_different_gpus(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mascot.gpu_slot", "--gpus", "2", "--lock-dir", str(tmp_path), "--", *PRINT_DEVICE],
            stdout=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        for _ in range(2)
    ]
    assert sorted(p.communicate(timeout=60)[0].strip() for p in procs) == ["0", "1"]


def test_a_busy_machine_waits_for_a_free_gpu(tmp_path):
    with gpu_slot(1, tmp_path) as first:
        assert first == [0]
        with pytest.raises(TimeoutError, match="did not come free"):
            with gpu_slot(1, tmp_path, poll_s=0.05, timeout_s=0.2):
                pass
    with gpu_slot(1, tmp_path, timeout_s=1) as again:  # freed when the first block ended
        assert again == [0]


def test_a_job_of_several_processes_takes_its_gpus_together(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with gpu_slot(3, tmp_path) as one:
        with gpu_slot(3, tmp_path, need=2) as two:
            assert one == [0] and two == [1, 2]
            with pytest.raises(TimeoutError, match="2 of the 3"):
                with gpu_slot(3, tmp_path, poll_s=0.05, timeout_s=0.2, need=2):
                    pass
    with gpu_slot(3, tmp_path, need=3, timeout_s=1) as all_three:  # none was left held by the failed attempt
        assert all_three == [0, 1, 2]
    assert main(["--gpus", "1", "--need", "2", "--lock-dir", str(tmp_path), "--", *PRINT_DEVICE]) == 2


def test_scheduler_assigned_devices_are_kept(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert main(["--gpus", "2", "--lock-dir", str(tmp_path), "--", *PRINT_DEVICE]) == 0
    assert capfd.readouterr().out.strip() == "3"


def test_cpu_only_machine_runs_the_command_as_it_is(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert main(["--gpus", "0", "--lock-dir", str(tmp_path), "--", *PRINT_DEVICE]) == 0
    assert capfd.readouterr().out.strip() == "unset"
    assert main(["--gpus", "0", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3  # exit status passes through
