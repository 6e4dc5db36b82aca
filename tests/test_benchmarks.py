"""The benchmark scripts run (in their small settings) and print their tables."""

import os
import subprocess
import sys

from .conftest import REPO


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_gpu_check_smoke_runs_on_cpu():
    out = _run("benchmarks/gpu_check.py", "--smoke")
    rows = [line.split(" | ")[1] for line in out.splitlines() if line.startswith("| mascot-tiny")]
    decoded = ", JPEG decoded in the step (decode_on: device)"
    assert rows == [
        "whole tower, for reference (inputs on the device)",
        "JPEG decoding on the device, 12 frames of 64 px (2 KB each)",
        "evaluate: video embedding, 3 frames",
        "train: meanP step, batch 4 × 3, K = 4, checkpointing",
        f"train: meanP step, batch 4 × 3, K = 4, checkpointing{decoded}",
        "train: MASCOT step, batch 4 × 3, K = 4, checkpointing",
        f"train: MASCOT step, batch 4 × 3, K = 4, checkpointing{decoded}",
    ]
    assert "s/step" in out and "videos/s" in out and "n/a (CPU)" in out


def test_data_loader_benchmark_compares_the_paths():
    out = _run(
        "benchmarks/data_loader.py",
        "--models",
        "mascot-tiny",
        "--videos",
        "8",
        "--batch",
        "4",
        "--workers",
        "0",
        "1",
        "--steps",
        "4",
    )
    rows = [line.split(" | ")[1:4:2] for line in out.splitlines() if line.startswith("| 64 px (mascot-tiny)")]
    handed_over = "(JPEG files for the device: decode_on device)"
    assert rows == [
        ["raw", path]
        for path in ("loader, 0 threads (uint8 frames)", "loader, 1 thread (uint8 frames)", "torch DataLoader, 1 process")
    ] + [
        ["jpeg", path]
        for path in (
            "loader, 0 threads (uint8 frames)",
            "loader, 1 thread (uint8 frames)",
            f"loader, 0 threads {handed_over}",
            f"loader, 1 thread {handed_over}",
            "torch DataLoader, 1 process",
        )
    ]
    assert any(line.startswith("| mascot-tiny | meanP |") for line in out.splitlines())  # the FLOP count ran


def test_mascot_step_benchmark_prints_the_ratio():
    out = _run("benchmarks/mascot_step.py", "--configs", "mascot-tiny", "--batch", "4", "--repeats", "1", "--warmup", "0")
    row = next(line for line in out.splitlines() if line.startswith("| mascot-tiny"))
    assert row.rstrip(" |").endswith("×")


def test_frame_formats_benchmark_measures_every_format(tmp_path, tiny_raw):
    out = _run("benchmarks/frame_formats.py", "--videos", str(tiny_raw / "videos"), "--limit", "20", "--no-samples")
    rows = [line.split(" | ")[0].lstrip("| ") for line in out.splitlines() if line.startswith("| ") and "frame" not in line]
    assert rows == ["raw", "jpeg q95", "jpeg q90", "webp q95", "webp q90"]


def test_frame_extraction_benchmark_compares_both_routes(tmp_path):
    out = _run(
        "benchmarks/frame_extraction.py",
        "--videos",
        "2",
        "--seconds",
        "4",
        "--no-samples",
        "--workers",
        "1",
        "--cache",
        str(tmp_path),
    )
    row = next(line for line in out.splitlines() if line.startswith("| 2 generated clips"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2].endswith("×") and cells[3].endswith("×")
    assert cells[4].endswith("× (2 pyav)")  # one keyframe each (libx264's default GOP): the in-order route
    assert cells[5].startswith("12.0 / 12.0 (same)")  # 4 s at 3 fps: 12 frames to sample from


def test_exact_masking_benchmark_prints_every_design():
    out = _run("benchmarks/exact_masking.py", "--configs", "mascot-tiny", "--batch", "2", "--repeats", "1", "--warmup", "0")
    rows = [line for line in out.splitlines() if line.startswith("| mascot-tiny")]
    assert [r.split(" | ")[1] for r in rows] == ["whole tower", "online frozen blocks", "cached frozen blocks (inexact)"]
    assert rows[0].split(" | ")[5] == "1.00×"


def test_train_memory_counts_saved_storages_once():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("train_memory", REPO / "benchmarks" / "train_memory.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    x = torch.randn(100, requires_grad=True)
    assert module.saved_bytes(lambda: (x * x).sum()) == 400  # x saved twice, one fp32 storage
    assert module.saved_bytes(lambda: (x + 1).sum()) == 0  # addition saves nothing


def test_train_memory_smoke_shows_what_checkpointing_saves():
    out = _run("benchmarks/train_memory.py", "--smoke")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| mascot-tiny")]
    assert [r[1].strip() for r in rows] == ["meanP", "mascot"]
    for row in rows:
        fp32, bf16, ckpt = (float(cell.split()[0]) for cell in row[4:7])
        assert ckpt < bf16 < fp32  # per frame: checkpointing keeps less than bf16, bf16 less than fp32
