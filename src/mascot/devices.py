"""Where a stage computes, and in which precision: CUDA when present, the CPU otherwise, one code path."""

from __future__ import annotations

import contextlib
import logging

import torch

from .errors import ConfigError
from .frame_store import EncodedFrames

log = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def select_device(name: str = "auto", key: str = "train.device") -> torch.device:
    """`key` names the params.yaml key the choice came from, for the error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`{key}: cuda` but no CUDA device is visible; set `{key}: auto` or `cpu`.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # the current GPU by its index (distributed.init_from_env sets it per process): DDP needs the index
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def autocast(device: torch.device, precision: str):
    """Mixed precision on CUDA (bf16 or fp16); the CPU always computes in fp32."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling, needed for fp16 only (disabled, a pass-through, otherwise)."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")


def describe(device: torch.device, precision: str = "fp32") -> str:
    """Where and in which precision a stage computes, for its first log line."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{device} ({name}), {'fp32' if precision == 'fp32' else precision + ' autocast'}"
    return f"cpu ({torch.get_num_threads()} threads), fp32"


def on_device(t: torch.Tensor | EncodedFrames, device: torch.device) -> torch.Tensor:
    """Move a tensor in its stored dtype to `device` (from pinned memory without blocking the host)
    and make it computable there: fp16/bf16 become fp32 after the copy (exact); integers and bools
    keep their dtype. JPEG frames (EncodedFrames) are decoded there, to uint8."""
    if isinstance(t, EncodedFrames):
        return t.decode(device)
    t = t.to(device, non_blocking=True)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
