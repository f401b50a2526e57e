"""`ropeconv eval --runtime mlx`: an mlx folder (mlx/ of an output, or the folder itself) run by mlx-lm — the folder's
own tokenizer through transformers' AutoTokenizer, as the transformers adapter does, and greedy generation through
mlx-lm's KV cache (parity.runtimes.mlx: the prompt prefilled in chunks, then one token per call)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ropeconv.eval.runtimes import EvalRuntime, ModelRef, _HFTokenizer, log_softmax_rows


class MlxEvalRuntime(_HFTokenizer, EvalRuntime):
    kind = "mlx"

    def __init__(self, ref: ModelRef, device, placement=None):
        super().__init__(ref, device, placement)
        self._load_tokenizer(ref.path)
        self._loaded = None

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = self.engine.load(self.ref.path, self.device)
        return self._loaded

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        from ropeconv.parity.probe import LONG_PREFILL, PREFILL_CHUNK

        model = self.loaded.model
        cache = make_prompt_cache(model)
        step = PREFILL_CHUNK if len(ids) > LONG_PREFILL else len(ids)
        logits: Any = None
        for a in range(0, len(ids), step):
            logits = model(mx.array([ids[a:a + step]]), cache=cache)[0, -1]
            mx.eval(logits)
        new: list[int] = []
        for n in range(max_new_tokens):
            token = int(np.argmax(np.array(logits.astype(mx.float32))))
            new.append(token)
            if token in self.eos_ids or n == max_new_tokens - 1:
                break
            logits = model(mx.array([[token]]), cache=cache)[0, -1]
            mx.eval(logits)
        return new

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        import torch

        from ropeconv.parity.probe import LONG_PREFILL, PREFILL_CHUNK

        chunk = PREFILL_CHUNK if len(ids) > LONG_PREFILL else 0
        logits = self.engine.logits(self.loaded, torch.tensor([ids]), torch.arange(len(ids))[None],
                                    chunk_tokens=chunk)
        return log_softmax_rows(logits[:-1], np.asarray(ids[1:]))

    def close(self) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            self.engine.close(loaded)
