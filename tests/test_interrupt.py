"""An interrupted write leaves no partial output: a real SIGTERM/SIGINT to a real `ropeconv extend` process.

The signal is sent once stderr shows the parity stage ("reference:" or "candidate:"): by then every
tensor, config.json and the aux files are staged in a hidden `.OUT.*.tmp` sibling (the test checks
that they are), so the only way to pass is for the staging directory to be removed on the way out.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_tiny, run_cli

TIMEOUT_S = 60.0
INTERRUPTED = 130


def ropeconv_cmd() -> list[str]:
    script = Path(sys.executable).with_name("ropeconv")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "ropeconv.cli.main"]


@pytest.fixture(scope="module")
def slow_base(tmp_path_factory) -> Path:
    """Big enough (and probed with enough tokens) that parity takes seconds, not milliseconds."""
    return make_tiny(tmp_path_factory.mktemp("interrupt"), "llama", name="base",
                     num_hidden_layers=4, hidden_size=128, intermediate_size=256)


def hidden_siblings(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class Run:
    """`ropeconv extend` in a child process, its stderr read line by line on a thread."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            ropeconv_cmd() + args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout = ""
        self._err_thread = threading.Thread(target=self._pump_err, daemon=True)
        self._out_thread = threading.Thread(target=self._pump_out, daemon=True)
        self._err_thread.start()
        self._out_thread.start()

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _pump_out(self) -> None:
        self.stdout = self.proc.stdout.read()

    def wait_for_line(self, prefix: str, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no stderr line starting with {prefix!r} within {timeout}s:\n{self.err}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"process exited ({self.proc.wait()}) before a line starting with {prefix!r}:\n{self.err}"
                )
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._err_thread.join(timeout=5)
        self._out_thread.join(timeout=5)
        return rc

    @property
    def err(self) -> str:
        return "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def extend_args(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "extend", str(base), "--method", "yarn", "--factor", "16", "--tokens", "1024", "--device", "cpu",
        "-o", str(out), *extra,
    ]


def interrupt_during(run: Run, out: Path, stage: str, signum: int) -> int:
    run.wait_for_line(stage)
    # The point of the test: there *is* a staged, nearly complete output on disk right now.
    staged = [p for p in hidden_siblings(out) if p.name.endswith(".tmp")]
    assert len(staged) == 1, f"expected one staging dir, found {hidden_siblings(out)}"
    assert (staged[0] / "model.safetensors").is_file() and (staged[0] / "config.json").is_file()
    sent_at = time.monotonic()
    run.proc.send_signal(signum)
    rc = run.wait()
    print(f"\n{signal.Signals(signum).name} at {stage!r}: exit {rc} after {time.monotonic() - sent_at:.2f}s")
    return rc


def assert_interrupted(run: Run, rc: int) -> None:
    assert rc != 0, f"the run completed before the signal landed (make parity slower):\n{run.err}"
    assert rc == INTERRUPTED, f"exit {rc}, expected {INTERRUPTED}:\n{run.err}"
    assert "Traceback" not in run.err, run.err
    assert "interrupted" in run.err.strip().splitlines()[-1], run.err
    assert "parity PASSED" not in run.err and "wrote " not in run.stdout


@pytest.mark.parametrize("stage", ["reference:", "candidate:"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupt_leaves_no_output(slow_base, tmp_path, signum, stage):
    out = tmp_path / "OUT"
    run = Run(extend_args(slow_base, out))
    try:
        rc = interrupt_during(run, out, stage, signum)
    finally:
        run.kill()
    assert_interrupted(run, rc)
    assert not out.exists(), f"{out} was published by an interrupted run"
    assert hidden_siblings(out) == [], f"temp leftovers: {hidden_siblings(out)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_force_keeps_previous_output(slow_base, tmp_path, signum):
    out = tmp_path / "OUT"
    # a previous good output, made by ropeconv itself (a different plan, so the bytes would differ)
    assert run_cli("extend", slow_base, "--method", "linear", "--factor", "2", "--no-verify", "-q", "-o", out) == 0
    before = digest(out)
    assert "model.safetensors" in before and "config.json" in before
    run = Run(extend_args(slow_base, out, "--force"))
    try:
        rc = interrupt_during(run, out, "reference:", signum)
    finally:
        run.kill()
    assert_interrupted(run, rc)
    assert out.is_dir(), "the previous output was removed"
    assert digest(out) == before, "the previous output was modified"
    assert hidden_siblings(out) == [], f"temp leftovers: {hidden_siblings(out)}"
