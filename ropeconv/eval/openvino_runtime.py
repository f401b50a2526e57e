"""`ropeconv eval --runtime openvino`: an OpenVINO IR folder (openvino/ of an output, or the folder itself) run by
OpenVINO as its users run it — optimum-intel's OVModelForCausalLM (f32 inference and KV cache) in .venv-ov, held open
for the whole evaluation by one worker process (openvino_export/ov_worker.py, run there by path: the environment's
start and the IR's compile are paid once per model) that answers greedy generations and per-token log-probabilities
over a pipe, JSON lines. The prompt goes through the stateful KV cache (in chunks of PREFILL_CHUNK tokens past
LONG_PREFILL), then one token per call, at positions 0, 1, … (position_ids given).

The tokenizer is the folder's own tokenizer files (tokenizer.json, which optimum-intel's exporter writes beside the
IR) through transformers' AutoTokenizer, as the transformers adapter: both runtimes score the very same token ids."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections import deque
from typing import Any

import numpy as np

from ropeconv.errors import InputError
from ropeconv.eval.runtimes import EvalRuntime, ModelRef, _HFTokenizer
from ropeconv.openvino_export import env as ov_env

WORKER = ov_env.RUNNER.with_name("ov_worker.py")
MARK = "ropeconv-ov-answer "  # ov_worker.MARK (that file imports nothing of ropeconv)


class OpenVinoEvalRuntime(_HFTokenizer, EvalRuntime):
    kind = "openvino"

    def __init__(self, ref: ModelRef, device, placement=None):
        super().__init__(ref, device, placement)
        self._load_tokenizer(ref.path)
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: deque[str] = deque(maxlen=40)
        self.versions: dict[str, str] = {}

    # the worker
    def _start(self) -> None:
        interpreter = ov_env.require("--runtime openvino")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore",
                   TOKENIZERS_PARALLELISM="false", PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)  # the OpenVINO environment's own packages only
        folder = self.ref.path.resolve()
        self._proc = subprocess.Popen([str(interpreter), "-B", str(WORKER), str(folder)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder,
                                      start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()  # its stderr, kept for a failure's line
        self.versions = self._answer()["ready"]

    def _drain(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(line.rstrip())

    def _answer(self) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(MARK):
                found = json.loads(line[len(MARK):])
                if "error" in found:
                    raise InputError(f"{self.ref.given}: OpenVINO failed: {found['error']}")
                return dict(found)
        proc.wait()
        last = next((line for line in reversed(self._stderr) if line.strip()), "no output")
        if proc.returncode == 3:
            raise InputError(f"the OpenVINO environment cannot import optimum-intel ({last[:300]}); rebuild it with "
                             "`make openvino`")
        raise InputError(f"{self.ref.given}: OpenVINO stopped (exit {proc.returncode}): {last[:300]}")

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self._answer()

    @staticmethod
    def _chunk(n: int) -> int:
        from ropeconv.parity.probe import LONG_PREFILL, PREFILL_CHUNK

        return PREFILL_CHUNK if n > LONG_PREFILL else 0

    # model
    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        got = self._ask({"op": "generate", "ids": ids, "max_new_tokens": max_new_tokens,
                         "stop": sorted(self.eos_ids), "chunk": self._chunk(len(ids))})
        return [int(t) for t in got["tokens"]]

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        got = self._ask({"op": "logprobs", "ids": ids, "chunk": self._chunk(len(ids))})
        return np.array([np.nan if v is None else v for v in got["logprob"]], dtype=np.float64)

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the worker's loop ends with it
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
