"""Are two identical CPU training runs bit-identical? A reproducer for the train stage.

Builds the tiny synthetic preset of tests/conftest.py once (videos, frames, features in a temporary
folder), then runs the train stage's `train.run` twice with the same settings, each run in a fresh
process, and compares every step's loss (full float precision) and the selected weights bit for bit.

    python benchmarks/train_determinism.py                       # MASCOT, 60 steps
    python benchmarks/train_determinism.py --variant meanP --steps 20
    python benchmarks/train_determinism.py --threads 1           # torch.set_num_threads(1) in each run
    python benchmarks/train_determinism.py --index-probe         # only the CPU index-backward probe

`--index-probe` isolates the operation behind the nondeterminism we found: the backward of advanced
indexing with repeated indices (`text[frame_video]` in objective.py gives every frame its caption's
tokens) accumulates with `index_put_(accumulate=True)`, which on the CPU adds in parallel with
atomic float additions unless deterministic algorithms are on. Two threads then add into the same
caption's row only when a thread's share of the frames ends inside a video, so the order changes
between runs only for batches whose valid frames do not split evenly: with every video long enough
(the tests' 4 frames) runs agree; with 8 frames, where short videos are padded, they do not.

Prints one Markdown line per comparison; record the result in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def build_features(work: Path, steps: int, variant: str, num_frames: int) -> tuple[Path, Path]:
    """The tiny preset's features folder (`num_frames` per video) and a params file that trains
    `variant` for about `steps` steps."""
    import yaml

    sys.path.insert(0, str(REPO))
    from mascot import features, frames
    from mascot.annotations import write_table
    from mascot.config import parse_params
    from mascot.datasets import get_dataset
    from tests.conftest import tiny_params_dict

    raw = tiny_params_dict()
    synthetic = raw["data"]["synthetic"]
    per_epoch = synthetic["videos"]["train"] * synthetic["captions_per_video"] // raw["train"]["batch_size"]
    raw["train"]["epochs"] = max(1, round(steps / per_epoch))
    raw["variants"] = [variant]
    raw["frames"]["num_frames"] = num_frames
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    data = get_dataset("synthetic", params.dataset("synthetic"))
    (work / "raw").mkdir()
    data.download(work / "raw", work / "cache")
    write_table(data.read_annotations(work / "raw"), work / "annotations.parquet")
    frames.run(params, work / "annotations.parquet", work / "raw" / "videos", work / "frames")
    features.run(params, work / "annotations.parquet", work / "frames", work / "features")
    return params_path, work / "features"


def child(params_path: Path, features_dir: Path, variant: str, out: Path, threads: int | None) -> None:
    """One training run; writes every step's loss (repr of the float) and the weights."""
    from mascot import train
    from mascot.config import load_params
    from mascot.objective import Objective

    if threads:
        torch.set_num_threads(threads)
    losses: list[float] = []
    forward = Objective.forward

    def recording(self, *args):
        terms = forward(self, *args)
        losses.append(terms["loss"].item())
        return terms

    Objective.forward = recording
    train.run(load_params(params_path), features_dir, "synthetic", variant, 0, out / "model.pt", out / "log.csv")
    (out / "losses.json").write_text(json.dumps([repr(v) for v in losses]))


def compare(a: Path, b: Path) -> str:
    la, lb = json.loads((a / "losses.json").read_text()), json.loads((b / "losses.json").read_text())
    first = next((i for i, (x, y) in enumerate(zip(la, lb, strict=True)) if x != y), None)
    wa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    same_weights = all(torch.equal(wa[k], wb[k]) for k in wa)
    same_logs = (a / "log.csv").read_bytes() == (b / "log.csv").read_bytes()
    if first is None:
        steps = f"all {len(la)} step losses bit-identical"
    else:
        steps = f"step losses differ from step {first + 1} of {len(la)} ({la[first]} vs {lb[first]})"
    return f"{steps}; weights {'identical' if same_weights else 'differ'}; epoch logs {'identical' if same_logs else 'differ'}"


def index_probe(repeats: int = 50, threads: int = 8) -> str:
    """Backward of `x[index]` with repeated indices, as objective.py's `text[frame_video]`: 32 captions
    with 3 to 8 valid frames each (so the frames do not split evenly over the threads), repeated."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, 128, generator=generator, requires_grad=True)
    index = torch.arange(32).repeat_interleave(torch.randint(3, 9, (32,), generator=generator))
    grad = torch.randn(len(index), 32, 128, generator=generator)
    results = []
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        grads = []
        for _ in range(repeats):
            x.grad = None
            x[index].backward(grad)
            grads.append(x.grad.clone())
        differ = sum(not torch.equal(g, grads[0]) for g in grads[1:])
        results.append(f"deterministic algorithms {'on' if deterministic else 'off'}: {differ} of {repeats - 1} differ")
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(previous)
    return f"{threads} threads, {repeats} backward passes; " + "; ".join(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--variant", default="mascot")
    parser.add_argument(
        "--frames",
        type=int,
        default=8,
        help="frames per video (default 8: shorter videos are padded, so the valid frames per batch vary)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each run (default: torch's own)")
    parser.add_argument("--index-probe", action="store_true", help="only probe the index backward")
    parser.add_argument("--keep", type=Path, default=None, help="an empty folder to work in and keep (default: a temporary one)")
    parser.add_argument("--child", nargs=3, metavar=("PARAMS", "FEATURES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.variant, Path(args.child[2]), args.threads)
        return
    print(f"| index backward probe | {index_probe()} |")
    if args.index_probe:
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        params_path, features_dir = build_features(work, args.steps, args.variant, args.frames)
        runs = [work / "run-a", work / "run-b"]
        for out in runs:
            out.mkdir()
            command = [
                sys.executable,
                __file__,
                "--variant",
                args.variant,
                "--child",
                str(params_path),
                str(features_dir),
                str(out),
            ]
            if args.threads:
                command += ["--threads", str(args.threads)]
            subprocess.run(command, check=True, cwd=work)
        print(
            f"| {args.variant}, {args.frames} frames, two fresh runs, threads {args.threads or torch.get_num_threads()} | {compare(*runs)} |"
        )


if __name__ == "__main__":
    main()
