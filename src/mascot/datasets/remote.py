"""What the four real benchmarks share: remote files, placement by hand, completeness, val carving.

A real dataset's raw folder always has the same layout, whether its files were downloaded or
placed by hand under `source_dir`:

  annotations/<file>   the original annotation files, byte for byte
  videos/<video_path>  the videos (`video_path` of the normalized table)
  missing_videos.txt   videos the annotations name but the folder lacks (within the threshold)

Files from the download cache are hard-linked (no second copy on the same filesystem). Files from
`source_dir` are copied (reflinked where the filesystem can): DVC moves the raw folder into its cache
and makes it read-only, which must not happen to the user's own files (`link_placed: true` links
them instead, to save the space).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from ..download import DownloadError, copy_file, fetch, link_or_copy, safe_extract, set_key_hint, verify
from ..errors import MascotError
from . import DatasetConfig, DatasetSource

log = logging.getLogger(__name__)
ANNOTATIONS = "annotations"
MISSING = "missing_videos.txt"


class Member(BaseModel):
    """One file an entry provides, under a logical name (file names contain dots, which `-S` keys cannot)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str = Field(description="file name in the entry's `dest` folder")
    checksum: str | None = Field(None, description="sha256:<hex> | md5:<hex> | gitblob:<hex>, or null: not checked")


class RemoteFile(BaseModel):
    """One file to obtain: a plain file or an archive whose folder `root` is unpacked."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str | None = Field(None, description="where to download it (null: it must be placed by hand)")
    checksum: str | None = Field(
        None,
        description="sha256:<hex> | md5:<hex> | gitblob:<hex> of the downloaded file (of a plain file: also of the placed one)",
    )
    archive: bool = Field(False, description="unpack it (zip or tar) instead of keeping it")
    root: str = Field("", description="folder inside the archive whose contents are kept")
    dest: str = Field(ANNOTATIONS, description="folder of the raw layout it goes to (annotations | videos)")
    file: str | None = Field(None, description="name of a plain file in `dest` (default: the last part of the URL)")
    members: dict[str, Member] = Field(
        default_factory=dict, description="files an archive or a hand-placed set provides: logical name → {file, checksum}"
    )

    def provides(self) -> dict[str, Member]:
        """The files this entry puts into `dest`, keyed by where their checksum is set below the entry."""
        if self.members:
            return {f"members.{name}.checksum": m for name, m in self.members.items()}
        name = self.file or (self.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] if self.url and not self.archive else None)
        return {"checksum": Member(file=name, checksum=self.checksum)} if name else {}


def _deep_merge(default: dict, override: dict) -> dict:
    out = dict(default)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class RemoteDatasetConfig(DatasetConfig):
    """Keys every real dataset has; `files` are merged key by key over the entry's defaults."""

    source_dir: str | None = Field(
        None, description="folder with files placed by hand, in the raw layout (annotations/, videos/); used before any URL"
    )
    files: dict[str, RemoteFile] = Field(default_factory=dict, description="remote files by name (override single keys)")
    max_missing_fraction: float = Field(
        0.01, ge=0, le=1, description="fail when more than this fraction of the annotated videos is missing"
    )
    download_workers: int = Field(8, ge=1, description="parallel per-video downloads")
    verify_placed: bool = Field(
        True,
        description="check files placed under source_dir against the release checksums; false for a subset or a "
        "copy of your own (downloaded files are always checked)",
    )
    link_placed: bool = Field(
        False,
        description="hard-link files from source_dir instead of copying them: no second copy, but DVC's cache then "
        "shares them and makes them read-only (never edit them in place)",
    )

    DEFAULT_FILES: ClassVar[dict[str, dict]] = {}

    @model_validator(mode="before")
    @classmethod
    def _merge_default_files(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, "files": _deep_merge(cls.DEFAULT_FILES, data.get("files") or {})}
        return data


class CarvedValConfig(RemoteDatasetConfig):
    """Datasets whose official release has no validation split: one is carved from train."""

    val_videos: int = Field(500, ge=1, description="training videos held out for model selection (ours)")
    val_seed: int = Field(0, description="seed of the held-out draw (fixed, so every run selects on the same videos)")


def carve_val(train_ids: list[str], n: int, seed: int, source: str) -> set[str]:
    """A fixed random subset of `train_ids` (sorted first, so file order does not matter)."""
    ids = sorted(set(train_ids))
    if n >= len(ids):
        raise MascotError(f"{source}: val_videos = {n} leaves no training videos (the train split has {len(ids)}).")
    picked = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return {ids[i] for i in picked}


def read_text_lines(path: Path) -> list[str]:
    return [line for line in annotation(path).read_text().splitlines() if line.strip()]


def annotation(path: Path) -> Path:
    """`path`, or a clear error naming the file when it is absent."""
    if not path.is_file():
        raise MascotError(
            f"{path}: annotation file not found. Run the download stage, or place the file by hand under "
            "`<source_dir>/annotations/` (README, section Datasets)."
        )
    return path


class RemoteDataset(DatasetSource):
    """A real dataset: obtain files (source_dir first, then URLs), place them, check completeness."""

    Config: ClassVar[type[RemoteDatasetConfig]] = RemoteDatasetConfig
    config: RemoteDatasetConfig

    def download(self, raw_dir: Path, cache_dir: Path) -> None:
        raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
        source = Path(self.config.source_dir).expanduser() if self.config.source_dir else None
        if source is not None and not source.is_dir():
            raise MascotError(f"data.{self.name}.source_dir = {source}: no such folder. Fix the path or set it to null.")
        for name, spec in self.config.files.items():
            self._obtain(name, spec, source, raw_dir, cache_dir)
        if source is not None and (source / "videos").is_dir():
            placed = [p for p in sorted((source / "videos").rglob("*")) if p.is_file()]
            for path in tqdm(placed, desc=f"{self.name}: placing videos", unit="file", disable=None):
                self._place(path, self.video_root(raw_dir) / path.relative_to(source / "videos"))
        table = self.read_annotations(raw_dir)
        self._fetch_videos(table, raw_dir, cache_dir)
        self.check_complete(table, raw_dir)

    def _place(self, src: Path, dest: Path) -> None:
        """A file from source_dir into the raw folder (copied, or hard-linked with `link_placed`)."""
        (link_or_copy if self.config.link_placed else copy_file)(src, dest)

    def _placed(self, spec: RemoteFile, source: Path | None, what: str) -> list[Path] | None:
        """The files of `spec` under `source` when all of them were placed by hand; None when none
        were (they are downloaded). Some but not all is an error: the group (one release archive)
        is used whole, and a silent download instead of the user's files would be a surprise."""
        if source is None or not spec.provides():
            return None
        found = [source / spec.dest / m.file for m in spec.provides().values()]
        missing = [p for p in found if not p.is_file()]
        if not missing:
            return found
        if len(missing) < len(found):
            have = ", ".join(p.name for p in found if p.is_file())
            raise MascotError(
                f"{what}: {source / spec.dest} holds {have} but not {', '.join(p.name for p in missing)}; these files come "
                "together (one release archive) and are used from source_dir only all together. Place the missing ones "
                f"too (a subset may be a trimmed copy, with data.{self.name}.verify_placed: false), or remove the placed "
                "ones to have the archive downloaded."
            )
        return None

    def _obtain(self, name: str, spec: RemoteFile, source: Path | None, raw_dir: Path, cache_dir: Path) -> None:
        what = f"data.{self.name}.files.{name}"
        target = raw_dir / spec.dest
        if spec.dest == "videos" and source is not None and (source / "videos").is_dir():
            return  # videos placed by hand are placed, not downloaded
        placed = self._placed(spec, source, what)
        if placed is not None:
            for path in placed:
                self._place(path, target / path.name)
        elif spec.url is None:
            wanted = ", ".join(m.file for m in spec.provides().values()) or name
            raise MascotError(
                f"{what}: {wanted} has no download URL and is not under source_dir "
                f"({source / spec.dest if source else 'data.' + self.name + '.source_dir is not set'}). "
                f"Place it there by hand (README, section Datasets) or set {what}.url."
            )
        else:
            filename = spec.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or name
            cached = fetch(spec.url, cache_dir / name / filename, spec.checksum, what=what, key=f"{what}.checksum")
            if spec.archive:
                safe_extract(cached, target, spec.root)
            else:
                link_or_copy(cached, target / next((m.file for m in spec.provides().values()), filename))
        if placed is not None and not self.config.verify_placed:
            log.info("%s: files placed by hand are not checked (data.%s.verify_placed: false)", what, self.name)
            return
        for suffix, member in spec.provides().items():
            path = target / member.file
            if not path.is_file():
                raise DownloadError(
                    f"{what}: {member.file} is missing after placing {name}; the archive's layout may have changed. "
                    f"Check `root` and `members` of {what} in params.yaml."
                )
            verify(
                path,
                member.checksum,
                what,
                key=f"{what}.{suffix}",
                fix=None if placed is None else self._placed_fix(f"{what}.{suffix}"),
            )

    def _placed_fix(self, key: str) -> str:
        """What to do when a file placed by hand is not the release's."""
        return (
            f"The file was placed by hand under data.{self.name}.source_dir, so it need not be the released one. If it is "
            f"meant to differ (a subset, a copy of your own), switch the check off for every placed file of {self.name}: "
            f"{set_key_hint(f'data.{self.name}.verify_placed', 'false')}; or for this file only: {set_key_hint(key, 'null')}. "
            "Otherwise replace it with the released file."
        )

    def video_url(self, video_path: str, raw_dir: Path) -> str | None:
        """Where one video is downloaded from (None: the dataset has no per-video source)."""
        return None

    def _fetch_videos(self, table: pd.DataFrame, raw_dir: Path, cache_dir: Path) -> None:
        """Download the videos not placed by hand that have a per-video URL (DiDeMo)."""
        video_dir = self.video_root(raw_dir)
        wanted = [p for p in table["video_path"].unique() if not (video_dir / p).is_file()]
        jobs = [(rel, url) for rel in wanted if (url := self.video_url(rel, raw_dir))]
        if not jobs:
            return

        def one(job: tuple[str, str]) -> str | None:
            rel, url = job
            try:
                cached = fetch(url, cache_dir / "videos" / rel, None, retries=2, progress=False, what=f"{self.name} video {rel}")
            except DownloadError as exc:
                log.warning("%s", exc)
                return rel
            link_or_copy(cached, video_dir / rel)
            return None

        with ThreadPoolExecutor(self.config.download_workers) as pool:
            failed = [
                r for r in tqdm(pool.map(one, jobs), total=len(jobs), desc=f"{self.name} videos", unit="video", disable=None) if r
            ]
        if failed:
            log.warning("%s: %d of %d video downloads failed (listed in %s)", self.name, len(failed), len(jobs), MISSING)

    def check_complete(self, table: pd.DataFrame, raw_dir: Path) -> None:
        """List missing videos in the raw folder; fail when more than the threshold is missing."""
        video_dir = self.video_root(raw_dir)
        videos = table.drop_duplicates("video_path")[["video_path", "split"]]
        present = videos["video_path"].map(lambda p: (video_dir / p).is_file())
        missing = videos[~present]
        (Path(raw_dir) / MISSING).write_text("".join(f"{p}\n" for p in sorted(missing["video_path"])))
        if missing.empty:
            return
        per_split = ", ".join(
            f"{s}: {int((missing['split'] == s).sum())} of {int((videos['split'] == s).sum())}"
            for s in sorted(set(videos["split"]))
        )
        fraction = len(missing) / len(videos)
        log.warning("%s: %d of %d videos missing (%s)", self.name, len(missing), len(videos), per_split)
        if fraction > self.config.max_missing_fraction:
            examples = ", ".join(sorted(missing["video_path"])[:10])
            raise MascotError(
                f"{self.name}: {len(missing)} of {len(videos)} annotated videos ({fraction:.1%}) are missing from "
                f"{video_dir} ({per_split}), more than data.{self.name}.max_missing_fraction = "
                f"{self.config.max_missing_fraction:.1%}; e.g. {examples}. Place them under "
                f"<source_dir>/videos/ (README, section Datasets) or raise the threshold to train without them."
            )


class ParagraphConfig(RemoteDatasetConfig):
    """Datasets of videos with several timed sentences (ActivityNet Captions, DiDeMo)."""

    paragraph: bool = Field(
        True,
        description="paper protocol: all sentences of a video joined into one query over the whole video; "
        "false: every sentence is its own clip with its own time span",
    )


def segment_rows(segments: pd.DataFrame, paragraph: bool, span: tuple[float, float]) -> pd.DataFrame:
    """Rows of the normalized table from timed sentences (video_id, split, video_path, start, end, sentence).

    Paragraph mode joins the sentences of a video in the order given (the annotators' order) and
    uses `span` for the video; sentence mode keeps each sentence's own span as a clip `<video>#<k>`.
    """
    segments = segments.assign(sentence=segments["sentence"].astype(str).str.strip())
    if paragraph:
        grouped = segments.groupby("video_id", sort=False)
        rows = grouped.agg(split=("split", "first"), video_path=("video_path", "first"), caption=("sentence", " ".join))
        rows = rows.reset_index().assign(caption_id=lambda d: d["video_id"], start=span[0], end=span[1])
        return rows
    k = segments.groupby("video_id", sort=False).cumcount().astype(str)
    clip = segments["video_id"] + "#" + k
    return segments.assign(video_id=clip, caption_id=clip, caption=segments["sentence"])
