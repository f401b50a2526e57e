"""A second Python environment beside the project (.venv-tf4, .venv-vllm): an engine whose pins conflict with the
main one runs there, in a subprocess. Which interpreter: the environment variable when set ("", off, 0, no: none),
else the venv beside the project when it was built."""

from __future__ import annotations

import os
from pathlib import Path

from ropeconv.errors import InputError

PROJECT = Path(__file__).resolve().parents[2]  # the source tree the side venvs are built beside


def side_python(env: str, venv: str, make_target: str) -> Path | None:
    """The interpreter of the side environment, or None when there is none (or it is turned off)."""
    chosen = os.environ.get(env)
    if chosen is not None:
        if chosen.strip().lower() in ("", "off", "0", "no"):
            return None
        path = Path(chosen)
        if not path.is_file():
            raise InputError(f"{env}={chosen}: no such python executable (unset it, or `make {make_target}`)")
        return path
    beside = PROJECT / venv / "bin" / "python"
    return beside if beside.is_file() else None
