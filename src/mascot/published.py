"""Published results from the reference file (references/published.yaml), validated.

Published rows are only ever read from that file, each with its source, so a generated table never
contains a number typed into code; values not yet checked against their source are flagged.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import MascotError
from .metrics import METRICS


class Direction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    R1: float | None = None
    R5: float | None = None
    R10: float | None = None
    MdR: float | None = None
    MnR: float | None = None


class PublishedRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    method: str
    backbone: str
    source: str = Field(min_length=1)
    transcribed: bool = True
    t2v: Direction = Direction()
    v2t: Direction = Direction()

    @model_validator(mode="after")
    def _values_match_status(self) -> PublishedRow:
        has_values = any(getattr(d, m) is not None for d in (self.t2v, self.v2t) for m in METRICS)
        if self.transcribed and not has_values:
            raise ValueError("a transcribed row needs at least one value (or set transcribed: false)")
        if not self.transcribed and has_values:
            raise ValueError(
                "values of a row marked transcribed: false would be shown as unchecked; remove them or set transcribed: true"
            )
        return self

    def value(self, direction: str, metric: str) -> float | None:
        return getattr(getattr(self, direction), metric)


def load_published(path: Path) -> dict[str, list[PublishedRow]]:
    """dataset → published rows; an absent file means no published rows."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MascotError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(raw, dict):
        raise MascotError(f"{path}: expected a mapping of dataset → list of rows.")
    rows: dict[str, list[PublishedRow]] = {}
    for dataset, entries in raw.items():
        rows[dataset] = []
        for i, entry in enumerate(entries or []):
            try:
                rows[dataset].append(PublishedRow.model_validate(entry))
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
                raise MascotError(
                    f"{path}: entry {i} of `{dataset}` is invalid ({problems}). Fix it; every row needs method, backbone and source."
                ) from None
    return rows
