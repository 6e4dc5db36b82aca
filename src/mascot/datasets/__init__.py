"""The dataset registry: one entry per dataset, one interface for every stage.

A dataset entry knows how to obtain its raw files (`download`: fetch, verify or generate them) and
how to parse its own annotation format into the normalized table (`read_annotations`). Stages only
talk to this interface, so adding MSR-VTT or DiDeMo means adding an entry, not changing a stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ..annotations import foreground_table
from ..errors import ConfigError

_REGISTRY: dict[str, type[DatasetSource]] = {}


class DatasetConfig(BaseModel):
    """Base of every `data.<name>` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSource(ABC):
    """How one dataset is obtained and parsed. Subclasses register with `@register`."""

    name: ClassVar[str]
    Config: ClassVar[type[DatasetConfig]] = DatasetConfig
    #: Folder, inside the raw folder, that `video_path` in the annotation table is relative to.
    VIDEO_DIR: ClassVar[str] = "videos"

    def __init__(self, config: DatasetConfig):
        self.config = config

    @abstractmethod
    def download(self, raw_dir: Path, cache_dir: Path) -> None:
        """Fill the empty folder `raw_dir` with the dataset's videos and original annotation files.

        `cache_dir` survives a failed run (partial downloads resume from it); `raw_dir` does not.
        """

    @abstractmethod
    def read_annotations(self, raw_dir: Path) -> pd.DataFrame:
        """Parse the original annotation files of `raw_dir` into the normalized schema."""

    def video_root(self, raw_dir: Path) -> Path:
        return Path(raw_dir) / self.VIDEO_DIR

    def ceiling(self, raw_dir: Path, split: str = "test") -> dict | None:
        """R@k both ways of a perfect model on `split` (metrics.ceiling_metrics), where the source
        knows which captions fit which videos: the synthetic generator does, real datasets do not."""
        return None

    def foreground(self, raw_dir: Path) -> pd.DataFrame:
        """Where the foreground is in every frame (annotations.FOREGROUND_COLUMNS), where the source
        knows it: the synthetic generator does; real datasets do not (an empty table, and the
        foreground diagnostic is skipped for them)."""
        return foreground_table([])


def register(cls: type[DatasetSource]) -> type[DatasetSource]:
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> type[DatasetSource]:
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown dataset `{name}`: registered datasets are {available()}.")
    return _REGISTRY[name]


def dataset_config_class(name: str) -> type[DatasetConfig]:
    return _entry(name).Config


def get_dataset(name: str, config: DatasetConfig) -> DatasetSource:
    return _entry(name)(config)


# Entries register themselves on import.
from . import activitynet, didemo, lsmdc, msrvtt, synthetic  # noqa: E402,F401
