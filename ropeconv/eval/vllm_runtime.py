"""`ropeconv eval --runtime vllm`: a safetensors folder run as vLLM serves it — its offline engine in .venv-vllm
(`make vllm`), float32 on the CPU, held open for the whole evaluation by one worker process (eval.vllm_worker,
run there by path) that answers greedy generations and prompt log-probabilities over a pipe.

The tokenizer is the folder's own through transformers (as the transformers adapter: vLLM takes token ids, so both
runtimes score the very same prompts). The engine starts on first use with max_model_len = the larger of the
folder's max_position_embeddings and the request; a longer request restarts it (evaluations go up in length).
A cell vLLM reads wrongly (parity.vllm.refusal: dynamic NTK, LongRoPE, …) is refused before anything starts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ropeconv import side_env
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.eval.runtimes import EvalRuntime, ModelRef, _HFTokenizer
from ropeconv.eval.side_worker import SideWorker

WORKER = Path(__file__).with_name("vllm_worker.py")
MARK = "ropeconv-vllm-answer "  # vllm_worker.MARK (that file imports nothing of ropeconv)
ROUND_TOKENS = 1024  # max_model_len is rounded up to this, so nearby lengths share one engine start


class VllmEvalRuntime(_HFTokenizer, EvalRuntime):
    kind = "vllm"

    def __init__(self, ref: ModelRef, device, placement=None):
        from ropeconv.parity import vllm

        self.ref, self.device, self.name = ref, device, "vLLM"
        self.python = vllm.python()
        if self.python is None:
            raise InputError(f"{vllm.missing_note()}; --runtime vllm needs it")
        self.config = _config(ref.path)
        why = vllm.refusal(_plan(ref.path), self.config)
        if why is not None:
            raise UnsupportedError(f"{ref.given}: vLLM would not run this model as ropeconv means it ({why})")
        self._load_tokenizer(ref.path)
        self._worker: SideWorker | None = None
        self._sockets: tempfile.TemporaryDirectory | None = None
        self._max_len = 0

    # the worker
    def _ask(self, request: dict[str, Any], need: int) -> dict[str, Any]:
        if self._worker is None or not self._worker.alive or need > self._max_len:
            self.close()
            text = self.config.get("text_config", self.config)
            declared = int(text.get("max_position_embeddings") or text.get("n_positions") or 0)
            self._max_len = max(declared, -(-need // ROUND_TOKENS) * ROUND_TOKENS)
            device = "cuda" if getattr(self.device, "type", str(self.device)) == "cuda" else "cpu"
            folder = self.ref.path.resolve()
            # the engine's IPC sockets in a folder of the worker's own, removed with it (vLLM leaves them behind)
            self._sockets = tempfile.TemporaryDirectory(prefix="ropeconv-vllm-eval-")
            env = side_env.environ({"PYTHONNOUSERSITE": "1", "VLLM_RPC_BASE_PATH": self._sockets.name})
            self._worker = SideWorker([str(self.python), "-B", str(WORKER), str(folder), str(self._max_len), device],
                                      cwd=folder, env=env, mark=MARK, what=str(self.ref.given), engine="vLLM")
        return self._worker.ask(request)

    # model
    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        got = self._ask({"op": "generate", "ids": ids, "max_new_tokens": max_new_tokens,
                         "stop": sorted(self.eos_ids)}, len(ids) + max_new_tokens)
        return [int(t) for t in got["tokens"]]

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        got = self._ask({"op": "logprobs", "ids": ids}, len(ids) + 1)
        return np.array([np.nan if v is None else v for v in got["logprob"]], dtype=np.float64)

    def close(self) -> None:
        worker, self._worker = getattr(self, "_worker", None), None
        if worker is not None:
            worker.close(timeout_s=60)  # vLLM shuts its engine down when the worker's loop ends
        sockets, self._sockets = getattr(self, "_sockets", None), None
        if sockets is not None:
            sockets.cleanup()


def _config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}/config.json: cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{folder}/config.json: not a JSON object")
    return config


def _plan(folder: Path):
    """The plan the output's manifest records; a folder without one (a base) is judged as an unscaled model."""
    from ropeconv.export.safetensors_output import recorded

    plan, _ = recorded(folder)
    return plan if plan is not None else SimpleNamespace(method="none", kind="rope")
