"""A second Python environment beside the project (.venv-tf4, .venv-vllm, .venv-ov): an engine whose pins conflict
with the main one runs there, in a subprocess. Which interpreter: the environment variable when set ("", off, 0, no:
none), else the venv beside the project when it was built. And the one way a batch of jobs runs there (run_script):
a runner script started by path with a request file, its stderr's "progress: " lines passed on as they come and the
rest kept for the failure's line, its stdout drained while it runs (an engine's logs fill a 64 KiB pipe, and a
runner blocked in write() looks like a stalled engine), ended with its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ropeconv.errors import InputError

PROJECT = Path(__file__).resolve().parents[1]  # the source tree the side venvs are built beside
START_FAILED = 3  # a runner's exit status when it cannot import its engine


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


def environ(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The environment a side process runs in: this one with the engines' quiet defaults (offline Hub, no warnings,
    transformers' and tokenizers' chatter off) and `extra` on top, and no PYTHONPATH (the side environment's own
    packages only)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore",
               TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("PYTHONPATH", None)
    return env


def end_group(proc: subprocess.Popen) -> None:
    """The process and whatever it spawned (started with start_new_session=True) killed, and reaped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass(frozen=True)
class ScriptRun:
    returncode: int  # -1: ended at the timeout
    stdout: str
    errors: tuple[str, ...]  # stderr's lines other than progress (a timeout's line last)


def run_script(interpreter: Path, script: Path, request: Path, *, engine: str,
               progress: Callable[[str], None] = lambda _: None, env: Mapping[str, str] = {},
               cwd: Path | None = None, timeout_s: float | None = None) -> ScriptRun:
    """`interpreter script request` in a session of its own (whatever it spawns ends with it), in environ(env)."""
    proc = subprocess.Popen([str(interpreter), str(script), str(request)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ(env), cwd=cwd, start_new_session=True)
    errors: list[str] = []
    lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            if line.startswith("progress: "):
                progress(f"  {engine}: {line[len('progress: '):]}")
            elif line.strip():
                errors.append(line.strip())

    def drain() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    readers = [threading.Thread(target=pump, daemon=True), threading.Thread(target=drain, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        errors.append(f"timeout: {engine} did not finish within {timeout_s:.0f} s; ended")
        returncode = -1
    finally:  # also on Ctrl-C: nothing of the engine outlives the call
        end_group(proc)
    for reader in readers:
        reader.join(timeout=10)
    return ScriptRun(returncode, "".join(lines), tuple(errors))


def last_error(errors: tuple[str, ...] | list[str], ignore: tuple[str, ...] = ()) -> str:
    """The line that says what went wrong: a timeout's, else the last that mentions an error (engines log a lot on
    stderr, the exception comes last), else the last line."""
    for line in reversed(errors):
        if line.startswith("timeout: "):
            return line
    for line in reversed(errors):
        if ("Error" in line or "error" in line) and not any(part in line for part in ignore):
            return line[-400:]
    return errors[-1][-400:] if errors else "no output"
