"""The OpenVINO environment (.venv-ov beside the project, or $ROPECONV_OPENVINO_PYTHON) and the one way into it:
ov_runner.py run by path there, with a request JSON of export and run jobs, one start for all of them.

optimum-intel 2.2 pins transformers < 5.6 and huggingface-hub < 1.22, which the main environment does not take, so
the exporter and the runtime live in their own venv (`make openvino`), as vLLM's does (ropeconv.side_env: the same
rule, and the same way into it)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, UnsupportedError
from ropeconv.side_env import START_FAILED, last_error, run_script, side_python

ENV = "ROPECONV_OPENVINO_PYTHON"
VENV = ".venv-ov"
MAKE_TARGET = "openvino"
RUNNER = Path(__file__).with_name("ov_runner.py")
INSTALL_HINT = f"build it with `make {MAKE_TARGET}` (its own venv, {VENV}: optimum-intel pins transformers < 5.6) " \
               f"or set {ENV} to a python with optimum-intel"
# an export is ~10–20 s on a tiny model (2 cores), a 135M model ~1 min; a run is a second or two past the start
SECONDS_PER_JOB = 600


def python() -> Path | None:
    """The OpenVINO environment's interpreter, or None when there is none (or $ROPECONV_OPENVINO_PYTHON turns it
    off: "", off, 0, no)."""
    return side_python(ENV, VENV, MAKE_TARGET)


def require(what: str = "--to openvino") -> Path:
    found = python()
    if found is None:
        raise InputError(f"{what} needs the OpenVINO environment (optimum-intel), which is not there; {INSTALL_HINT}")
    return found


def run_jobs(jobs: list[dict[str, Any]], progress: Callable[[str], None] = lambda _: None,
             interpreter: Path | None = None, failure: type[Exception] = UnsupportedError) \
        -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run the jobs in one start of the OpenVINO environment: their results and the versions that ran. A job that
    fails raises `failure` with the environment's last error line."""
    interpreter = interpreter or require()
    with tempfile.TemporaryDirectory(prefix="ropeconv-ov-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"jobs": jobs}))
        ran = run_script(interpreter, RUNNER, request, engine="OpenVINO", progress=progress, cwd=Path(tmp),
                         timeout_s=120 + SECONDS_PER_JOB * len(jobs))
    if ran.returncode == START_FAILED:
        raise InputError(f"the OpenVINO environment ({interpreter}) cannot import optimum-intel "
                         f"({last_error(ran.errors)}); rebuild it with `make {MAKE_TARGET}`")
    if ran.returncode != 0:
        raise failure(f"OpenVINO ({interpreter}) failed: {last_error(ran.errors)}")
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    return list(found["results"]), dict(found["versions"])
