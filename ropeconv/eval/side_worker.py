"""A model held open by a worker process in another Python environment (vLLM's, OpenVINO's) for a whole evaluation:
requests go in on its stdin and answers come back on its stdout, one JSON line each. The engines write logs of their
own to stdout, so an answer is the line that starts with the worker's mark; stderr is drained aside and its last
line names a failure. The eval adapters (eval.vllm_runtime, eval.openvino_runtime) own the worker's command; this
owns the pipe."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError
from ropeconv.side_env import end_group


class SideWorker:
    """One worker process: started with `command`, answering `ask` until `close`. what names the model in a failure's
    line; on_exit(returncode, last stderr line) may raise a more precise error for a worker that stopped."""

    def __init__(self, command: list[str], *, cwd: Path, env: dict[str, str], mark: str, what: str, engine: str,
                 on_exit: Callable[[int, str], None] = lambda _rc, _last: None):
        self.mark, self.what, self.engine, self.on_exit = mark, what, engine, on_exit
        self._stderr: deque[str] = deque(maxlen=40)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=cwd, start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()  # its stderr, kept for a failure's line
        self.ready = self.answer()["ready"]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(self.mark):
                found = json.loads(line[len(self.mark):])
                if "error" in found:
                    raise InputError(f"{self.what}: {self.engine} failed: {found['error']}")
                return dict(found)
        self.proc.wait()
        last = next((line for line in reversed(self._stderr) if line.strip()), "no output")[:300]
        self.on_exit(self.proc.returncode, last)
        raise InputError(f"{self.what}: {self.engine} stopped (exit {self.proc.returncode}): {last}")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self, timeout_s: float) -> None:
        """stdin closed: the worker's loop ends (and its engine with it); killed, with its group, past timeout_s."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            end_group(self.proc)
