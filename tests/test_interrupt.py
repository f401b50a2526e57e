"""An interrupted write leaves no partial output: a real signal to a real `ropeconv extend` process.

The signal is sent once stderr shows the parity stage ("reference:" or "candidate:"): by then every
tensor, config.json and the aux files are staged in a hidden `.OUT.*.tmp` sibling (the test checks
that they are), so the only way to pass is for the staging directory to be removed on the way out.
Every catchable signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) interrupts the run and exits
128 + its number. A signal while llama.cpp's quantizer runs (native code, where Python runs no handler) is
sent once the quantized file has appeared in the staging: nothing may be published, no process may survive.
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

from ropeconv.interrupts import CATCHABLE, Interrupted, exit_code, handled, raise_if_interrupted
from tests.conftest import add_byte_level_tokenizer, make_tiny, run_cli

TIMEOUT_S = 60.0


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


class _Popen(subprocess.Popen):
    """Remembers the signals sent to it: an interrupted run exits 128 + the first one's number."""

    def __init__(self, *args, **kwargs) -> None:
        self.sent: list[int] = []
        super().__init__(*args, **kwargs)

    def send_signal(self, sig: int) -> None:
        self.sent.append(int(sig))
        super().send_signal(sig)


class Run:
    """`ropeconv extend` in a child process, its stderr read line by line on a thread."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = _Popen(
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
    expected = 128 + run.proc.sent[0]  # 130 SIGINT, 143 SIGTERM, 129 SIGHUP, ...
    assert rc == expected, f"exit {rc}, expected {expected}:\n{run.err}"
    assert "Traceback" not in run.err and "Exception ignored" not in run.err, run.err
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


# ----------------------------------------------------------------------------- every catchable signal


@pytest.mark.parametrize("signum", CATCHABLE, ids=[s.name for s in CATCHABLE])
def test_every_catchable_signal_interrupts_with_128_plus_its_number(signum):
    """In-process: each signal raises Interrupted (a KeyboardInterrupt, so every cleanup runs) and exits 128 + n;
    a raise swallowed where it landed (a ctypes callback, a __del__) is raised again at the next check."""
    assert {"SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"} <= {s.name for s in CATCHABLE}
    before = signal.getsignal(signum)
    with handled():
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler runs at once; this only bounds a failure
        assert isinstance(caught.value, KeyboardInterrupt) and exit_code(caught.value) == 128 + signum
        with pytest.raises(Interrupted) as again:  # as if the first raise had been swallowed
            raise_if_interrupted()
        assert again.value.signum == signum
    raise_if_interrupted()  # leaving the block forgets it
    assert signal.getsignal(signum) == before


def test_a_signal_landing_in_a_del_is_raised_at_the_next_check(monkeypatch):
    """A raise in a __del__ is swallowed (a traceback printed, the signal lost): there the handler only records."""
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)

    class Holder:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGUSR1)  # its handler runs in this frame

    with handled():
        holder = Holder()
        del holder
        assert not swallowed, [(u.exc_value, u.object) for u in swallowed]
        with pytest.raises(Interrupted) as caught:
            raise_if_interrupted()
    assert caught.value.signum == signal.SIGUSR1


def test_sighup_clears_staging_and_lock(slow_base, tmp_path):
    out = tmp_path / "OUT"
    run = Run(extend_args(slow_base, out))
    try:
        rc = interrupt_during(run, out, "reference:", signal.SIGHUP)
    finally:
        run.kill()
    assert_interrupted(run, rc)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())  # no OUT, staging or .lock


# ----------------------------------------------------------------------------- while llama.cpp quantizes


@pytest.fixture(scope="module")
def quant_base(tmp_path_factory) -> Path:
    """Big enough that llama.cpp takes a second or two to quantize it to Q4_K_M (rows of 256 and more)."""
    pytest.importorskip("llama_cpp")
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("interrupt-quant"), "llama", name="qbase",
                                              num_hidden_layers=4, hidden_size=512, intermediate_size=1024,
                                              num_attention_heads=4, num_key_value_heads=2))


def quantize_args(base: Path, out: Path) -> list[str]:
    return ["extend", str(base), "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "q4_k_m",
            "--no-verify", "-o", str(out)]


def _state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2:].split()[:2]
    return state, int(ppid)


def descendants(pid: int) -> set[int]:
    """Processes below `pid`, now."""
    parents = {int(p.name): _state(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, st in parents.items():
            if st is not None and st[1] == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    st = _state(pid)
    return st is not None and st[0] != "Z"


def wait_for_quantizer(run: Run, out: Path) -> None:
    """Until llama.cpp is writing the quantized file in the staging, the float conversion it reads complete (its
    size unchanged over three polls)."""
    deadline = time.monotonic() + TIMEOUT_S
    sizes: list[int] = []
    while time.monotonic() < deadline and run.proc.poll() is None:
        staged = [p for p in hidden_siblings(out) if p.name.endswith(".tmp")]
        floats = [p for s in staged for p in s.glob(".*-Q4_K_M.gguf.f32.gguf")]
        if floats:
            sizes = (sizes + [floats[0].stat().st_size])[-3:]
            quantized = floats[0].parent / floats[0].name[1:].removesuffix(".f32.gguf")
            if quantized.exists() and len(sizes) == 3 and len(set(sizes)) == 1:
                return
        time.sleep(0.02)
    raise AssertionError(f"llama.cpp's quantized file never appeared in the staging (exit {run.proc.poll()}):\n"
                         f"{run.err}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_llama_cpp_quantizes_publishes_nothing_and_leaves_no_process(quant_base, tmp_path, signum):
    out = tmp_path / "OUT"
    run = Run(quantize_args(quant_base, out))
    try:
        wait_for_quantizer(run, out)
        below = descendants(run.proc.pid)
        sent_at = time.monotonic()
        run.proc.send_signal(signum)
        rc = run.wait()
        print(f"\n{signal.Signals(signum).name} while quantizing: exit {rc} after {time.monotonic() - sent_at:.2f}s")
    finally:
        run.kill()
    assert_interrupted(run, rc)
    assert not out.exists(), f"{out} was published by an interrupted run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())  # no staging, no .lock
    assert not [pid for pid in below if alive(pid)], f"processes left running: {below}"
    assert run_cli(*quantize_args(quant_base, out), "-q") == 0  # and a rerun succeeds
    assert [p.name for p in out.glob("*.gguf")] == ["qbase-Q4_K_M.gguf"]


def test_a_signal_landing_in_llama_cpps_log_callback_is_raised_when_the_call_returns(quant_base, tmp_path,
                                                                                     monkeypatch):
    """In-process, the case the child process avoids: llama.cpp quantizes in native code and the signal's handler
    runs in its log callback (a ctypes callback, where a raise is swallowed and a traceback printed). The handler
    records it there without raising; the Interrupted comes when the native call returns."""
    from ropeconv.gguf_export import quantize_child

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)  # what ctypes reports a swallowed raise to

    floats = tmp_path / "f32"
    assert run_cli("extend", quant_base, "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "f32",
                   "--no-verify", "-q", "-o", floats) == 0
    [src] = floats.glob("*.gguf")
    from ropeconv import llamacpp_log

    marked, sent = llamacpp_log.native_callback, []

    def signalling(fn):  # the signal is sent from inside the callback llama.cpp calls while it quantizes
        def callback(*args):
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at the callback's next bytecode
            return fn(*args)
        return marked(callback)

    monkeypatch.setattr(llamacpp_log, "native_callback", signalling)
    with handled():
        with pytest.raises(Interrupted) as caught:
            quantize_child.run(quantize_child.Request(str(src), str(tmp_path / "q.gguf"), "q4_k_m"))
    assert sent, "llama.cpp logged nothing while quantizing: the signal was never sent from its callback"
    assert caught.value.signum == signal.SIGTERM
    assert not swallowed, [(u.exc_value, u.object) for u in swallowed]
