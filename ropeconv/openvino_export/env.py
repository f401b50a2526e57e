"""The OpenVINO environment (.venv-ov beside the project, or $ROPECONV_OPENVINO_PYTHON) and the one way into it:
ov_runner.py run by path there, with a request JSON of export and run jobs, one start for all of them.

optimum-intel 2.2 pins transformers < 5.6 and huggingface-hub < 1.22, which the main environment does not take, so
the exporter and the runtime live in their own venv (`make openvino`), as vLLM's does (parity.side_env: the same
rule, kept here because the exporters sit below parity)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, UnsupportedError

ENV = "ROPECONV_OPENVINO_PYTHON"
VENV = ".venv-ov"
MAKE_TARGET = "openvino"
PROJECT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("ov_runner.py")
INSTALL_HINT = f"build it with `make {MAKE_TARGET}` (its own venv, {VENV}: optimum-intel pins transformers < 5.6) " \
               f"or set {ENV} to a python with optimum-intel"
# an export is ~10–20 s on a tiny model (2 cores), a 135M model ~1 min; a run is a second or two past the start
SECONDS_PER_JOB = 600


def python() -> Path | None:
    """The OpenVINO environment's interpreter, or None when there is none (or $ROPECONV_OPENVINO_PYTHON turns it
    off: "", off, 0, no)."""
    chosen = os.environ.get(ENV)
    if chosen is not None:
        if chosen.strip().lower() in ("", "off", "0", "no"):
            return None
        path = Path(chosen)
        if not path.is_file():
            raise InputError(f"{ENV}={chosen}: no such python executable (unset it, or `make {MAKE_TARGET}`)")
        return path
    beside = PROJECT / VENV / "bin" / "python"
    return beside if beside.is_file() else None


def require(what: str = "--to openvino") -> Path:
    found = python()
    if found is None:
        raise InputError(f"{what} needs the OpenVINO environment (optimum-intel), which is not there; {INSTALL_HINT}")
    return found


def _last_error(errors: list[str]) -> str:
    for line in reversed(errors):
        if line.startswith("timeout: "):
            return line
    for line in reversed(errors):
        if "Error" in line or "error" in line:
            return line[-400:]
    return errors[-1][-400:] if errors else "no output"


def run_jobs(jobs: list[dict[str, Any]], progress: Callable[[str], None] = lambda _: None,
             interpreter: Path | None = None, failure: type[Exception] = UnsupportedError) \
        -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run the jobs in one start of the OpenVINO environment: their results and the versions that ran. A job that
    fails raises `failure` with the environment's last error line."""
    interpreter = interpreter or require()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore",
               TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)  # the OpenVINO environment's own packages only
    with tempfile.TemporaryDirectory(prefix="ropeconv-ov-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"jobs": jobs}))
        proc = subprocess.Popen([str(interpreter), str(RUNNER), str(request)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=tmp, start_new_session=True)
        errors: list[str] = []

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.rstrip()
                if line.startswith("progress: "):
                    progress(f"  OpenVINO: {line[len('progress: '):]}")
                elif line.strip():
                    errors.append(line.strip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timeout = 120 + SECONDS_PER_JOB * len(jobs)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            errors.append(f"timeout: OpenVINO did not finish within {timeout} s; ended")
            rc = -1
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
        assert proc.stdout is not None
        out = proc.stdout.read()
    if rc == 3:
        raise InputError(f"the OpenVINO environment ({interpreter}) cannot import optimum-intel "
                         f"({_last_error(errors)}); rebuild it with `make {MAKE_TARGET}`")
    if rc != 0:
        raise failure(f"OpenVINO ({interpreter}) failed: {_last_error(errors)}")
    found = json.loads(out.strip().splitlines()[-1])
    return list(found["results"]), dict(found["versions"])
