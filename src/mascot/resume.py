"""Training state for exact resume: everything a run needs to continue bit for bit.

The state lives outside the stage's outputs (`dvc repro` deletes those before running a stage), in
`checkpoints/<dataset>/<variant>-seed<seed>/state.pt`, written atomically and loaded with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists, tuples and dicts only, no pickled
objects. A fingerprint of everything that determines the run (parameters, features, seed) guards it:
a state from other settings is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_file

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def rng_state(generator: np.random.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": json.dumps(generator.bit_generator.state),
        "python": json.dumps(random.getstate()),
    }


def restore_rng(state: dict, generator: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.bit_generator.state = json.loads(state["numpy"])
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))


def save_state(directory: Path, state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / STATE_FILE) as tmp:
        torch.save(state, tmp)


def load_state(directory: Path, expected_fingerprint: str) -> dict | None:
    """The saved state if it belongs to this run, else None (a stale state is removed)."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: start over rather than fail
        log.warning("resume: ignoring unreadable %s (%s)", path, exc)
        path.unlink()
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log.info("resume: %s was written for other settings; starting from scratch", path)
        path.unlink()
        return None
    return state


def clear_state(directory: Path) -> None:
    (directory / STATE_FILE).unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
