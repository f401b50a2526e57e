"""ropeconv.side_env: the side environment's interpreter, and a runner script run there (with the project's own
python standing in for the side environment's)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ropeconv.errors import InputError
from ropeconv.side_env import START_FAILED, last_error, run_script, side_python


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "runner.py"
    script.write_text("import sys, json, time, os\nrequest = json.load(open(sys.argv[1]))\n" + body)
    (tmp_path / "request.json").write_text('{"n": 3}')
    return script


def test_progress_lines_pass_on_and_the_rest_is_kept_for_the_failure(tmp_path):
    script = _script(tmp_path, "for i in range(request['n']):\n    print(f'progress: step {i}', file=sys.stderr)\n"
                               "print('INFO loading', file=sys.stderr)\nprint('{\"ok\": 1}')\n")
    seen: list[str] = []
    ran = run_script(Path(sys.executable), script, tmp_path / "request.json", engine="Engine", progress=seen.append)
    assert ran.returncode == 0
    assert seen == ["  Engine: step 0", "  Engine: step 1", "  Engine: step 2"]
    assert ran.errors == ("INFO loading",)
    assert ran.stdout.strip() == '{"ok": 1}'


def test_a_runner_that_floods_stdout_is_not_blocked_by_the_pipe(tmp_path):
    """An engine's logs on stdout (vLLM's): 1 MiB, far past a pipe's 64 KiB, before the result line."""
    script = _script(tmp_path, "for _ in range(16384):\n    print('x' * 63)\nprint('{\"done\": true}')\n")
    ran = run_script(Path(sys.executable), script, tmp_path / "request.json", engine="Engine", timeout_s=60)
    assert ran.returncode == 0
    assert ran.stdout.splitlines()[-1] == '{"done": true}'
    assert len(ran.stdout) > 1_000_000


def test_a_stuck_runner_is_ended_with_what_it_spawned(tmp_path):
    script = _script(tmp_path, "import subprocess\nchild = subprocess.Popen([sys.executable, '-c', "
                               "'import time; time.sleep(60)'])\nprint(child.pid, flush=True)\ntime.sleep(60)\n")
    started = time.monotonic()
    ran = run_script(Path(sys.executable), script, tmp_path / "request.json", engine="Engine", timeout_s=3)
    assert time.monotonic() - started < 30
    assert ran.returncode == -1
    assert last_error(ran.errors) == "timeout: Engine did not finish within 3 s; ended"
    child = int(ran.stdout.split()[0])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        if "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break  # a zombie waiting for its reaper: ended
        time.sleep(0.1)
    else:
        assert not Path(f"/proc/{child}").exists()


def test_the_exit_status_and_the_error_line(tmp_path):
    script = _script(tmp_path, "print('loading…', file=sys.stderr)\nprint('ImportError: no vllm', file=sys.stderr)\n"
                               "print('shutting down', file=sys.stderr)\nsys.exit(3)\n")
    ran = run_script(Path(sys.executable), script, tmp_path / "request.json", engine="Engine")
    assert ran.returncode == START_FAILED
    assert last_error(ran.errors) == "ImportError: no vllm"
    assert last_error(ran.errors, ignore=("no vllm",)) == "shutting down"
    assert last_error(()) == "no output"


def test_side_python(monkeypatch, tmp_path):
    monkeypatch.setenv("ROPECONV_TEST_PYTHON", "off")
    assert side_python("ROPECONV_TEST_PYTHON", ".venv-none", "none") is None
    monkeypatch.setenv("ROPECONV_TEST_PYTHON", sys.executable)
    assert side_python("ROPECONV_TEST_PYTHON", ".venv-none", "none") == Path(sys.executable)
    monkeypatch.setenv("ROPECONV_TEST_PYTHON", str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no such python executable"):
        side_python("ROPECONV_TEST_PYTHON", ".venv-none", "none")
    monkeypatch.delenv("ROPECONV_TEST_PYTHON")
    assert side_python("ROPECONV_TEST_PYTHON", ".venv-none-built", "none") is None
