"""`ropeconv eval --runtime openvino`: an OpenVINO IR folder (openvino/ of an output, or the folder itself) run by
OpenVINO as its users run it — optimum-intel's OVModelForCausalLM (f32 inference and KV cache) in .venv-ov, held open
for the whole evaluation by one worker process (openvino_export/ov_worker.py, run there by path: the environment's
start and the IR's compile are paid once per model) that answers greedy generations and per-token log-probabilities
over a pipe, JSON lines. The prompt goes through the stateful KV cache (in chunks of PREFILL_CHUNK tokens past
LONG_PREFILL), then one token per call, at positions 0, 1, … (position_ids given).

The tokenizer is the folder's own tokenizer files (tokenizer.json, which optimum-intel's exporter writes beside the
IR) through transformers' AutoTokenizer, as the transformers adapter: both runtimes score the very same token ids."""

from __future__ import annotations

from typing import Any

import numpy as np

from ropeconv import side_env
from ropeconv.errors import InputError
from ropeconv.eval.runtimes import EvalRuntime, ModelRef, _HFTokenizer
from ropeconv.eval.side_worker import SideWorker
from ropeconv.openvino_export import env as ov_env

WORKER = ov_env.RUNNER.with_name("ov_worker.py")
MARK = "ropeconv-ov-answer "  # ov_worker.MARK (that file imports nothing of ropeconv)


class OpenVinoEvalRuntime(_HFTokenizer, EvalRuntime):
    kind = "openvino"

    def __init__(self, ref: ModelRef, device, placement=None):
        super().__init__(ref, device, placement)
        self._load_tokenizer(ref.path)
        self._worker: SideWorker | None = None
        self.versions: dict[str, str] = {}

    # the worker
    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._worker is None or not self._worker.alive:
            interpreter = ov_env.require("--runtime openvino")
            folder = self.ref.path.resolve()
            self._worker = SideWorker([str(interpreter), "-B", str(WORKER), str(folder)], cwd=folder,
                                      env=side_env.environ({"PYTHONNOUSERSITE": "1"}),
                                      mark=MARK, what=str(self.ref.given), engine="OpenVINO", on_exit=_no_import)
            self.versions = self._worker.ready
        return self._worker.ask(request)

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
        worker, self._worker = getattr(self, "_worker", None), None
        if worker is not None:
            worker.close(timeout_s=30)


def _no_import(returncode: int, last: str) -> None:
    if returncode == 3:
        raise InputError(f"the OpenVINO environment cannot import optimum-intel ({last}); rebuild it with "
                         "`make openvino`")
