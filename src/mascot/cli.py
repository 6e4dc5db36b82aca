"""`python -m mascot <stage>`: one subcommand per pipeline stage.

Each stage reads only the inputs named by its flags and the params sections declared for it in
dvc.yaml, and writes only its declared outputs (atomically). Errors the user can fix are printed as
one paragraph without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import DEFAULT_PARAMS, load_params
from .errors import MascotError


def _download(args, params):
    from .atomic import atomic_dir
    from .datasets import get_dataset

    dataset = get_dataset(args.dataset, params.dataset(args.dataset))
    cache = args.cache or args.out.parent / ".downloads"
    with atomic_dir(args.out) as tmp:
        try:
            dataset.download(tmp, cache)
        except MascotError as exc:  # the temporary folder is gone once the error is read: name the final one
            raise type(exc)(str(exc).replace(str(tmp), str(args.out))) from None


def _annotations(args, params):
    from .annotations import summary, write_table
    from .atomic import write_json
    from .datasets import get_dataset

    source = get_dataset(args.dataset, params.dataset(args.dataset))
    table = source.read_annotations(args.raw)
    write_table(table, args.out)
    logging.getLogger("mascot").info("annotations %s: %s", args.dataset, summary(table))
    if args.foreground is not None:
        write_table(source.foreground(args.raw), args.foreground)
    if args.ceiling is not None:
        write_json(args.ceiling, {"dataset": args.dataset, "split": "test", "ceiling": source.ceiling(args.raw, "test")})


def _pretrain(args, params):
    from . import pretrain

    pretrain.run(params, args.out, args.metrics)


def _frames(args, params):
    from . import frames
    from .datasets import get_dataset

    video_root = get_dataset(args.dataset, params.dataset(args.dataset)).video_root(args.raw)
    frames.run(params, args.annotations, video_root, args.out)


def _features(args, params):
    from . import features

    features.run(params, args.annotations, args.frames, args.out)


def _train(args, params):
    import os

    from . import train
    from .distributed import launch

    if params.train.processes > 1 and "WORLD_SIZE" not in os.environ:
        launch(params.train.processes, args.argv, params.train.device)  # the same command in every process, under torchrun
        return
    train.run(
        params,
        args.features,
        args.dataset,
        args.variant,
        args.seed,
        args.model_out,
        args.log_out,
        args.state_dir,
        args.frames,
        args.foreground,
    )


def _evaluate(args, params):
    from . import evaluate

    evaluate.run(params, args.features, args.model, args.out, args.frames)


def _figures(args, params):
    from . import figures

    figures.run(params, args.dataset, args.features, args.frames, args.models, args.out)


def _search(args, params):
    from . import search

    search.run(params, args.model, args.features, args.query, args.k, args.split, args.annotations, args.frames, args.sheet)


def _tables(args, params):
    from . import tables

    tables.run(params, args.dataset, args.metrics, args.out, args.published, args.ablation, args.ceiling)


def _preset(args, params):
    import subprocess

    from . import presets

    if args.list or not args.name:
        print("\n".join(presets.names()))
    elif args.apply:
        presets.apply_in_place(args.params, args.name)
        print(presets.next_steps(args.name, args.params))
    elif args.exp_run is not None:
        command = presets.exp_run_command(args.name, args.exp_run)
        logging.getLogger("mascot").info("running: %s", " ".join(command))
        returncode = subprocess.run(command).returncode
        if returncode:
            raise MascotError(f"`dvc exp run` failed (exit status {returncode}); its output above says why.")
    else:
        print(" ".join(presets.exp_run_args(args.name)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mascot", description="MASCOT text-video retrieval pipeline stages (see dvc.yaml)."
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = stage("download", _download, "Obtain a dataset's raw videos and annotation files (synthetic: generate them).")
    p.add_argument("--dataset", required=True, help="registry name, e.g. synthetic")
    p.add_argument("--out", type=Path, required=True, help="raw folder to create")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="download cache that survives failures, so downloads resume (default: .downloads beside --out)",
    )

    p = stage("annotations", _annotations, "Parse a dataset's annotation files into the normalized parquet table.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw", type=Path, required=True, help="raw folder from the download stage")
    p.add_argument("--out", type=Path, required=True, help="annotations.parquet to write")
    p.add_argument(
        "--ceiling",
        type=Path,
        default=None,
        help="JSON to write: the test split's ceiling, null where the dataset cannot know it",
    )
    p.add_argument(
        "--foreground",
        type=Path,
        default=None,
        help="parquet to write: per-frame foreground boxes where the dataset knows them (synthetic), else empty",
    )

    p = stage(
        "pretrain",
        _pretrain,
        "Pretrain the embedded default's CLIP on generated image-caption pairs (when clip.pretrained names its checkpoint).",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to create: clip.pt, the checkpoint clip.pretrained names")
    p.add_argument("--metrics", type=Path, required=True, help="JSON to write: zero-shot R@k on held-out images, loss per epoch")

    p = stage("frames", _frames, "Decode uniformly sampled frames of every video into uint8 shards.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw", type=Path, required=True, help="raw folder (videos are under its video root)")
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="frames folder to create")

    p = stage("features", _features, "Tokenize the captions; below K = L, also cache the frozen vision tokens.")
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="features folder to create")

    frames_help = "the frames folder the features came from (read at K = L; default: the features folder's sibling `frames`)"
    p = stage("train", _train, "Train one variant; keep the checkpoint selected on val.")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--frames", type=Path, default=None, help=frames_help)
    p.add_argument("--dataset", required=True, help="dataset name (recorded in the checkpoint)")
    p.add_argument("--variant", required=True, help="a name under variant_defs in params.yaml")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--model-out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--log-out", type=Path, required=True, help="per-epoch CSV log to write")
    p.add_argument(
        "--state-dir", type=Path, default=None, help="where the resumable training state is kept (outside the outputs)"
    )
    p.add_argument(
        "--foreground",
        type=Path,
        default=None,
        help="the annotations stage's foreground.parquet: masked variants log where their masks fall (foreground.py)",
    )

    p = stage("evaluate", _evaluate, "Text→video and video→text metrics on the test split.")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--frames", type=Path, default=None, help=frames_help)
    p.add_argument("--model", type=Path, required=True, help="checkpoint from the train stage")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")

    p = stage("figures", _figures, "Pictures of one dataset's runs: masks on validation videos, retrievals of test queries.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--models", type=Path, required=True, help="the dataset's checkpoint folder (models/<dataset>)")
    p.add_argument("--out", type=Path, required=True, help="figures folder to create")

    p = stage("search", _search, "The top-k videos of a split for a free-text query, with a trained checkpoint (not a stage).")
    p.add_argument(
        "--model", type=Path, required=True, help="checkpoint from the train stage, e.g. models/synthetic/mascot-seed0.pt"
    )
    p.add_argument(
        "--features", type=Path, required=True, help="the features folder it was trained on, e.g. data/synthetic/features"
    )
    p.add_argument("--query", required=True, help="a sentence describing the video")
    p.add_argument("--k", type=int, default=5, help="videos to list (default 5)")
    p.add_argument("--split", default="test", help="split searched (default test)")
    p.add_argument("--annotations", type=Path, default=None, help="annotations.parquet, to name each video's file")
    p.add_argument("--frames", type=Path, default=None, help=frames_help + "; drawn by --sheet")
    p.add_argument("--sheet", type=Path, default=None, help="PNG contact sheet to write: a row of frames per video")

    p = stage("tables", _tables, "Markdown, CSV and LaTeX tables of one dataset from its metrics files.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--metrics", type=Path, nargs="+", required=True, help="folders of the dataset's metrics JSON files")
    p.add_argument("--ablation", action="store_true", help="write `ablation.tables` over `variants` + `ablation.variants`")
    p.add_argument("--out", type=Path, required=True, help="the dataset's tables folder to create")
    p.add_argument("--published", type=Path, default=None, help="reference file of published results (references/published.yaml)")
    p.add_argument("--ceiling", type=Path, default=None, help="the annotations stage's ceiling.json: a ceiling row where known")

    p = stage(
        "preset",
        _preset,
        "Paper presets (presets/presets.yaml): --apply one to params.yaml, run it as an experiment "
        "(--exp-run [dvc exp run arguments]), or print its `dvc exp run` -S overrides.",
    )
    p.add_argument("name", nargs="?", help="<dataset>-<backbone>, e.g. msrvtt-vit-b-32 (none: list them)")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--apply", action="store_true", help="write the preset into the --params file, keeping its comments")
    p.add_argument(
        "--exp-run",
        nargs=argparse.REMAINDER,
        metavar="DVC_ARGS",
        default=None,
        help="run `dvc exp run` with the preset's -S overrides followed by DVC_ARGS, every argument after --exp-run "
        "(e.g. --temp -S clip.pretrained=null): a -S given here wins over the preset's (last one last, README)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mascot").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        params = load_params(args.params)
        args.func(args, params)
    except MascotError as exc:
        print(f"error ({args.stage}): {exc}", file=sys.stderr)
        return 2
    return 0
