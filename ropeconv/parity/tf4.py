"""transformers 4.x as a second candidate for safetensors outputs: the probe run in another Python environment.

transformers 4.x and 5.x read config.json differently (4.x knows only rope_theta + rope_scaling and some
top-level keys, 5.x prefers rope_parameters), so an output is proven in both majors when a 4.x environment
is at hand. That environment runs tf4_runner.py by path (ropeconv is not installed there); its logits are
compared with the reference like any runtime's, in rows marked "4.x-".

Which environment: $ROPECONV_TF4_PYTHON (a python executable; "off" or empty: never run 4.x), else
.venv-tf4/bin/python beside the project (what `make tf4` builds), else none (the report says so).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ropeconv.errors import InputError, ParityError
from ropeconv.side_env import START_FAILED, run_script, side_python

if TYPE_CHECKING:
    import torch

ENV = "ROPECONV_TF4_PYTHON"
PREFIX = "4.x-"
RUNNER = Path(__file__).with_name("tf4_runner.py")
PROJECT = Path(__file__).resolve().parents[2]  # the source tree: its .venv-tf4, and ropeconv.runtime for ALiBi


def python() -> Path | None:
    """The 4.x interpreter, or None when there is none (or it is turned off)."""
    return side_python(ENV, ".venv-tf4", "tf4")


def missing_note() -> str:
    """Why 4.x did not run, for the report."""
    if os.environ.get(ENV) is not None:
        return f"transformers 4.x not run: {ENV} is {os.environ[ENV]!r}"
    return (f"transformers 4.x not run: no 4.x environment (`make tf4` builds .venv-tf4 beside the project, or set "
            f"{ENV})")


@dataclass(frozen=True)
class Job:
    model: Path  # a transformers directory
    ids: torch.Tensor  # [1, n]
    passes: Sequence  # ropeconv.parity.probe.Pass
    attention: str | None = None  # attn_implementation, where 4.x's default differs from 5.x (archs.hf4_attention)


def run_jobs(jobs: Sequence[Job], interpreter: Path, progress: Callable[[str], None] = lambda _: None,
             scratch: Path | None = None) -> tuple[list[list], str]:
    """Logits per job and pass (torch [n_tokens, vocab] float32), from one start of the 4.x environment (torch and
    transformers take seconds to import, so batch models into one call); and the 4.x transformers version.

    The passes run as ropeconv's own runtimes run them (the same prefill chunks through the KV cache, then the
    decode steps). The logits lie in files in `scratch` (or the system temp) and are read back as copy-on-write
    mappings: a full-length probe's rows are paged in as the comparison reads them, not held whole."""
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory(prefix="ropeconv-tf4-", dir=scratch) as tmp:
        request: dict[str, Any] = {"jobs": [], "ropeconv_src": str(PROJECT)}
        for j, job in enumerate(jobs):
            np.save(Path(tmp) / f"ids-{j}.npy", job.ids.numpy())
            request["jobs"].append({"model": str(Path(job.model).resolve()), "ids": str(Path(tmp) / f"ids-{j}.npy"),
                                    "out": str(Path(tmp) / f"logits-{j}"),
                                    "passes": [[p.first_position, p.n_tokens, p.prefill_chunks()] for p in job.passes],
                                    "attn_implementation": job.attention})
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        version, errors = _run(interpreter, Path(tmp) / "request.json", progress)
        if version is None:
            raise ParityError(f"transformers 4.x ({interpreter}) could not run "
                              f"{', '.join(str(j.model) for j in jobs)}: {errors[-1] if errors else 'no output'}")
        if not version.startswith("4."):
            raise InputError(f"{ENV}={interpreter} runs transformers {version}; it must be a 4.x environment")
        # copy-on-write: the mapping outlives the folder's removal (the pages stay reachable through it)
        logits = [[torch.from_numpy(np.load(Path(tmp) / f"logits-{j}-{k}.npy", mmap_mode="c"))
                   for k in range(len(job.passes))] for j, job in enumerate(jobs)]
    return logits, version


def attention_for(model_dir: Path) -> str | None:
    """The attention implementation 4.x must be asked for (a user loading the output in 4.x must ask for it too)."""
    from ropeconv.families.lookup import ARCHS

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    spec = ARCHS.get(config.get("model_type"))
    return spec.hf4_attention if spec else None


def _run(interpreter: Path, request: Path, progress: Callable[[str], None]) -> tuple[str | None, list[str]]:
    ran = run_script(interpreter, RUNNER, request, engine="transformers 4.x", progress=progress)
    errors = list(ran.errors)
    # the runner prints only its own exception, whose last line says what differs (a state dict's mismatch names the
    # shapes there), so its last line is the message, not side_env.last_error's pick among an engine's log lines
    if ran.returncode == START_FAILED:
        raise InputError(f"{ENV}={interpreter}: the 4.x environment cannot start ({errors[-1] if errors else 3}); "
                         f"rebuild it with `make tf4` or set {ENV}=off")
    if ran.returncode != 0:
        return None, errors
    return json.loads(ran.stdout.strip().splitlines()[-1])["transformers"], errors
