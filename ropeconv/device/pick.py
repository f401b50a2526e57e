"""Pick the compute device: CUDA when present unless told otherwise, with exact fp32 math."""

from __future__ import annotations

import torch

from ropeconv.errors import InputError


def pick_device(requested: str | None = None) -> torch.device:
    if requested in (None, "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        # TF32 would make the reference itself inexact at the 1e-3 level
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return torch.device("cuda")
    if requested == "cpu":
        return torch.device("cpu")
    raise InputError(f"--device must be cpu, cuda or auto, got {requested!r}")
